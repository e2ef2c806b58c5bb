r"""The WTAL ablations (Tab. 3-5, Fig. 2-4) on the embedded dataset, one training run each.

  python bench/bench_wtal_ablations.py [--work_dir=/tmp/tal_tf_wtal_ablations]
      [--num_train_steps=1500] [--num_videos=60] [--seed=1] [--runs=all|name,...] [--fresh]

Every run trains configs/wtal_embedded.config (video labels only) with one override from
configs/wtal_ablations/ (none for the base run, the paper's settings) in its own subprocess
with the same data, steps and seed, then detects on the test videos and scores them with the
evaluator at tIoU 0.1, 0.3, 0.5, 0.7 ("Avg" is their mean, as in the paper's tables). The
run "tal_net" trains configs/tal_net_embedded.config (fully supervised, segments) on the same
data for the same number of steps: the upper reference. A finished run is reused when its
result.json matches steps and seed (--fresh retrains). Results: <work_dir>/wtal_ablations.json
and .md (also printed). Run from the repository root; numbers in bench/README.md.
"""

import argparse
import glob
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

CONFIG = os.path.join(ROOT, "configs", "wtal_embedded.config")
TAL_NET_CONFIG = os.path.join(ROOT, "configs", "tal_net_embedded.config")
ABLATION_DIR = os.path.join(ROOT, "configs", "wtal_ablations")
DIM = 32
FEATURE_FPS = 2.0
TIOUS = (0.1, 0.3, 0.5, 0.7)
KEYS = tuple(f"mAP@{t}" for t in TIOUS)

RUNS = ["base"] + sorted(os.path.basename(p)[:-len(".config")]
                         for p in glob.glob(os.path.join(ABLATION_DIR, "*.config"))) + ["tal_net"]

# Table layout: (title, [(row label, run name)]).
TABLES = [
    ("Tab. 3 - metric loss", [("L_BBCE", "tab3_no_metric_loss"),
                              ("L_BBCE + L_contrastive", "tab3_contrastive"),
                              ("L_BBCE + L_triplet (base)", "base")]),
    ("Tab. 4 - block-based processing", [("no blocks (one per video, k = 10)",
                                          "tab4_no_blocks"),
                                         ("blocks of 60, k = 10 (base)", "base")]),
    ("Tab. 5 - clipping value kappa", [("w/o clip", "tab5_no_clip"), ("2", "tab5_kappa_2"),
                                       ("3", "tab5_kappa_3"), ("4 (base)", "base"),
                                       ("5", "tab5_kappa_5"), ("10", "tab5_kappa_10")]),
    ("Fig. 2 - classification loss (+ triplet)", [("BCE", "fig2_bce"),
                                                   ("softmax (MIL)", "fig2_softmax_mil"),
                                                   ("BBCE (base)", "base")]),
    ("Fig. 3 - distance function", [("cosine", "fig3_cosine"), ("Euclidean", "fig3_euclidean"),
                                    ("custom (learned M_c)", "fig3_learned"),
                                    ("ours, class-specific (base)", "base")]),
    ("Fig. 4a - k at block size 60", [("k = 2", "fig4a_k_2"), ("k = 5", "fig4a_k_5"),
                                      ("k = 10 (base)", "base"), ("k = 15", "fig4a_k_15"),
                                      ("k = 20", "fig4a_k_20")]),
    ("Fig. 4b - block size, k = 6 % of it", [(f"l_w = {l}", f"fig4b_block_{l}")
                                             for l in (20, 40, 60, 80, 100, 120)]),
    ("Upper reference - TAL-Net, fully supervised", [("TAL-Net (segments)", "tal_net"),
                                                     ("WTAL base (video labels)", "base")]),
]


def _override_text(name):
  if name in ("base", "tal_net"):
    return ""
  with open(os.path.join(ABLATION_DIR, name + ".config")) as f:
    return f.read()


