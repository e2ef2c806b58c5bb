r"""The ablations of TAL-Net (Tab. 1-4) on the embedded dataset, one train_and_eval run each.

  python bench/bench_ablations.py [--work_dir=/tmp/tal_tf_ablations] [--num_train_steps=1500]
      [--num_videos=60] [--seed=1] [--runs=all|name,name,...] [--fresh]

Every run trains configs/tal_net_embedded.config with a text override (what
`train_main.py --config_override` takes) through `tal_tf.training.run_lib.run(...,
"train_and_eval")`, in its own subprocess (fresh graph and memory), with the same data,
the same number of steps and the same seed (TF/numpy/Python seeded before the model is
built, so runs differ only by their override). Data: `tal_tf.demo.prepare_data` (synthetic
two-stream features on the real THUMOS14 structure; --num_videos train + test videos).

Runs (9 distinct trainings; each table reuses the shared ones):
  Tab. 1  receptive field, no context anywhere (spn_context false, soi_context_fraction 0):
          SINGLE, SINGLE_TCONV, MULTI_TCONV, MULTI_DILATED      -> AR@AN and mAP
  Tab. 2  SPN context: MULTI_DILATED spn_context false / true (SoI context 0) -> AR@AN
  Tab. 3  SoI context: spn_context true, soi_context_fraction 0 / 0.5   -> mAP@0.1..0.7
  Tab. 4  fusion (full model): rgb only, flow only, EARLY, LATE         -> mAP
A finished run is reused when its metrics file exists (--fresh retrains). Results go to
<work_dir>/ablations.json and <work_dir>/ablations.md (markdown tables, also printed).
Run from the repository root. Numbers and their discussion: bench/README.md.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = os.path.join(ROOT, "configs", "tal_net_embedded.config")
DIM = 32
FEATURE_FPS = 2.0

_NO_CONTEXT = "spn_context: false soi_context_fraction: 0.0"
# name -> (model.tal_net override body, description)
RUNS = {
    "single": (f"spn_variant: SINGLE {_NO_CONTEXT}", "SINGLE (kernel-1 tower, RF 1)"),
    "single_tconv": (f"spn_variant: SINGLE_TCONV {_NO_CONTEXT}",
                     "SINGLE_TCONV (shared 2x k3 tower, RF 5)"),
    "multi_tconv": (f"spn_variant: MULTI_TCONV {_NO_CONTEXT}",
                    "MULTI_TCONV (per-scale 2x k3 towers, RF 5)"),
    "multi_dilated": (f"spn_variant: MULTI_DILATED {_NO_CONTEXT}",
                      "MULTI_DILATED (RF = anchor span)"),
    "spn_context": ("spn_variant: MULTI_DILATED spn_context: true soi_context_fraction: 0.0",
                    "SPN context (RF = 2x span), no SoI context"),
    "full": ("spn_variant: MULTI_DILATED spn_context: true soi_context_fraction: 0.5",
             "full model (SPN + SoI context, late fusion)"),
    "rgb_only": ('streams: "rgb" spn_context: true soi_context_fraction: 0.5', "rgb only"),
    "flow_only": ('streams: "flow" spn_context: true soi_context_fraction: 0.5', "flow only"),
    "early_fusion": ("fusion: EARLY spn_context: true soi_context_fraction: 0.5",
                     "early fusion"),
}

AR_KEYS = ("AR@10", "AR@50", "AR@100", "AR@200")
MAP_KEYS = tuple(f"mAP@{t}" for t in ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"))


def _override(paths, name, num_train_steps, seed):
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  body = RUNS[name][0]
  return (demo.demo_override(paths, DIM) + f" model {{ tal_net {{ {body} }} }}"
          f" train_config {{ num_steps: {num_train_steps} seed: {seed} }}")


def run_one(args):
  """Subprocess: trains + evaluates one ablation; writes <run dir>/result.json."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from tal_tf.training import run_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  paths = demo.prepare_data(args.data_dir, args.num_videos, FEATURE_FPS, DIM, 0)
  config = config_util.load_pipeline_config(
      CONFIG, _override(paths, args.run_one, args.num_train_steps, args.seed))
  # train_config.seed seeds the input order only; weights are seeded here so every run
  # starts from the same generator state.
  tf_keras.utils.set_random_seed(args.seed)
  np.random.seed(args.seed)
  model_dir = os.path.join(args.work_dir, args.run_one)
  start = time.time()
  metrics = run_lib.run(config, model_dir, "train_and_eval",
                        num_train_steps=args.num_train_steps)
  scalars = evaluator.scalar_metrics(metrics)
  scalars["seconds"] = time.time() - start
  scalars["num_train_steps"] = args.num_train_steps
  scalars["seed"] = args.seed
  with open(os.path.join(model_dir, "result.json"), "w") as f:
    json.dump(scalars, f, indent=2, sort_keys=True)
  print(json.dumps(scalars), flush=True)


def _pct(x):
  return f"{100.0 * x:.1f}"


def _row(label, result, keys):
  return f"| {label} | " + " | ".join(_pct(result[k]) for k in keys)


