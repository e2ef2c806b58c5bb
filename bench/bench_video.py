r"""Raw-video throughput and memory: decode + resize frames/s, feature extraction snippets/s,
and peak memory (RSS) for a 2-hour video.

  python bench/bench_video.py --work_dir=/tmp/bench_video [--json=bench/video_results.json]

Videos are synthesized with tal_tf.video.synthetic (moving shapes, libx264):
  * 5 minutes at 30 fps, 320x180: decode + resize to 171x128 (C3D) and to short side 256
    (ResNet) at the source rate, each timed over the whole video; the frame input pipeline
    (frame records at 25 fps 171x128 -> 16-frame 112x112 C3D clips, clips/s); feature
    extraction
    (ResNet-18 and ResNet-50 from Model Garden, random weights (speed does not depend on the
    values), 224x224 crops, 16-frame snippets at 10 fps, 4 frames per snippet, rgb; and rgb +
    DIS flow with ResNet-18) timed over the first --extract_seconds;
  * 2 hours at 5 fps, 128x72 (a low rate and resolution keeps encoding time sane; decode memory
    depends on the frame size, not on the length, which is what this measures): peak RSS of
    a process decoding it all with resampling + resize, and of create_frame_records
    converting it (2 fps, 171x128 JPEGs), each in its own process.
The process count is what the machine has (TF and FFmpeg threads on all cores).
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string("work_dir", "/tmp/bench_video", "Where videos and outputs go.")
flags.DEFINE_string("json", None, "Write the results here as JSON.")
flags.DEFINE_float("extract_seconds", 20.0, "Seconds of the 5-minute video to extract.")
flags.DEFINE_float("long_hours", 2.0, "Length of the long video (hours).")
flags.DEFINE_string("measure", None, "Internal: run one measurement in this process "
                    "(decode / records: peak RSS; pipeline: frame pipeline rate).")
FLAGS = flags.FLAGS


def _video(path, seconds, fps, width, height):
  from tal_tf.video import synthetic  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    start = time.time()
    synthetic.write_video(path, int(seconds * fps), fps, width, height,
                          actions=[(10.0, 20.0, 0)])
    print(f"encoded {path} ({seconds:.0f} s at {fps} fps, {width}x{height}) in "
          f"{time.time() - start:.0f} s", flush=True)
  return path


def _decode_rate(path, **kwargs):
  from tal_tf.video import decoding  # pylint: disable=g-import-not-at-top
  start = time.time()
  n = 0
  for _ in decoding.iter_frames(path, **kwargs):
    n += 1
  seconds = time.time() - start
  return {"frames": n, "seconds": round(seconds, 2), "frames_per_s": round(n / seconds, 1)}


def _extract_rate(path, seconds, streams, model_id):
  from tal_tf.video import feature_extraction as fe  # pylint: disable=g-import-not-at-top
  from tal_tf.video import synthetic  # pylint: disable=g-import-not-at-top
  clip = os.path.join(os.path.dirname(path), f"first_{int(seconds)}s.mp4")
  if not os.path.exists(clip):
    # The first `seconds` of the same content, as its own file.
    from tal_tf.video import decoding  # pylint: disable=g-import-not-at-top
    info = decoding.probe(path)
    synthetic.write_video(clip, int(seconds * info.fps), int(round(info.fps)), info.width,
                          info.height, actions=[(10.0, 20.0, 0)])
  spec = {"backbone": "resnet", "model_id": model_id, "random_init": True}
  extractor = fe.FeatureExtractor.from_spec(fe.spec_for(
      {s: spec for s in streams}, fps=10, snippet_frames=16, frames_per_snippet=4,
      input_size=224, batch_snippets=8))
  extractor.extract(clip)  # Warm-up: traces the backbone once.
  start = time.time()
  out = extractor.extract(clip)
  elapsed = time.time() - start
  steps = next(iter(out.values())).shape[0]
  return {"streams": list(streams), "model_id": model_id, "snippets": steps,
          "seconds": round(elapsed, 2), "snippets_per_s": round(steps / elapsed, 2),
          "video_seconds_per_s": round(seconds / elapsed, 2)}


def _frame_pipeline_rate(video, work_dir, batches=30):
  """Clips/s of frame_pipeline (16-frame C3D clips, 112x112 random crops, flips, mean) over
  frame records of `video` written at 25 fps, 171x128."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.data import frame_pipeline  # pylint: disable=g-import-not-at-top
  from tal_tf.dataset_tools import create_frame_records  # pylint: disable=g-import-not-at-top
  from tal_tf.video import decoding  # pylint: disable=g-import-not-at-top
  prefix = os.path.join(work_dir, "c3d_records", "frames")
  if not tf.io.gfile.glob(prefix + "-*.tfrecord"):
    name = os.path.splitext(os.path.basename(video))[0]
    annotations = os.path.join(work_dir, name + "_c3d.json")
    with open(annotations, "w") as f:
      json.dump({"database": {name: {"subset": "train",
                                     "duration": decoding.probe(video).duration,
                                     "annotations": [{"segment": [10.0, 20.0],
                                                      "label": "A"}]}}}, f)
    videos = os.path.join(work_dir, name + "_c3d_videos")
    os.makedirs(videos, exist_ok=True)
    if not os.path.exists(os.path.join(videos, name + ".mp4")):
      os.symlink(video, os.path.join(videos, name + ".mp4"))
    create_frame_records.convert_videos(videos, annotations, prefix,
                                        os.path.join(work_dir, "c3d.pbtxt"), num_shards=2,
                                        fps=25.0, size=(171, 128), progress_stream=None)
  dataset = frame_pipeline.build_frame_dataset(
      prefix + "-*.tfrecord", batch_size=8, is_training=True, clip_frames=16,
      window_frames=(16, 32, 64), clips_per_record=8, crop_size=(112, 112),
      mean_rgb=frame_pipeline.C3D_MEAN_RGB, seed=0)
  iterator = iter(dataset)
  next(iterator)  # Warm-up (tracing, first reads).
  start = time.time()
  for _ in range(batches):
    next(iterator)
  elapsed = time.time() - start
  clips = batches * 8
  return {"clips": clips, "seconds": round(elapsed, 2),
          "clips_per_s": round(clips / elapsed, 1),
          "frames_per_s": round(clips * 16 / elapsed, 1)}