def _evaluate_wtal(model, config, num_classes):
  """Detects on the eval records; ActivityNet-protocol mAP at TIOUS."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tal_tf.core.standard_fields import DetectionFields as DF  # pylint: disable=g-import-not-at-top
  from tal_tf.core.standard_fields import InputFields as F  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from tal_tf.training import eval_lib  # pylint: disable=g-import-not-at-top
  names = eval_lib.class_names_from_config(config, num_classes)
  detect = eval_lib.make_detect_fn(model)
  groundtruth, results = {}, {}
  for batch in eval_lib.build_eval_dataset(config, num_classes):
    out = {k: v.numpy() for k, v in detect(batch[F.features], batch[F.num_steps],
                                           batch[F.feature_fps]).items()}
    for b, vid in enumerate(batch[F.video_id].numpy()):
      vid = vid.decode()
      g = int(batch[F.num_segments][b])
      groundtruth[vid] = {
          "segments": batch[F.segments_seconds][b][:g].numpy().astype(np.float64),
          "labels": np.array([names[int(i)] for i in batch[F.labels][b][:g]], object)}
      n = int(out[DF.num_detections][b])
      results[vid] = {
          "segments": out[DF.detection_segments][b][:n].astype(np.float64),
          "labels": np.array([names[int(i)] for i in out[DF.detection_classes][b][:n]], object),
          "scores": out[DF.detection_scores][b][:n].astype(np.float64)}
  scorer = evaluator.DetectionEvaluator(tiou_thresholds=TIOUS, protocol="activitynet")
  metrics = scorer.evaluate(groundtruth, results, class_names=[names[i] for i in sorted(names)])
  return evaluator.scalar_metrics(metrics)


def run_one(args):
  """Subprocess: trains + evaluates one run; writes <run dir>/result.json."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from tal_tf.training import run_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  name = args.run_one
  paths = demo.prepare_data(args.data_dir, args.num_videos, FEATURE_FPS, DIM, 0)
  override = (demo.demo_override(paths, DIM) + " " + _override_text(name) +
              f" train_config {{ num_steps: {args.num_train_steps} seed: {args.seed} }}")
  base = TAL_NET_CONFIG if name == "tal_net" else CONFIG
  config = config_util.load_pipeline_config(base, override)
  tf_keras.utils.set_random_seed(args.seed)
  np.random.seed(args.seed)
  model_dir = os.path.join(args.work_dir, name)
  start = time.time()
  if name == "tal_net":
    metrics = run_lib.run(config, model_dir, "train_and_eval",
                          num_train_steps=args.num_train_steps)
    scalars = evaluator.scalar_metrics(metrics)
  else:
    trainer = train_lib.Trainer(config, model_dir, args.num_train_steps)
    trainer.train()
    scalars = _evaluate_wtal(trainer.model, config, trainer.model.num_classes)
  result = {k: scalars[k] for k in KEYS}
  result["avg"] = sum(result[k] for k in KEYS) / len(KEYS)
  result.update(seconds=time.time() - start, num_train_steps=args.num_train_steps,
                seed=args.seed)
  with open(os.path.join(model_dir, "result.json"), "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  print(json.dumps(result), flush=True)


def tables(results):
  """Markdown tables from {run name: result}."""
  out = []
  head = " | ".join(str(t) for t in TIOUS) + " | Avg"
  for title, rows in TABLES:
    rows = [(label, name) for label, name in rows if name in results]
    if not rows:
      continue
    out.append(f"**{title}**: mAP (%) at tIoU\n")
    out.append(f"| variant | {head} |")
    out.append("|---" * (len(TIOUS) + 2) + "|")
    for label, name in rows:
      r = results[name]
      out.append(f"| {label} | " + " | ".join(f"{100 * r[k]:.1f}" for k in KEYS) +
                 f" | {100 * r['avg']:.2f} |")
    out.append("")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--work_dir", default="/tmp/tal_tf_wtal_ablations")
  parser.add_argument("--data_dir", default=None, help="default: <work_dir>/data")
  parser.add_argument("--num_videos", type=int, default=60)
  parser.add_argument("--num_train_steps", type=int, default=1500)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--runs", default="all")
  parser.add_argument("--fresh", action="store_true", help="retrain finished runs")
  parser.add_argument("--run_one", choices=RUNS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  args.work_dir = os.path.abspath(args.work_dir)
  args.data_dir = os.path.abspath(args.data_dir or os.path.join(args.work_dir, "data"))
  if args.run_one:
    return run_one(args)
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  os.makedirs(args.work_dir, exist_ok=True)
  demo.prepare_data(args.data_dir, args.num_videos, FEATURE_FPS, DIM, 0)
  names = RUNS if args.runs == "all" else args.runs.split(",")
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise SystemExit(f"--runs: unknown {unknown}; expected 'all' or names from {RUNS}")
  print(f"load average at start: {os.getloadavg()}", flush=True)
  results = {}
  summary_path = os.path.join(args.work_dir, "wtal_ablations.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      results = {k: v for k, v in json.load(f).items()
                 if v.get("num_train_steps") == args.num_train_steps
                 and v.get("seed") == args.seed}
  for name in names:
    run_dir = os.path.join(args.work_dir, name)
    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path) and not args.fresh:
      with open(result_path) as f:
        cached = json.load(f)
      if cached.get("num_train_steps") == args.num_train_steps and cached.get(
          "seed") == args.seed:
        results[name] = cached
        print(f"[{name}] reusing {result_path}", flush=True)
        continue
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[{name}] training {args.num_train_steps} steps ...", flush=True)
    cmd = [sys.executable, os.path.abspath(__file__), f"--run_one={name}",
           f"--work_dir={args.work_dir}", f"--data_dir={args.data_dir}",
           f"--num_videos={args.num_videos}", f"--num_train_steps={args.num_train_steps}",
           f"--seed={args.seed}"]
    with open(os.path.join(args.work_dir, f"{name}.log"), "w") as log:
      proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
      print(f"[{name}] FAILED (see {args.work_dir}/{name}.log)", flush=True)
      continue
    results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[{name}] avg mAP {100 * results[name]['avg']:.2f} "
          f"({results[name]['seconds']:.0f} s)", flush=True)
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, summary_path)
  text = tables(results)
  tmp = os.path.join(args.work_dir, "wtal_ablations.md.tmp")
  with open(tmp, "w") as f:
    f.write(text + "\n")
  os.replace(tmp, os.path.join(args.work_dir, "wtal_ablations.md"))
  print(text)


if __name__ == "__main__":
  main()
