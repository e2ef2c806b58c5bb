"""Multi-worker training throughput: steps/s with 1 and 2 local workers, all-reduce share.

  python bench/bench_multiworker.py [--config=configs/tal_net_embedded.config]
      [--global_batch=4] [--max_steps=256] [--steps=10] [--warmup=3]

Trains the config (TAL-Net on embedded-style synthetic data by default, generated into a
temporary folder) for `--steps` timed steps after `--warmup` steps, with the same global
batch in every setting:
  * "default": one process, no distribution strategy (the reference);
  * "mwms x1": MultiWorkerMirroredStrategy with a one-worker TF_CONFIG;
  * "mwms x2": two worker processes on 127.0.0.1 (free ports), each half the batch.
Each worker then times an all-reduce (SUM, the strategy's own collectives) of tensors with
the shapes of the phase's trainable variables, i.e. the gradient all-reduce of one step,
repeated `--steps` times in one tf.function; its share of step time is all-reduce time /
step time. Both workers share this machine's cores, so two local workers cannot be faster
than one here: the figure shows the cost of the collective machinery, not a cluster's
scaling. Results are printed as a table and JSON (with CPU model and load average).
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tal_tf.training import local_cluster  # pylint: disable=g-import-not-at-top,wrong-import-position


def _cpu_model():
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return "unknown"


def _loadavg():
  with open("/proc/loadavg") as f:
    return [float(x) for x in f.read().split()[:3]]


def make_data(root, config_path, global_batch, max_steps):
  """Synthetic records with the config's streams + the config pointed at them."""
  from tal_tf.dataset_tools import create_tfrecord  # pylint: disable=g-import-not-at-top
  from tal_tf.dataset_tools import feature_readers  # pylint: disable=g-import-not-at-top
  from tal_tf.dataset_tools import synthetic_thumos  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  config = config_util.load_pipeline_config(config_path)
  dims = config_util.stream_dims(config.train_input_reader)
  paths = synthetic_thumos.generate_dataset(
      os.path.join(root, "data"), subsets=("validation",), num_videos=16,
      stream_dims=collections.OrderedDict(dims), feature_fps=2.0, seed=0)
  create_tfrecord.convert_dataset(
      paths["annotations"], os.path.join(root, "train"), paths["label_map"],
      feature_readers.NpyDirSource(paths["features"], None), subset="validation",
      num_shards=2, feature_fps=2.0, ignore_classes=("Ambiguous",), progress_stream=None)
  reader = config.train_input_reader
  del reader.input_path[:]
  reader.input_path.append(os.path.join(root, "train-*.tfrecord"))
  reader.label_map_path = paths["label_map"]
  reader.batch_size = global_batch
  reader.max_steps = max_steps
  config.train_config.input_order = "deterministic"
  out = {}
  for name, strategy in (("default", "default"), ("mwms", "multi_worker_mirrored")):
    config.train_config.distribution_strategy = strategy
    config_util.save_pipeline_config(config, root, f"{name}.config")
    out[name] = os.path.join(root, f"{name}.config")
  return out


def child(args):
  """One worker: times training steps, then the gradient all-reduce; prints RESULT json."""
  if args.ports:
    os.environ["TF_CONFIG"] = local_cluster.tf_config(args.ports.split(","), args.task_index)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  config = config_util.load_pipeline_config(args.child_config)
  trainer = train_lib.Trainer(config, args.model_dir, 10**6)
  strategy = trainer.strategy
  phase = trainer.phases[0]
  trainer._begin_phase(phase, 0)  # pylint: disable=protected-access
  iterator = trainer.train_iterator()
  train_fn = trainer._train_fn(phase)  # pylint: disable=protected-access

  def timed_steps(n):
    start = time.perf_counter()
    losses = train_fn(iterator, tf.constant(n, tf.int32))
    float(losses["total_loss"].numpy())
    return time.perf_counter() - start

  timed_steps(args.warmup)
  step_seconds = timed_steps(args.steps) / args.steps

  shapes = [v.shape for v in phase.variables]

  def replica_fn():
    ctx = tf.distribute.get_replica_context()
    grads = [tf.ones(s) * tf.cast(ctx.replica_id_in_sync_group + 1, tf.float32)
             for s in shapes]
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)

  @tf.function
  def all_reduce(n):
    total = tf.constant(0.0)
    for _ in tf.range(n):
      reduced = strategy.run(replica_fn)
      total += tf.add_n([tf.reduce_sum(strategy.experimental_local_results(r)[0])
                         for r in reduced])
    return total

  all_reduce(tf.constant(2))
  start = time.perf_counter()
  all_reduce(tf.constant(args.steps)).numpy()
  reduce_seconds = (time.perf_counter() - start) / args.steps
  print("RESULT " + json.dumps(dict(
      step_seconds=step_seconds, all_reduce_seconds=reduce_seconds,
      replicas=strategy.num_replicas_in_sync, gradient_floats=int(sum(
          s.num_elements() for s in shapes)))), flush=True)


