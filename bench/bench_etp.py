r"""ETP on the embedded dataset: the paper's reproduction runs (Tab. 3, Fig. 5, 6, 7).

  python bench/bench_etp.py [--work_dir=/tmp/tal_tf_etp] [--num_videos=60] [--seed=1]
      [--runs=all|name,...] [--fresh] [--phase_steps=N]

Each run trains configs/etp_embedded.config with one override (configs/etp_ablations/) in its
own subprocess through the trainer of train_main.py (tal_tf.training.train_lib.Trainer): the
phases in order (actionness, refinement, localization; no RN phase without refinement), each
with its own optimizer (SGD momentum 0.9, step decay) and step count from the config,
`begin_phase` caching the previous phase's proposals; then the
test videos are evaluated (mAP at tIoU 0.1..0.7, AR@AN of the output proposals = RN's refined
proposals) and, for runs with the RN, once more with the RN bypassed at inference (the LN on
AN's proposals; AR@AN of AN's proposals). Results: <work_dir>/etp.json and etp.md (printed).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = os.path.join(ROOT, "configs", "etp_embedded.config")
ABLATIONS = os.path.join(ROOT, "configs", "etp_ablations")
DIM = 32
FEATURE_FPS = 2.0

RUNS = {
    "full": (None, "ETP, rgb+flow (Tab. 3 RGB+Flow; Fig. 7 d = 4 steps)"),
    "rgb": ("tab3_rgb", "Tab. 3 RGB only"),
    "flow": ("tab3_flow", "Tab. 3 Flow only"),
    "no_rn": ("fig5_without_rn", "Fig. 5 without the Refinement Network"),
    "plain_pyramid": ("fig6_plain_pyramid", "Fig. 6 plain structured pyramid (no non-local)"),
    "unit_1": ("fig7_unit_16", "Fig. 7 unit 1 step (~16 frames)"),
    "unit_2": ("fig7_unit_32", "Fig. 7 unit 2 steps (~32 frames)"),
    "unit_8": ("fig7_unit_128", "Fig. 7 unit 8 steps (~128 frames)"),
}
MAP_KEYS = tuple(f"mAP@{t}" for t in ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"))
AR_KEYS = ("AR@10", "AR@50", "AR@100")


def _override(paths, name, seed):
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  del seed  # set on the loaded config (an ablation may override train_config itself)
  text = demo.demo_override(paths, DIM)
  ablation = RUNS[name][0]
  if ablation:
    with open(os.path.join(ABLATIONS, ablation + ".config")) as f:
      text += "\n" + f.read()
  return text


def run_one(args):
  """Subprocess: trains + evaluates one run; writes <run dir>/result.json."""
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from tal_tf.training import eval_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top

  # Data seed 0, as the other benches (TAL-Net, S-CNN, WTAL): the same videos for all.
  paths = demo.prepare_data(args.work_dir, args.num_videos, FEATURE_FPS, DIM, 0)
  config = config_util.load_pipeline_config(CONFIG, _override(paths, args.run_one,
                                                              args.seed))
  config.train_config.seed = args.seed
  if args.phase_steps:
    # Shorter runs: every phase gets phase_steps steps, its decay points scaled alike.
    for phase in config.train_config.phases:
      factor = args.phase_steps / phase.num_steps
      phase.num_steps = args.phase_steps
      schedule = phase.optimizer.learning_rate.piecewise_constant
      schedule.boundaries[:] = [max(1, int(round(b * factor))) for b in schedule.boundaries]
  run_dir = os.path.join(args.work_dir, "runs", args.run_one)
  os.makedirs(run_dir, exist_ok=True)
  start = time.perf_counter()
  trainer = train_lib.Trainer(config, os.path.join(run_dir, "model"))
  trainer.train()
  model = trainer.model
  result = {"train_seconds": time.perf_counter() - start,
            "phases": {p.name: p.num_steps for p in config.train_config.phases}}
  views = [("output", True)] + ([("an_proposals", False)] if model.use_refinement else [])
  for view, use_rn in views:
    model._use_refinement = use_rn  # the LN on AN's proposals when False
    start = time.perf_counter()
    metrics, _ = eval_lib.evaluate_model(model, config, 0, os.path.join(run_dir, view))
    scalars = evaluator.scalar_metrics(metrics)
    result[view] = {k: v for k, v in scalars.items()
                    if k.startswith("mAP@") or k.startswith("AR@") or k == "average_mAP"}
    detection = metrics.get("detection", metrics)
    if "ap" in detection and 0.5 in [round(float(t), 6) for t in detection["tiou_thresholds"]]:
      row = [round(float(t), 6) for t in detection["tiou_thresholds"]].index(0.5)
      result[view]["per_class_AP@0.5"] = dict(zip(
          detection["class_names"], (float(v) for v in detection["ap"][row])))
    result[view]["eval_seconds"] = time.perf_counter() - start
  with open(os.path.join(run_dir, "result.json"), "w") as f:
    json.dump(result, f, indent=1, default=float)


def _fmt(v):
  return "-" if v is None else f"{100 * v:.1f}"


def tables(results):
  lines = ["| run | " + " | ".join(MAP_KEYS) + " | " + " | ".join(AR_KEYS) + " |",
           "|---" * (1 + len(MAP_KEYS) + len(AR_KEYS)) + "|"]
  for name, res in results.items():
    for view in ("output", "an_proposals"):
      if view not in res:
        continue
      label = RUNS[name][1] + (" [RN bypassed at inference: LN on AN proposals]"
                               if view == "an_proposals" else "")
      m = res[view]
      lines.append(f"| {label} | " + " | ".join(_fmt(m.get(k)) for k in MAP_KEYS) + " | " +
                   " | ".join(_fmt(m.get(k)) for k in AR_KEYS) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--work_dir", default="/tmp/tal_tf_etp")
  parser.add_argument("--num_videos", type=int, default=60)
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--runs", default="all")
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--phase_steps", type=int, default=0,
                      help="steps of every phase (0: the config's)")
  parser.add_argument("--run_one", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run_one:
    run_one(args)
    return
  names = list(RUNS) if args.runs == "all" else args.runs.split(",")
  results = {}
  for name in names:
    result_path = os.path.join(args.work_dir, "runs", name, "result.json")
    if args.fresh or not os.path.exists(result_path):
      print(f"== {name}: {RUNS[name][1]}", flush=True)
      start = time.perf_counter()
      subprocess.run([sys.executable, os.path.abspath(__file__), f"--run_one={name}",
                      f"--work_dir={args.work_dir}", f"--num_videos={args.num_videos}",
                      f"--seed={args.seed}", f"--phase_steps={args.phase_steps}"],
                     check=True)
      print(f"   {time.perf_counter() - start:.0f} s", flush=True)
    with open(result_path) as f:
      results[name] = json.load(f)
  text = tables(results)
  print(text)
  with open(os.path.join(args.work_dir, "etp.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(args.work_dir, "etp.md"), "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  main()
