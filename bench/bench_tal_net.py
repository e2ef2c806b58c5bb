r"""Inference and training benchmarks of the full TAL-Net config (two 1024-d streams).

  python bench/bench_tal_net.py --what=inference   # latency, FLOPs, fraction of peak, scaling
  python bench/bench_tal_net.py --what=training    # videos/s and peak memory, batch 1 and 4
  python bench/bench_tal_net.py --what=all

Everything runs on `--intra_threads` x `--inter_threads` TensorFlow threads (default 2 x 2, the
2 cores of the reference machine). The float32 matmul peak used as the FLOP bound is measured
in the same run with the same thread settings (a 2048x2048 tf.matmul repeated inside one
tf.function, median of several calls).

Inference (configs/tal_net_thumos14_i3d.config: late fusion, 256 filters, scales 1..16,
300 proposals): `predict` + `postprocess` under one tf.function, one video of --num_steps
steps (default 188 = a 3000-frame video at 0.625 steps/s); median latency of --repeats calls
after --warmup calls. FLOPs are counted analytically (bench/bench_flops.py) and by the
tf.compat.v1 profiler on the concrete function's graph (static shapes). Where the time goes
is shown two ways: a tf.profiler trace of the same calls aggregated per model component and
per op type, and isolated tf.functions per stage (reducer + SPN, proposal decoding + NMS,
SoI pooling, classifier heads, post-processing). Latency and peak memory (VmHWM delta, reset
after a small warm-up; one subprocess per length so peaks do not mix) for --lengths steps
(default 188, 1125 = 30 min, 2250 = 1 h, 4500 = 2 h) with ratios and a linear fit.

Training: the trainer's own step (`train_lib.Trainer._replica_step`: predict + loss +
gradients + Adam update) under one tf.function, on in-memory random THUMOS14-sized batches
(lengths uniform in [--train_min_steps, --train_max_steps], 1-10 ground-truth segments of
2-40 steps, classes 1..20), batch sizes --batch_sizes (one subprocess each). The input
pipeline is not included (bench/bench_data.py measures it). The FLOP bound is
3 x forward FLOPs (forward + backward) on the padded batch, at the measured peak.

Run from the repository root. Numbers and their discussion: bench/README.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

DEFAULT_CONFIG = os.path.join(ROOT, "configs", "tal_net_thumos14_i3d.config")
FEATURE_FPS = 0.625


# ----------------------------------------------------------------------------- helpers
def _setup_tf(args):
  """Imports TensorFlow with the requested thread pools (before any op runs)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(args.intra_threads)
  tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
  return tf


def _proc_status_kb(field):
  """A 'kB' field of /proc/self/status (VmRSS, VmHWM), in bytes; None if unavailable."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _reset_peak_rss():
  """Resets the kernel's peak-RSS counter (VmHWM) to the current RSS; False if unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _rss():
  rss = _proc_status_kb("VmRSS")
  if rss is None:
    import psutil  # pylint: disable=g-import-not-at-top
    rss = psutil.Process().memory_info().rss
  return rss


def _peak_rss():
  hwm = _proc_status_kb("VmHWM")
  if hwm is None:
    import resource  # pylint: disable=g-import-not-at-top
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return hwm


def _tf_memory(tf, reset=False):
  """TF CPU allocator bytes {'current', 'peak'} (optionally resetting the peak first)."""
  try:
    if reset:
      tf.config.experimental.reset_memory_stats("CPU:0")
    return tf.config.experimental.get_memory_info("CPU:0")
  except (ValueError, RuntimeError):
    return {"current": 0, "peak": 0}