def _peak_rss_mib():
  """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux keeps that across
  execve, so a child would report its (large, TensorFlow-holding) parent's peak."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def _measure(kind, path, work_dir):
  """Runs one long-video job in this process and prints its peak RSS (MiB) as JSON."""
  start = time.time()
  if kind == "decode":
    from tal_tf.video import decoding  # pylint: disable=g-import-not-at-top
    n = sum(1 for _ in decoding.iter_frames(path, fps=5, size=(171, 128)))
    detail = {"frames": n}
  else:
    from tal_tf.dataset_tools import create_frame_records  # pylint: disable=g-import-not-at-top
    name = os.path.splitext(os.path.basename(path))[0]
    annotations = os.path.join(work_dir, name + ".json")
    from tal_tf.video import decoding  # pylint: disable=g-import-not-at-top
    duration = decoding.probe(path).duration
    with open(annotations, "w") as f:
      json.dump({"database": {name: {"subset": "test", "duration": duration,
                                       "annotations": [{"segment": [10.0, 20.0],
                                                        "label": "A"}]}}}, f)
    videos = os.path.join(work_dir, name + "_videos")
    os.makedirs(videos, exist_ok=True)
    link = os.path.join(videos, name + ".mp4")
    if not os.path.exists(link):
      os.symlink(path, link)
    summary = create_frame_records.convert_videos(
        videos, annotations, os.path.join(work_dir, name + "_records", "frames"),
        os.path.join(work_dir, name + ".pbtxt"), fps=2.0, size=(171, 128),
        progress_stream=None)
    detail = {"frames": summary["num_frames"], "records": summary["num_records"]}
  peak_mib = _peak_rss_mib()
  print(json.dumps(dict(detail, peak_rss_mib=round(peak_mib, 1),
                        seconds=round(time.time() - start, 1))))


def _measure_in_subprocess(kind, path, work_dir):
  out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--measure={kind}",
                        f"--work_dir={work_dir}", f"--json={path}"],
                       check=True, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT))
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
  work = FLAGS.work_dir
  os.makedirs(work, exist_ok=True)
  if FLAGS.measure == "pipeline":
    print(json.dumps(_frame_pipeline_rate(FLAGS.json, work)))
    return
  if FLAGS.measure:
    _measure(FLAGS.measure, FLAGS.json, work)
    return
  cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines()
                if l.startswith("Model name")), "unknown")
  results = {"cpu": model, "cores": os.cpu_count()}
  five = _video(os.path.join(work, "five_min_30fps.mp4"), 300, 30, 320, 180)
  results["decode_resize_171x128"] = _decode_rate(five, size=(171, 128))
  results["decode_resize_short256"] = _decode_rate(five, short_side=256)
  results["decode_resample_10fps_short256"] = _decode_rate(five, fps=10, short_side=256)
  print(json.dumps(results, indent=1), flush=True)
  results["frame_pipeline_c3d"] = _frame_pipeline_rate(
      five, work)
  print(json.dumps(results["frame_pipeline_c3d"]), flush=True)
  results["extract_resnet18_rgb"] = _extract_rate(five, FLAGS.extract_seconds, ["rgb"], 18)
  print(json.dumps(results["extract_resnet18_rgb"]), flush=True)
  results["extract_resnet18_rgb_flow"] = _extract_rate(five, FLAGS.extract_seconds,
                                                       ["rgb", "flow"], 18)
  print(json.dumps(results["extract_resnet18_rgb_flow"]), flush=True)
  results["extract_resnet50_rgb"] = _extract_rate(five, FLAGS.extract_seconds, ["rgb"], 50)
  print(json.dumps(results["extract_resnet50_rgb"]), flush=True)
  long_path = _video(os.path.join(work, "long_5fps.mp4"), FLAGS.long_hours * 3600, 5, 128, 72)
  results["long_video"] = {"hours": FLAGS.long_hours, "fps": 5, "size": "128x72"}
  results["long_decode_peak"] = _measure_in_subprocess("decode", long_path, work)
  results["short_decode_peak"] = _measure_in_subprocess("decode", five, work)
  print(json.dumps(results["long_decode_peak"]), flush=True)
  results["long_frame_records_peak"] = _measure_in_subprocess("records", long_path, work)
  results["short_frame_records_peak"] = _measure_in_subprocess("records", five, work)
  print(json.dumps(results, indent=1))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  app.run(main)
