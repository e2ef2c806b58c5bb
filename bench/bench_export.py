r"""Benchmarks the exported SavedModel against the in-process model, and the long-video path.

  python bench/bench_export.py                    # everything, prints a table + JSON
  python bench/bench_export.py --skip_long        # latency / throughput only

Model: configs/tal_net_thumos14_i3d.config (the paper's TAL-Net, two 1024-d I3D streams,
9 anchor scales, 256 filters, late fusion), untrained weights (speed does not depend on
them), exported through tal_tf.export.exporter_lib exactly as the CLI does. TensorFlow is
limited to --threads intra-op / inter-op threads (2 = the target machine).

Measured:
  * latency of one 3000-frame video (188 steps at 0.625 steps/s): eager model
    (predict + postprocess), the in-process tf.function serving function, the loaded
    SavedModel signature, and a session created by the C API's
    TF_LoadSessionFromSavedModel (the loader TF Serving uses);
  * throughput (videos/s) at batch 1, 4, 8 for the in-process function and the SavedModel;
  * the long-video inference path (`tal_tf.inference.inference_lib.run_inference` with the
    SavedModel, features read window by window from .npy files) for a 1-hour (2250 steps) and a
    4-hour (9000 steps) video, windowed and whole, each in its own process, reporting wall
    time and the peak resident memory of the run (VmHWM after resetting it once the model
    is loaded) and of the whole process.
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = os.path.join(REPO, "configs", "tal_net_thumos14_i3d.config")
FPS = 0.625
VIDEO_STEPS = 188  # 3000 frames at 16 frames per step


def _tf(threads):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  return tf


def _summary(times):
  times = sorted(times)
  return {"median_ms": 1000 * statistics.median(times),
          "p90_ms": 1000 * times[min(len(times) - 1, int(0.9 * len(times)))],
          "min_ms": 1000 * times[0], "runs": len(times)}


def _timeit_interleaved(fns, repeats, warmup=2):
  """{name: fn} -> {name: summary}; the functions take turns within each repeat, so load
  from other processes on a shared machine hits every path alike."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: _summary(t) for name, t in times.items()}


def export_model(work, threads):
  """Untrained paper-config model -> checkpoint -> SavedModel; returns (config, module, dir)."""
  tf = _tf(threads)
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tal_tf.builders import model_builder  # pylint: disable=g-import-not-at-top
  from tal_tf.export import exporter_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  config = config_util.load_pipeline_config(CONFIG)
  config.eval_input_reader.label_map_path = ""  # No label map needed for timing.
  config.train_input_reader.label_map_path = ""
  tf_keras.utils.set_random_seed(0)
  model = model_builder.build(config.model)
  dims = exporter_lib.stream_dims_from_config(config, model)
  exporter_lib._build_variables(model, dims)  # pylint: disable=protected-access
  tf.train.Checkpoint(model=model).save(os.path.join(work, "train", "ckpt"))
  start = time.perf_counter()
  export_dir = exporter_lib.export_saved_model(config, os.path.join(work, "train"),
                                               os.path.join(work, "serving"))
  export_seconds = time.perf_counter() - start
  module = exporter_lib.build_detection_module(config, os.path.join(work, "train"))
  return config, module, export_dir, export_seconds


def _c_api_session(export_dir):
  """A C API session on the SavedModel (tests/export/c_api_runner.py's ctypes wrapper)."""
  spec = importlib.util.spec_from_file_location(
      "c_api_runner", os.path.join(REPO, "tests", "export", "c_api_runner.py"))
  runner = importlib.util.module_from_spec(spec)
  # The runner blocks tensorflow imports for its own process; here TF is already loaded,
  # so take the module without executing its import blocker on sys.meta_path.
  meta_path = list(sys.meta_path)
  spec.loader.exec_module(runner)
  sys.meta_path[:] = meta_path
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  lib = runner.load_library(os.path.dirname(tf.__file__))
  return runner.CApiSession(lib, export_dir)