def _timed(fn, repeats, warmup):
  """Calls fn() warmup + repeats times; returns per-call seconds of the timed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return np.asarray(times)


def measure_matmul_peak(tf, size=2048, calls=7, flops_per_call=4e10):
  """float32 matmul GFLOP/s: [size, size] @ [size, size] repeated inside one tf.function.

  Returns (median, best) over `calls` calls of the function, each doing enough matmuls for
  ~flops_per_call FLOPs. The accumulation keeps every product live (nothing is pruned) and
  costs ~size^2 adds per matmul (< 0.1% of its 2 size^3 FLOPs).
  """
  a = tf.random.stateless_normal([size, size], seed=[1, 2])
  b = tf.random.stateless_normal([size, size], seed=[3, 4])
  reps = max(2, int(flops_per_call / (2.0 * size ** 3)))

  @tf.function
  def chain(a, b):
    acc = tf.zeros([size, size])
    for _ in tf.range(reps):
      acc += tf.matmul(a, b)
    return acc[0, 0]

  times = _timed(lambda: chain(a, b).numpy(), calls, warmup=1)
  flops = 2.0 * size ** 3 * reps
  return flops / np.median(times) / 1e9, flops / times.min() / 1e9


def _load_config(path, override=None):
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  return config_util.load_pipeline_config(path, override)


def _flop_kwargs(config):
  """Arguments of bench_flops.tal_net_flops matching a TAL-Net model config."""
  from tal_tf.builders import tal_net_builder  # pylint: disable=g-import-not-at-top
  from tal_tf.protos import tal_net_pb2  # pylint: disable=g-import-not-at-top
  m = config.model.tal_net
  dims = {s.name: s.dim for s in config.eval_input_reader.streams}
  scales = [int(s) for s in m.anchor_generator.multiscale_anchor_generator.scales]
  variant = tal_net_builder._SPN_VARIANTS[m.spn_variant]  # pylint: disable=protected-access
  if m.fusion == tal_net_pb2.TalNet.EARLY:
    stream_dims = (sum(dims[s] for s in m.streams),)
  else:
    stream_dims = tuple(dims[s] for s in m.streams)
  nms = m.first_stage_nms
  return dict(
      stream_dims=stream_dims,
      num_proposals=nms.max_total if nms.HasField("max_total") else 300,
      num_bins=m.soi_num_bins, num_classes=m.num_classes,
      reduce_dim=m.feature_reduction_dim,
      spn_kwargs=dict(scales=tuple(scales), variant=variant, use_context=m.spn_context,
                      filters=m.num_filters,
                      rounding=tal_net_builder._SPN_TOWER_PLANS[m.spn_tower_plan]),
      classifier_kwargs=dict(reduce_filters=m.feature_reduction_dim, fc_units=m.num_filters))


def analytic_flops(config, num_steps):
  """Analytic forward FLOPs (bench_flops) of the configured TAL-Net on one video."""
  from bench import bench_flops  # pylint: disable=g-import-not-at-top
  return bench_flops.tal_net_flops(num_steps, **_flop_kwargs(config))


def _stage_flops(config, num_steps):
  """Analytic FLOPs per stage: {'reducer+spn': ..., 'classifier': ...} (all branches)."""
  from bench import bench_flops  # pylint: disable=g-import-not-at-top
  kw = _flop_kwargs(config)
  spn = cls = 0
  for dim in kw["stream_dims"]:
    spn += bench_flops.feature_reducer_flops(num_steps, dim, kw["reduce_dim"])
    spn += bench_flops.spn_flops(num_steps, kw["reduce_dim"], **kw["spn_kwargs"])
    cls += bench_flops.classifier_flops(kw["num_proposals"], kw["num_bins"], dim,
                                        kw["num_classes"], **kw["classifier_kwargs"])
  return {"reducer+spn": spn, "classifier": cls}


def _random_features(model, dims, batch, num_steps, seed=0):
  """Non-negative random features {stream: [batch, T, D]} (I3D features are post-ReLU)."""
  rng = np.random.default_rng(seed)
  return {s: np.abs(rng.standard_normal((batch, num_steps, dims[s]))).astype(np.float32)
          for s in model.stream_names}


def _make_detect_fn(tf, model, dims):
  """One tf.function: features [1, T, D] per stream -> postprocessed detections."""
  specs = {s: tf.TensorSpec([None, None, dims[s]], tf.float32) for s in model.stream_names}

  @tf.function(input_signature=[specs, tf.TensorSpec([None], tf.int32),
                                tf.TensorSpec([], tf.float32)])
  def detect(features, num_steps, feature_fps):
    predictions = model.predict(features, num_steps, training=False)
    return model.postprocess(predictions, num_steps, feature_fps)

  return detect


def _build_model(config):
  from tal_tf.builders import model_builder  # pylint: disable=g-import-not-at-top
  return model_builder.build(config.model)


# ----------------------------------------------------------------------------- profiling
def profiler_flops(tf, detect, dims, model, num_steps):
  """FLOPs the tf.compat.v1 profiler counts on the graph traced with static shapes."""
  specs = {s: tf.TensorSpec([1, num_steps, dims[s]], tf.float32) for s in model.stream_names}
  concrete = detect.python_function
  graph = tf.function(concrete).get_concrete_function(
      specs, tf.TensorSpec([1], tf.int32), tf.TensorSpec([], tf.float32)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  result = tf.compat.v1.profiler.profile(graph, options=options)
  from tensorflow.python.framework import ops as ops_lib  # pylint: disable=g-import-not-at-top
  by_type = {}
  for op in graph.get_operations():
    try:
      stats = ops_lib.get_stats_for_node_def(graph, op.node_def, "flops")
    except (ValueError, KeyError, TypeError):
      continue
    if stats.value:
      by_type[op.type] = by_type.get(op.type, 0) + stats.value
  return result.total_float_ops, by_type


_COMPONENTS = (
    ("reducer", "_reducer/"), ("spn", "_spn/"), ("soi_pooling", "soi_pooling"),
    ("classifier", "_classifier/"), ("proposal_nms", "batch_class_agnostic_nms"),
    ("detection_nms", "batch_multiclass_nms"),
)


def _component(op_name):
  for label, key in _COMPONENTS:
    if key in op_name:
      return label
  return "other (decode, clip, softmax, glue)"


def trace_breakdown(tf, call, calls, logdir):
  """Runs `call` `calls` times under tf.profiler; per-call ms per component and op type.

  Op events are the executor's per-kernel spans on the inter-op threads ('name:type'); a
  kernel's span includes the time its intra-op helpers (oneDNN/Eigen pool) work for it, so
  the sums are busy time of the inter-op threads and may exceed the wall time when two
  kernels run at once.
  """
  import glob  # pylint: disable=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  tf.profiler.experimental.start(logdir)
  for _ in range(calls):
    call()
  tf.profiler.experimental.stop()
  files = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
  if not files:
    return None
  space = xplane_pb2.XSpace()
  with open(files[-1], "rb") as f:
    space.ParseFromString(f.read())
  by_component, by_type, by_op = {}, {}, {}
  for plane in space.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if ":" not in name or name.startswith(("ExecutorState", "ThreadpoolListener")):
          continue
        op_name, op_type = name.rsplit(":", 1)
        ms = event.duration_ps / 1e9 / calls
        comp = _component(op_name)
        by_component[comp] = by_component.get(comp, 0.0) + ms
        by_type[op_type] = by_type.get(op_type, 0.0) + ms
        by_op[name] = by_op.get(name, 0.0) + ms
  return by_component, by_type, by_op


def stage_timings(tf, model, features, num_steps, fps, repeats, warmup):
  """Median ms of each inference stage run alone, each in its own tf.function."""
  from tal_tf.core import soi_pooling  # pylint: disable=g-import-not-at-top
  # pylint: disable=protected-access
  n = tf.constant(num_steps)
  maps = [tf.constant(features[s]) for s in model.stream_names]
  k = model._anchor_generator.num_anchors_per_location()

  @tf.function
  def spn_stage(maps, n):
    outs = [spn(red(m), num_steps=n) for red, spn, m in zip(model._reducers, model._spns, maps)]
    return (tf.add_n([o[0] for o in outs]) / len(outs), tf.add_n([o[1] for o in outs]) / len(outs))

  @tf.function
  def proposal_stage(logits, enc, n):
    anchors = model.anchors(tf.shape(maps[0])[1])
    valid, decode_anchors = model._anchors_for_videos(anchors, n, n * k, False)
    return model._proposals(decode_anchors, logits, enc, n, valid)

  @tf.function
  def soi_stage(maps, proposals, n):
    # As the model does: one pooling over the streams concatenated along channels.
    pooled = soi_pooling.soi_pooling(tf.concat(maps, axis=-1), proposals, n,
                                     num_bins=model._soi_num_bins,
                                     context_fraction=model._soi_context)
    return tf.split(pooled, [m.shape[-1] for m in maps], axis=-1)

  @tf.function
  def head_stage(pooled):
    outs = [head(p) for head, p in zip(model._heads, pooled)]
    return tf.add_n([o[0] for o in outs]), tf.add_n([o[1] for o in outs])

  predict_fn = tf.function(lambda feats, n: model.predict(feats, n))
  post_fn = tf.function(lambda preds, n: model.postprocess(preds, n, fps))

  feats = {s: m for s, m in zip(model.stream_names, maps)}
  logits, enc = spn_stage(maps, n)
  proposals, _, _ = proposal_stage(logits, enc, n)
  pooled = soi_stage(maps, proposals, n)
  preds = predict_fn(feats, n)
  stages = [
      ("reducer + SPN (all streams)", lambda: spn_stage(maps, n)[0].numpy()),
      ("anchor decode + proposal NMS", lambda: proposal_stage(logits, enc, n)[2].numpy()),
      ("SoI pooling (all streams)", lambda: soi_stage(maps, proposals, n)[0].numpy()),
      ("classifier heads (all streams)", lambda: head_stage(pooled)[0].numpy()),
      ("postprocess (decode + per-class NMS)",
       lambda: post_fn(preds, n)["num_detections"].numpy()),
  ]
  # pylint: enable=protected-access
  return [(name, 1e3 * float(np.median(_timed(fn, repeats, warmup)))) for name, fn in stages]


def _make_first_stage_fn(tf, model):
  """tf.function: features -> proposals (reducers, SPNs, anchor decoding, proposal NMS)."""
  # pylint: disable=protected-access
  k = model._anchor_generator.num_anchors_per_location()

  @tf.function(reduce_retracing=True)
  def first_stage(features, num_steps):
    maps = [features[s] for s in model.stream_names]
    outs = [spn(red(m), num_steps=num_steps)
            for red, spn, m in zip(model._reducers, model._spns, maps)]
    logits = tf.add_n([o[0] for o in outs]) / len(outs)
    enc = tf.add_n([o[1] for o in outs]) / len(outs)
    anchors = model.anchors(tf.shape(maps[0])[1])
    valid, decode_anchors = model._anchors_for_videos(anchors, num_steps, num_steps * k, False)
    return model._proposals(decode_anchors, logits, enc, num_steps, valid)
  # pylint: enable=protected-access
  return first_stage


def gemm_rate(tf, m, k, n, calls=30):
  """GFLOP/s of one float32 [m, k] @ [k, n] matmul (median of `calls` single-op calls)."""
  a = tf.random.stateless_normal([m, k], seed=[5, 6])
  b = tf.random.stateless_normal([k, n], seed=[7, 8])
  fn = tf.function(lambda a, b: tf.matmul(a, b)[0, 0])
  times = _timed(lambda: fn(a, b).numpy(), calls, warmup=5)
  return 2.0 * m * k * n / np.median(times) / 1e9


# ----------------------------------------------------------------------------- children
def child_latency(args):
  """Subprocess: latency + peak-RSS delta at one length; prints one JSON line."""
  tf = _setup_tf(args)
  config = _load_config(args.pipeline_config)
  dims = {s.name: s.dim for s in config.eval_input_reader.streams}
  model = _build_model(config)
  detect = _make_detect_fn(tf, model, dims)
  fps = tf.constant(FEATURE_FPS)
  # Trace and build weights on a tiny video, so the measured peak is the run's working set.
  small = _random_features(model, dims, 1, 16, seed=1)
  detect(small, tf.constant([16]), fps)
  features = {s: tf.constant(v) for s, v in
              _random_features(model, dims, 1, args.num_steps).items()}
  n = tf.constant([args.num_steps])
  input_bytes = sum(int(np.prod(v.shape)) * 4 for v in features.values())
  reset_ok = _reset_peak_rss()
  base = _rss()
  tf_base = _tf_memory(tf, reset=True)["current"]
  repeats, warmup = (args.repeats, args.warmup) if args.measure == "latency" else (3, 0)
  times = _timed(lambda: detect(features, n, fps)["num_detections"].numpy(), repeats, warmup)
  peak = _peak_rss()
  tf_peak = _tf_memory(tf)["peak"]
  # The length-dependent part alone: reducers + SPNs + anchor decoding + proposal NMS.
  first_stage = _make_first_stage_fn(tf, model)
  first_stage(small, tf.constant([16]))
  first_base = _tf_memory(tf, reset=True)["current"]
  first_times = _timed(lambda: first_stage(features, n)[2].numpy(), repeats, warmup)
  first_peak = _tf_memory(tf)["peak"] - first_base
  print(json.dumps(dict(num_steps=args.num_steps, median_ms=1e3 * float(np.median(times)),
                        first_stage_ms=1e3 * float(np.median(first_times)),
                        first_stage_tf_peak=first_peak,
                        min_ms=1e3 * float(times.min()), base_rss=base, peak_rss=peak,
                        peak_delta=peak - base, hwm_reset=reset_ok,
                        tf_peak_delta=tf_peak - tf_base,
                        input_bytes=input_bytes)), flush=True)


def _random_train_batch(rng, batch, dims, min_steps, max_steps, num_classes):
  """A padded training batch in the input pipeline's format (InputFields keys), numpy."""
  from tal_tf.core.standard_fields import InputFields as F  # pylint: disable=g-import-not-at-top
  lengths = rng.integers(min_steps, max_steps + 1, size=batch)
  padded = int(lengths.max())
  counts = rng.integers(1, 11, size=batch)
  g = int(counts.max())
  segments = np.zeros((batch, g, 2), np.float32)
  labels = np.zeros((batch, g), np.int32)
  for b in range(batch):
    for i in range(counts[b]):
      length = rng.integers(2, 41)
      start = rng.integers(0, max(lengths[b] - length, 1))
      segments[b, i] = (start, min(start + length, lengths[b]))
      labels[b, i] = rng.integers(1, num_classes + 1)
  features = {}
  for s, d in dims.items():
    x = np.abs(rng.standard_normal((batch, padded, d))).astype(np.float32)
    x *= (np.arange(padded)[None, :, None] < lengths[:, None, None])
    features[s] = x
  return {F.features: features, F.num_steps: lengths.astype(np.int32),
          F.segments: segments, F.labels: labels, F.num_segments: counts.astype(np.int32)}