def tables(results):
  """Markdown tables of Tab. 1-4 from {run name: scalars}."""
  out = []
  ar_head = " | ".join(k for k in AR_KEYS) + " | AR AUC"
  map_head = " | ".join(k.replace("mAP@", "") for k in MAP_KEYS) + " | avg"

  def have(*names):
    return all(n in results for n in names)

  if have("single", "single_tconv", "multi_tconv", "multi_dilated"):
    out.append("**Tab. 1 - receptive field (no context)**: proposal AR (%) at AN, mAP (%) at "
               "tIoU 0.5 and average over 0.1:0.7\n")
    out.append(f"| SPN | {ar_head} | mAP@0.5 | avg mAP |")
    out.append("|---" * (len(AR_KEYS) + 4) + "|")
    for n in ("single", "single_tconv", "multi_tconv", "multi_dilated"):
      r = results[n]
      out.append(_row(RUNS[n][1], r, AR_KEYS) + f" | {_pct(r['AR_AUC'])} | "
                 f"{_pct(r['mAP@0.5'])} | {_pct(r['average_mAP'])} |")
    out.append("")
  if have("multi_dilated", "spn_context"):
    out.append("**Tab. 2 - SPN context** (MULTI_DILATED, no SoI context): proposal AR (%) at AN\n")
    out.append(f"| SPN context | {ar_head} |")
    out.append("|---" * (len(AR_KEYS) + 2) + "|")
    for label, n in (("no", "multi_dilated"), ("yes", "spn_context")):
      out.append(_row(label, results[n], AR_KEYS) + f" | {_pct(results[n]['AR_AUC'])} |")
    out.append("")
  if have("spn_context", "full"):
    out.append("**Tab. 3 - SoI context** (SPN with context, late fusion): mAP (%) at tIoU\n")
    out.append(f"| SoI context | {map_head} |")
    out.append("|---" * (len(MAP_KEYS) + 2) + "|")
    for label, n in (("no", "spn_context"), ("yes (s/2 each side)", "full")):
      out.append(_row(label, results[n], MAP_KEYS) + f" | {_pct(results[n]['average_mAP'])} |")
    out.append("")
  if have("rgb_only", "flow_only", "early_fusion", "full"):
    out.append("**Tab. 4 - fusion** (full model otherwise): mAP (%) at tIoU\n")
    out.append(f"| streams | {map_head} |")
    out.append("|---" * (len(MAP_KEYS) + 2) + "|")
    for label, n in (("rgb only", "rgb_only"), ("flow only", "flow_only"),
                     ("early fusion", "early_fusion"), ("late fusion", "full")):
      out.append(_row(label, results[n], MAP_KEYS) + f" | {_pct(results[n]['average_mAP'])} |")
    out.append("")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--work_dir", default="/tmp/tal_tf_ablations")
  parser.add_argument("--data_dir", default=None, help="default: <work_dir>/data")
  parser.add_argument("--num_videos", type=int, default=60)
  parser.add_argument("--num_train_steps", type=int, default=1500)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--runs", default="all")
  parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
  parser.add_argument("--run_one", choices=sorted(RUNS), help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.work_dir = os.path.abspath(args.work_dir)
  args.data_dir = os.path.abspath(args.data_dir or os.path.join(args.work_dir, "data"))
  if args.run_one:
    return run_one(args)

  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  os.makedirs(args.work_dir, exist_ok=True)
  demo.prepare_data(args.data_dir, args.num_videos, FEATURE_FPS, DIM, 0)
  names = list(RUNS) if args.runs == "all" else args.runs.split(",")
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise SystemExit(f"--runs: unknown {unknown}; expected 'all' or names from {list(RUNS)}")
  print(f"load average at start: {os.getloadavg()}", flush=True)
  results = {}
  total_start = time.time()
  for name in names:
    run_dir = os.path.join(args.work_dir, name)
    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path) and not args.fresh:
      with open(result_path) as f:
        cached = json.load(f)
      if (cached.get("num_train_steps") == args.num_train_steps
          and cached.get("seed") == args.seed):
        results[name] = cached
        print(f"[{name}] reusing {result_path}", flush=True)
        continue
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[{name}] training {args.num_train_steps} steps: {RUNS[name][1]} ...", flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), f"--run_one={name}",
           f"--work_dir={args.work_dir}", f"--data_dir={args.data_dir}",
           f"--num_videos={args.num_videos}", f"--num_train_steps={args.num_train_steps}",
           f"--seed={args.seed}"]
    log_path = os.path.join(args.work_dir, f"{name}.log")
    with open(log_path, "w") as log:
      proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
      raise SystemExit(f"[{name}] failed (exit {proc.returncode}); see {log_path}")
    results[name] = json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])
    r = results[name]
    print(f"[{name}] {r['seconds']:.0f} s: avg mAP {_pct(r['average_mAP'])}, mAP@0.5 "
          f"{_pct(r['mAP@0.5'])}, AR@100 {_pct(r['AR@100'])}, load {os.getloadavg()[0]:.1f}",
          flush=True)
  print(f"\ntotal {time.time() - total_start:.0f} s, load average at end: {os.getloadavg()}\n")
  text = tables(results)
  header = (f"{args.num_videos} train / {args.num_videos} test videos, "
            f"{args.num_train_steps} steps, seed {args.seed}\n\n")
  print(header + text)
  with open(os.path.join(args.work_dir, "ablations.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)
  with open(os.path.join(args.work_dir, "ablations.md"), "w") as f:
    f.write(header + text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