def bench_latency_throughput(work, threads, repeats):
  """Exports the paper-config model; times batch-1 latency per path and batch throughput."""
  tf = _tf(threads)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  _, module, export_dir, export_seconds = export_model(work, threads)
  rng = np.random.default_rng(0)
  model = module.model

  def batch(b):
    """Random inputs for b 188-step videos."""
    return {"rgb": rng.normal(size=(b, VIDEO_STEPS, 1024)).astype(np.float32),
            "flow": rng.normal(size=(b, VIDEO_STEPS, 1024)).astype(np.float32),
            "num_steps": np.full(b, VIDEO_STEPS, np.int32),
            "feature_fps": np.full(b, FPS, np.float32)}

  one = batch(1)
  one_tf = {k: tf.constant(v) for k, v in one.items()}
  serving = module.serving_function()
  loaded = tf.saved_model.load(export_dir)
  signature = loaded.signatures["serving_default"]

  def eager():
    """Eager predict + postprocess of the batch-1 video."""
    feats = {"rgb": one_tf["rgb"], "flow": one_tf["flow"]}
    preds = model.predict(feats, one_tf["num_steps"])
    return model.postprocess(preds, one_tf["num_steps"], one_tf["feature_fps"])

  results = {"export_seconds": export_seconds, "latency": {}, "throughput": {}}
  paths = {"eager_model": eager,
           "in_process_function": lambda: serving(one_tf),
           "saved_model_signature": lambda: signature(**one_tf)}
  c_api_error = None
  try:
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
      saved.ParseFromString(f.read())
    sig = saved.meta_graphs[0].signature_def["serving_default"]
    session = _c_api_session(export_dir)
    feeds = {sig.inputs[k].name: v for k, v in one.items()}
    fetches = [v.name for v in sig.outputs.values()]
    paths["c_api_session"] = lambda: session.run(feeds, fetches)
  except Exception as e:  # The C API row is optional: report why it is missing.
    c_api_error = f"{type(e).__name__}: {e}"
  results["latency"] = _timeit_interleaved(paths, repeats)
  if c_api_error:
    results["latency"]["c_api_session"] = {"error": c_api_error}

  for b in (1, 4, 8):
    inputs = {k: tf.constant(v) for k, v in batch(b).items()}
    runs = max(8, 2 * repeats // b)
    timed = _timeit_interleaved({"in_process": lambda: serving(inputs),
                                 "saved_model": lambda: signature(**inputs)}, runs, warmup=1)
    results["throughput"][f"batch_{b}"] = {
        f"{name}_videos_per_s": b / (row["median_ms"] / 1000) for name, row in timed.items()}
  return results, export_dir


def _vm_hwm_mb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def _vm_rss_mb():
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def long_video_child(export_dir, steps, window, overlap, batch_size, threads, work):
  """One long-video run in this (fresh) process; prints a JSON line."""
  _tf(threads)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tal_tf.dataset_tools import feature_readers  # pylint: disable=g-import-not-at-top
  from tal_tf.inference import inference_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(steps)
  dirs = {}
  for stream in ("rgb", "flow"):
    dirs[stream] = os.path.join(work, f"{stream}_{steps}")
    os.makedirs(dirs[stream], exist_ok=True)
    path = os.path.join(dirs[stream], "video.npy")
    if not os.path.exists(path):
      array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                        shape=(steps, 1024))
      for start in range(0, steps, 1000):  # Written in chunks: never all in memory.
        array[start:start + 1000] = rng.normal(size=(min(1000, steps - start), 1024))
      array.flush()
      del array
  detector = inference_lib.SavedModelDetector(export_dir)
  source = feature_readers.NpyDirSource(dirs, detector.stream_dims, FPS)
  # Warm up the signature (first call initialises kernels) on a short window.
  detector({s: np.zeros((1, 8, 1024), np.float32) for s in dirs}, [8], [FPS])
  loaded_rss = _vm_rss_mb()
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Resets VmHWM to the current RSS, so the peak below is the run's own.
  start = time.perf_counter()
  result = inference_lib.run_inference(detector, source, window_steps=window,
                                       window_overlap=overlap, batch_size=batch_size,
                                       nms_iou_threshold=0.7)
  seconds = time.perf_counter() - start
  print(json.dumps({
      "steps": steps, "hours": steps / FPS / 3600.0, "window_steps": window,
      "batch_size": batch_size, "windows": result.stats.get("windows"),
      "seconds": seconds, "rss_after_load_mb": loaded_rss,
      "peak_rss_during_run_mb": _vm_hwm_mb(),
      "peak_rss_increase_mb": _vm_hwm_mb() - loaded_rss,
      "detections": len(result.detections["video"]["scores"])}))