def child_train(args):
  """Subprocess: training videos/s and peak memory at one batch size; prints one JSON line."""
  tf = _setup_tf(args)
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tal_tf.core.standard_fields import InputFields as F  # pylint: disable=g-import-not-at-top
  from tal_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(0)
  config = _load_config(args.pipeline_config, f"train_input_reader {{ batch_size: "
                                              f"{args.batch_size} }}")
  dims = {s.name: s.dim for s in config.train_input_reader.streams}
  num_classes = config.model.tal_net.num_classes
  model_dir = tempfile.mkdtemp(prefix="bench_tal_net_train_")
  trainer = train_lib.Trainer(config, model_dir)
  b = args.batch_size
  signature = {
      F.features: {s: tf.TensorSpec([b, None, d], tf.float32) for s, d in dims.items()},
      F.num_steps: tf.TensorSpec([b], tf.int32),
      F.segments: tf.TensorSpec([b, None, 2], tf.float32),
      F.labels: tf.TensorSpec([b, None], tf.int32),
      F.num_segments: tf.TensorSpec([b], tf.int32),
  }
  # The trainer's own per-replica step (forward, loss, gradients, Adam update).
  step = tf.function(trainer._replica_step,  # pylint: disable=protected-access
                     input_signature=[signature])
  rng = np.random.default_rng(args.seed)
  batches = [_random_train_batch(rng, b, dims, args.train_min_steps, args.train_max_steps,
                                 num_classes)
             for _ in range(args.train_warmup + args.train_iters)]
  batches = [tf.nest.map_structure(tf.constant, x) for x in batches]
  if args.measure == "memory":
    batches = batches[:args.train_warmup + 4]
  rss_start = _rss()
  for x in batches[:args.train_warmup]:
    step(x)["total_loss"].numpy()
  reset_ok = _reset_peak_rss()
  base = _rss()
  tf_base = _tf_memory(tf, reset=True)["current"]
  times, padded, valid = [], [], []
  for x in batches[args.train_warmup:]:
    start = time.perf_counter()
    loss = float(step(x)["total_loss"].numpy())
    times.append(time.perf_counter() - start)
    padded.append(int(x[F.features][next(iter(dims))].shape[1]))
    valid.append(int(np.sum(x[F.num_steps].numpy())))
  peak = _peak_rss()
  tf_peak = _tf_memory(tf)["peak"]
  shutil.rmtree(model_dir, ignore_errors=True)
  forward = sum(b * analytic_flops(config, t) for t in padded)
  print(json.dumps(dict(batch_size=b, iters=len(times), seconds=float(np.sum(times)),
                        median_step_ms=1e3 * float(np.median(times)),
                        videos=b * len(times), valid_steps=int(np.sum(valid)),
                        padded_steps=int(b * np.sum(padded)), forward_flops=float(forward),
                        last_loss=loss, base_rss=base, peak_rss=peak, peak_delta=peak - base,
                        rss_start=rss_start, hwm_reset=reset_ok,
                        tf_peak_delta=tf_peak - tf_base)), flush=True)