def _run_setting(name, config, workers, args, root):
  ports = local_cluster.free_ports(workers) if workers else []
  procs = []
  for i in range(max(workers, 1)):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--child_config={config}",
           f"--model_dir={os.path.join(root, name.replace(' ', '_'))}",
           f"--steps={args.steps}", f"--warmup={args.warmup}", f"--task_index={i}"]
    if workers:
      cmd.append("--ports=" + ",".join(map(str, ports)))
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=dict(os.environ, PYTHONPATH=REPO)))
  results = []
  for i, proc in enumerate(procs):
    out, err = proc.communicate(timeout=3600)
    if proc.returncode:
      raise RuntimeError(f"{name} worker {i} failed:\n{err[-3000:]}")
    line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
    results.append(json.loads(line[len("RESULT "):]))
  step = max(r["step_seconds"] for r in results)
  reduce_ = max(r["all_reduce_seconds"] for r in results)
  return dict(setting=name, workers=max(workers, 1), steps_per_second=1.0 / step,
              videos_per_second=args.global_batch / step, step_ms=1e3 * step,
              all_reduce_ms=1e3 * reduce_, all_reduce_share=reduce_ / step,
              gradient_floats=results[0]["gradient_floats"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs",
                                                       "tal_net_embedded.config"))
  parser.add_argument("--global_batch", type=int, default=4)
  parser.add_argument("--max_steps", type=int, default=256)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--child", action="store_true")
  parser.add_argument("--child_config", default="")
  parser.add_argument("--model_dir", default="")
  parser.add_argument("--ports", default="")
  parser.add_argument("--task_index", type=int, default=0)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  root = tempfile.mkdtemp(prefix="bench_multiworker_")
  configs = make_data(root, args.config, args.global_batch, args.max_steps)
  load_before = _loadavg()
  rows = [_run_setting("default", configs["default"], 0, args, root),
          _run_setting("mwms x1", configs["mwms"], 1, args, root),
          _run_setting("mwms x2", configs["mwms"], 2, args, root)]
  meta = dict(cpu=_cpu_model(), cores=os.cpu_count(), load_before=load_before,
              load_after=_loadavg(), config=os.path.relpath(args.config, REPO),
              global_batch=args.global_batch, max_steps=args.max_steps, steps=args.steps)
  print(f"{meta['cpu']}, {meta['cores']} cores, load average {load_before} -> "
        f"{meta['load_after']}; {meta['config']}, global batch {args.global_batch}, "
        f"{args.max_steps} steps per video")
  print(f"{'setting':10s} {'steps/s':>8s} {'videos/s':>9s} {'step ms':>8s} "
        f"{'all-reduce ms':>14s} {'share':>6s}")
  for r in rows:
    print(f"{r['setting']:10s} {r['steps_per_second']:8.2f} {r['videos_per_second']:9.2f} "
          f"{r['step_ms']:8.0f} {r['all_reduce_ms']:14.1f} {r['all_reduce_share']:6.1%}")
  print(json.dumps(dict(meta, rows=rows)))


if __name__ == "__main__":
  main()