def bench_long(export_dir, threads, work, windows):
  """Runs each long-video case in a fresh process; returns their JSON rows."""
  rows = []
  for steps in (2250, 9000):
    for window in windows:
      cmd = [sys.executable, os.path.abspath(__file__), "--child_long", export_dir,
             "--steps", str(steps), "--window", str(window), "--threads", str(threads),
             "--work", work]
      out = subprocess.run(cmd, capture_output=True, text=True, check=False)
      lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
      if out.returncode != 0 or not lines:
        rows.append({"steps": steps, "window_steps": window,
                     "error": out.stderr[-2000:]})
      else:
        rows.append(json.loads(lines[-1]))
      print(json.dumps(rows[-1]), file=sys.stderr)
  return rows


def format_table(results):
  """Human-readable table of the results dict."""
  lines = ["Latency, one 188-step video (2 x 1024-d), batch 1:",
           "  path                      median ms   p90 ms"]
  for name, row in results["latency"].items():
    if "error" in row:
      lines.append(f"  {name:<24}  n/a ({row['error'][:60]})")
    else:
      lines.append(f"  {name:<24}  {row['median_ms']:9.1f}  {row['p90_ms']:7.1f}")
  lines.append("Throughput (videos/s, 188 steps each):")
  lines.append("  batch   in-process   SavedModel")
  for name, row in results["throughput"].items():
    lines.append(f"  {name[6:]:>5}   {row['in_process_videos_per_s']:10.2f}   "
                 f"{row['saved_model_videos_per_s']:10.2f}")
  if results.get("long"):
    lines.append("Long videos (SavedModel, .npy features read per window):")
    lines.append("  hours  steps  window  windows  seconds  peak run MB  peak total MB")
    for row in results["long"]:
      if "error" in row:
        lines.append(f"  {row['steps']} steps window {row['window_steps']}: failed")
        continue
      window = row["window_steps"] or "whole"
      lines.append(f"  {row['hours']:5.1f}  {row['steps']:5d}  {window!s:>6}  "
                   f"{row['windows']:7d}  {row['seconds']:7.1f}  "
                   f"{row['peak_rss_increase_mb']:11.0f}  {row['peak_rss_during_run_mb']:13.0f}")
  lines.append(f"Export time: {results['export_seconds']:.1f} s")
  return "\n".join(lines)


def main():
  """CLI entry point (also the --child_long worker)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--skip_long", action="store_true")
  parser.add_argument("--windows", default="512,0",
                      help="window sizes for the long-video runs (0 = whole video)")
  parser.add_argument("--output_json", default=None)
  parser.add_argument("--child_long", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--steps", type=int, default=2250, help=argparse.SUPPRESS)
  parser.add_argument("--window", type=int, default=512, help=argparse.SUPPRESS)
  parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child_long:
    long_video_child(args.child_long, args.steps, args.window, 0.25, 1, args.threads,
                     args.work)
    return
  work = tempfile.mkdtemp(prefix="bench_export_")
  try:
    results, export_dir = bench_latency_throughput(work, args.threads, args.repeats)
    if not args.skip_long:
      windows = [int(w) for w in args.windows.split(",") if w.strip()]
      results["long"] = bench_long(export_dir, args.threads, work, windows)
    results["threads"] = args.threads
    print(format_table(results))
    print(json.dumps(results))
    if args.output_json:
      with open(args.output_json, "w") as f:
        json.dump(results, f, indent=1)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