def _run_child(args, extra, env=None):
  cmd = [sys.executable, os.path.abspath(__file__), f"--pipeline_config={args.pipeline_config}",
         f"--intra_threads={args.intra_threads}", f"--inter_threads={args.inter_threads}",
         f"--repeats={args.repeats}", f"--warmup={args.warmup}",
         f"--train_iters={args.train_iters}", f"--train_warmup={args.train_warmup}",
         f"--train_min_steps={args.train_min_steps}",
         f"--train_max_steps={args.train_max_steps}", f"--seed={args.seed}"] + extra
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, **(env or {})))
  lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
  return json.loads(lines[-1])


# ----------------------------------------------------------------------------- reports
def _mb(x):
  return x / 2 ** 20


def _linear_fit(x, y):
  """Least-squares y = a + b x; returns (a, b, max |residual| / max |y|)."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  b, a = np.polyfit(x, y, 1)
  resid = np.max(np.abs(y - (a + b * x))) / max(np.max(np.abs(y)), 1e-12)
  return a, b, resid


def _ratio(value, base):
  """value / base as text, '-' when the base is ~0 (nothing measurable to compare with)."""
  return f"{value / base:.2f}" if abs(base) > 2 ** 20 * 0.5 else "-"


def run_inference(args):
  tf = _setup_tf(args)
  print(f"load average (1/5/15 min): {os.getloadavg()}; {os.cpu_count()} CPUs; threads "
        f"intra={args.intra_threads} inter={args.inter_threads}", flush=True)
  peak_before = measure_matmul_peak(tf)
  print(f"matmul peak (2048^2 float32): median {peak_before[0]:.1f} GFLOP/s, best "
        f"{peak_before[1]:.1f}", flush=True)

  config = _load_config(args.pipeline_config)
  dims = {s.name: s.dim for s in config.eval_input_reader.streams}
  model = _build_model(config)
  detect = _make_detect_fn(tf, model, dims)
  t = args.num_steps
  raw = _random_features(model, dims, 1, t)
  features = {s: tf.constant(v) for s, v in raw.items()}
  n = tf.constant([t])
  fps = tf.constant(FEATURE_FPS)
  start = time.perf_counter()
  detect(features, n, fps)["num_detections"].numpy()
  print(f"first call (trace + run): {time.perf_counter() - start:.2f} s", flush=True)
  times = _timed(lambda: detect(features, n, fps)["num_detections"].numpy(),
                 args.repeats, args.warmup)
  med = float(np.median(times))
  peak_after = measure_matmul_peak(tf)
  peak = max(peak_before[0], peak_after[0])
  flops = analytic_flops(config, t)
  prof_total, prof_by_type = profiler_flops(tf, detect, dims, model, t)
  achieved = flops / med / 1e9
  print()
  print(f"== TAL-Net inference, T={t} steps ({t / FEATURE_FPS:.0f} s of video), batch 1 ==")
  print(f"latency: median {1e3 * med:.1f} ms, min {1e3 * times.min():.1f} ms, "
        f"p90 {1e3 * np.percentile(times, 90):.1f} ms over {args.repeats} calls")
  print(f"FLOPs: analytic {flops / 1e9:.3f} GFLOP; tf.compat.v1 profiler "
        f"{prof_total / 1e9:.3f} GFLOP (" + ", ".join(
            f"{k} {v / 1e9:.3f}" for k, v in sorted(prof_by_type.items(), key=lambda kv: -kv[1])
            if v > 1e6) + ")")
  print(f"matmul peak: {peak_before[0]:.1f} GFLOP/s before, {peak_after[0]:.1f} after "
        f"(using {peak:.1f})")
  print(f"achieved {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of peak; FLOP bound "
        f"{1e3 * flops / peak / 1e9:.1f} ms, measured / bound = {med / (flops / peak / 1e9):.2f}x")

  stages = stage_timings(tf, model, raw, [t], fps, args.repeats, args.warmup)
  sflops = _stage_flops(config, t)
  print("\nstages run alone (median ms; GFLOP/s where FLOPs are counted):")
  for name, ms in stages:
    key = ("reducer+spn" if name.startswith("reducer") else
           "classifier" if name.startswith("classifier") else None)
    extra = (f"  {sflops[key] / 1e9:.3f} GFLOP, {sflops[key] / ms / 1e6:.1f} GFLOP/s "
             f"({100 * sflops[key] / ms / 1e6 / peak:.0f}% of peak)" if key else "")
    print(f"  {name:40s} {ms:7.2f}{extra}")
  print(f"  {'sum of stages':40s} {sum(ms for _, ms in stages):7.2f}   "
        f"(whole function: {1e3 * med:.2f})")
  kw = _flop_kwargs(config)
  filters, red = kw["spn_kwargs"]["filters"], kw["reduce_dim"]
  shapes = [(f"SPN kernel-3 conv as GEMM [{t}x{3 * filters}]x[{3 * filters}x{filters}]",
             (t, 3 * filters, filters)),
            (f"classifier reduce [{kw['num_proposals'] * kw['num_bins']}x{kw['stream_dims'][0]}]"
             f"x[{kw['stream_dims'][0]}x{red}]",
             (kw["num_proposals"] * kw["num_bins"], kw["stream_dims"][0], red)),
            (f"classifier fc [{kw['num_proposals']}x{kw['num_bins'] * red}]x"
             f"[{kw['num_bins'] * red}x{filters}]",
             (kw["num_proposals"], kw["num_bins"] * red, filters))]
  print("\nsingle-GEMM rates at the model's own shapes (what one kernel reaches here):")
  for label, (m_, k_, n_) in shapes:
    rate = gemm_rate(tf, m_, k_, n_)
    print(f"  {label:58s} {rate:6.1f} GFLOP/s ({100 * rate / peak:.0f}% of peak)")

  if args.profile:
    logdir = tempfile.mkdtemp(prefix="bench_tal_net_trace_")
    try:
      result = trace_breakdown(
          tf, lambda: detect(features, n, fps)["num_detections"].numpy(), 10, logdir)
    finally:
      shutil.rmtree(logdir, ignore_errors=True)
    if result:
      by_component, by_type, by_op = result
      total = sum(by_component.values())
      print(f"\ntf.profiler trace, kernel busy time per call ({total:.1f} ms summed over the "
            f"{args.inter_threads} inter-op threads):")
      for k, v in sorted(by_component.items(), key=lambda kv: -kv[1]):
        print(f"  {k:40s} {v:7.2f} ms  {100 * v / total:5.1f}%")
      print("  by op type:")
      for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])[:14]:
        print(f"    {k:38s} {v:7.2f} ms  {100 * v / total:5.1f}%")
      print("  top ops:")
      for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {v:6.2f} ms  {k[:110]}")

  if args.lengths:
    lengths = [int(x) for x in args.lengths.split(",")]
    print("\n== scaling with video length (subprocesses per length; memory = VmHWM - RSS "
          "after a 16-step warm-up call, inputs allocated before, fixed mmap threshold) ==",
          flush=True)
    rows = []
    for length in lengths:
      r = _run_child(args, ["--child=latency", f"--num_steps={length}"])
      # Memory in its own process with a fixed glibc mmap threshold: every buffer above
      # 128 kB is mapped on allocation and unmapped on free, so RSS follows the live set
      # (with glibc's default dynamic threshold, buffers freed by the warm-up stay in the
      # heap and hide the next call's peak).
      m = _run_child(args, ["--child=latency", "--measure=memory", f"--num_steps={length}"],
                     env={"MALLOC_MMAP_THRESHOLD_": "131072"})
      r.update(base_rss=m["base_rss"], peak_rss=m["peak_rss"], peak_delta=m["peak_delta"],
               hwm_reset=m["hwm_reset"], tf_peak_delta=m["tf_peak_delta"],
               first_stage_tf_peak=m["first_stage_tf_peak"])
      rows.append(r)
      print(f"  T={length}: {r['median_ms']:.1f} ms, TF peak {_mb(r['tf_peak_delta']):.1f} MB, "
            f"RSS peak delta {_mb(r['peak_delta']):.1f} MB (process peak "
            f"{_mb(r['peak_rss']):.0f} MB)", flush=True)
    t0, m0 = rows[0]["num_steps"], rows[0]["median_ms"]
    f0, p0 = rows[0]["tf_peak_delta"], rows[0]["peak_delta"]
    print()
    s0 = rows[0]["first_stage_ms"]
    q0 = rows[0]["first_stage_tf_peak"]
    print("| steps | video | GFLOP | median ms | ms ratio | steps ratio | GFLOP/s | % peak | "
          "1st stage ms (ratio) | TF peak MB (ratio) | 1st stage TF peak MB (ratio) | "
          "RSS peak delta MB (ratio) | process peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
      f = analytic_flops(config, r["num_steps"])
      gfs = f / r["median_ms"] / 1e6
      print(f"| {r['num_steps']} | {r['num_steps'] / FEATURE_FPS / 60:.0f} min | {f / 1e9:.2f} | "
            f"{r['median_ms']:.1f} | {r['median_ms'] / m0:.2f} | {r['num_steps'] / t0:.2f} | "
            f"{gfs:.1f} | {100 * gfs / peak:.0f}% | "
            f"{r['first_stage_ms']:.1f} ({r['first_stage_ms'] / s0:.2f}) | "
            f"{_mb(r['tf_peak_delta']):.1f} ({_ratio(r['tf_peak_delta'], f0)}) | "
            f"{_mb(r['first_stage_tf_peak']):.1f} ({_ratio(r['first_stage_tf_peak'], q0)}) | "
            f"{_mb(r['peak_delta']):.1f} ({_ratio(r['peak_delta'], p0)}) | "
            f"{_mb(r['peak_rss']):.0f} |")
    print(f"(inputs, allocated before the measurement: {_mb(rows[-1]['input_bytes']):.1f} MB at "
          f"T={rows[-1]['num_steps']}; TF peak = allocator peak bytes in use during the calls "
          f"minus bytes in use before)")
    xs = [r["num_steps"] for r in rows]
    for label, ys, unit in (("latency", [r["median_ms"] for r in rows], "ms"),
                            ("1st stage latency", [r["first_stage_ms"] for r in rows], "ms"),
                            ("TF peak memory", [_mb(r["tf_peak_delta"]) for r in rows], "MB"),
                            ("1st stage TF peak", [_mb(r["first_stage_tf_peak"]) for r in rows],
                             "MB"),
                            ("RSS peak delta", [_mb(r["peak_delta"]) for r in rows], "MB")):
      a, b, res = _linear_fit(xs, ys)
      print(f"{label} fit: {a:.1f} {unit} + {1e3 * b:.2f} {unit} per 1000 steps (max "
            f"|residual| {100 * res:.1f}% of the largest value)")
    if not rows[0]["hwm_reset"]:
      print("(VmHWM could not be reset: peaks include the warm-up)")


def run_training(args):
  tf = _setup_tf(args)
  print(f"load average (1/5/15 min): {os.getloadavg()}; threads intra={args.intra_threads} "
        f"inter={args.inter_threads}", flush=True)
  peak_before = measure_matmul_peak(tf)
  print(f"matmul peak before: median {peak_before[0]:.1f} GFLOP/s", flush=True)
  rows = []
  for b in [int(x) for x in args.batch_sizes.split(",")]:
    r = _run_child(args, ["--child=train", f"--batch_size={b}"])
    m = _run_child(args, ["--child=train", "--measure=memory", f"--batch_size={b}"],
                   env={"MALLOC_MMAP_THRESHOLD_": "131072"})
    r.update(peak_delta=m["peak_delta"], mem_peak_rss=m["peak_rss"], mem_rss_start=m["rss_start"],
             tf_peak_delta=m["tf_peak_delta"])
    rows.append(r)
    print(f"  batch {b}: {r['videos'] / r['seconds']:.2f} videos/s", flush=True)
  peak_after = measure_matmul_peak(tf)
  peak = max(peak_before[0], peak_after[0])
  print(f"matmul peak after: median {peak_after[0]:.1f} GFLOP/s (using {peak:.1f})")
  print(f"\n== TAL-Net training step (predict + loss + grads + Adam), lengths "
        f"{args.train_min_steps}-{args.train_max_steps} steps, {args.train_iters} timed steps ==")
  print("(memory from a separate process with a fixed mmap threshold, over 4 steps after the "
        "warm-up: 'TF step peak' = allocator peak bytes in use - bytes in use before; 'RSS step "
        "delta' = VmHWM - RSS before; 'process peak' = VmHWM; 'before' = RSS after building "
        "model and optimizer, before the first step)")
  print("| batch | videos/s | valid steps/s | median step ms | fwd GFLOP/step | bound videos/s "
        "(3x fwd @ peak) | % of bound | valid / padded steps | TF step peak MB | RSS step delta MB "
        "| process peak MB | before MB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    vps = r["videos"] / r["seconds"]
    bound_s = 3.0 * r["forward_flops"] / (peak * 1e9)
    bound_vps = r["videos"] / bound_s
    print(f"| {r['batch_size']} | {vps:.2f} | {r['valid_steps'] / r['seconds']:.0f} | "
          f"{r['median_step_ms']:.0f} | {r['forward_flops'] / r['iters'] / 1e9:.2f} | "
          f"{bound_vps:.2f} | {100 * vps / bound_vps:.0f}% | "
          f"{100 * r['valid_steps'] / r['padded_steps']:.0f}% | {_mb(r['tf_peak_delta']):.0f} | "
          f"{_mb(r['peak_delta']):.0f} | "
          f"{_mb(r['mem_peak_rss']):.0f} | {_mb(r['mem_rss_start']):.0f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--what", choices=("inference", "training", "all"), default="inference")
  parser.add_argument("--pipeline_config", default=DEFAULT_CONFIG)
  parser.add_argument("--intra_threads", type=int, default=2)
  parser.add_argument("--inter_threads", type=int, default=2)
  parser.add_argument("--num_steps", type=int, default=188)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--lengths", default="188,1125,2250,4500",
                      help="comma-separated lengths for the scaling table ('' = skip)")
  parser.add_argument("--profile", type=int, default=1, help="1 = tf.profiler breakdown")
  parser.add_argument("--batch_sizes", default="1,4")
  parser.add_argument("--train_iters", type=int, default=20)
  parser.add_argument("--train_warmup", type=int, default=4)
  parser.add_argument("--train_min_steps", type=int, default=188)
  parser.add_argument("--train_max_steps", type=int, default=400)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--child", choices=("latency", "train"), help=argparse.SUPPRESS)
  parser.add_argument("--batch_size", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--measure", choices=("latency", "memory"), default="latency",
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child == "latency":
    return child_latency(args)
  if args.child == "train":
    return child_train(args)
  if args.what in ("inference", "all"):
    run_inference(args)
  if args.what in ("training", "all"):
    if args.what == "all":
      print()
    run_training(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
