r"""ETP on the embedded dataset: the paper's reproduction runs (Tab. 3, Fig. 5, 6, 7).

  python bench/bench_etp.py [--work_dir=/tmp/tal_tf_etp] [--num_videos=60] [--seed=1]
      [--runs=all|name,...] [--fresh] [--phase_steps=N]
  python bench/bench_etp.py --an_diagnostic=100:0.01,300:0.01,1000:0.01,300:0.1

Each run trains configs/etp_embedded.config with one override (configs/etp_ablations/) in its
own subprocess through the trainer of train_main.py (tal_tf.training.train_lib.Trainer): the
phases in order (actionness, refinement, localization; no RN phase without refinement), each
with its own optimizer (SGD momentum 0.9, step decay) and step count from the config,
`begin_phase` caching the previous phase's proposals; then the
test videos are evaluated (mAP at tIoU 0.1..0.7, AR@AN of the output proposals = RN's refined
proposals) and, for runs with the RN, once more with the RN bypassed at inference (the LN on
AN's proposals; AR@AN of AN's proposals). Results: <work_dir>/etp.json and etp.md (printed).

--an_diagnostic trains only the actionness phase per steps:rate pair and measures the AN
itself (true-class probability and argmax accuracy inside actions, max probability outside)
and its proposals' AR@AN: how far a short run's AN is from usable, which bounds every later
phase (the LN only sees what Algorithm 1 proposes).
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
  # The model as configured; with an RN also bypassed (the LN on AN's proposals). A run
  # without the RN (Fig. 5) must not enable its untrained RN (an earlier version did).
  views = [("output", model.has_refinement)] + (
      [("an_proposals", False)] if model.has_refinement else [])
  for view, use_rn in views:
    model.set_inference_refinement(use_rn)
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


def an_diagnostic(args, steps, lr):
  """Trains the actionness phase alone (`steps` steps, rate `lr`, x0.1 after 2/3) and
  measures the AN on the test videos: mean probability of the true class inside actions,
  argmax accuracy inside actions, mean max probability outside actions, AN proposals per
  video and their AR@AN (tIoU 0.5:0.05:1.0). -> dict."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  from tal_tf.core.standard_fields import InputFields  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import activitynet_protocol  # pylint: disable=g-import-not-at-top
  from tal_tf.training import eval_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top

  paths = demo.prepare_data(args.work_dir, args.num_videos, FEATURE_FPS, DIM, 0)
  config = config_util.load_pipeline_config(CONFIG, demo.demo_override(paths, DIM))
  config.train_config.seed = args.seed
  del config.train_config.phases[1:]   # actionness only
  phase = config.train_config.phases[0]
  phase.num_steps = steps
  schedule = phase.optimizer.learning_rate.piecewise_constant
  schedule.boundaries[:] = [max(1, steps * 2 // 3)]
  schedule.values[:] = [lr, lr / 10]
  start = time.perf_counter()
  trainer = train_lib.Trainer(config, os.path.join(args.work_dir, "an_diagnostic",
                                                   f"steps{steps}_lr{lr:g}"))
  trainer.train()
  train_seconds = time.perf_counter() - start
  model = trainer.model

  @tf.function(reduce_retracing=True)
  def run_an(features, num_steps):
    x, n = model._inputs(features, num_steps)  # pylint: disable=protected-access
    probs = tf.sigmoid(model._actionness(x, n, False))  # pylint: disable=protected-access
    return (probs,) + model._an_proposals(x, n)  # pylint: disable=protected-access

  inside, accuracy, outside, counts, gt, proposals = [], [], [], [], {}, {}
  for batch in eval_lib.build_eval_dataset(config, model.num_classes):
    probs, segments, scores, num = run_an(batch[InputFields.features],
                                          batch[InputFields.num_steps])
    targets = model.step_targets(
        tf.shape(probs)[1], tf.cast(batch[InputFields.segments], tf.float32),
        tf.cast(batch[InputFields.labels], tf.int32),
        tf.cast(batch[InputFields.num_segments], tf.int32)).numpy()
    for b in range(probs.shape[0]):
      t = int(batch[InputFields.num_steps][b])
      p, y = probs[b, :t].numpy(), targets[b, :t]
      act = y.max(-1) > 0
      if act.any():
        inside.append((p[act] * y[act]).sum(-1).mean())
        accuracy.append((p[act].argmax(-1) == y[act].argmax(-1)).mean())
      if (~act).any():
        outside.append(p[~act].max(-1).mean())
      vid = batch[InputFields.video_id][b].numpy().decode()
      g, n = int(batch[InputFields.num_segments][b]), int(num[b])
      gt[vid] = {"segments": batch[InputFields.segments_seconds][b][:g].numpy().astype(float),
                 "labels": np.array(["action"] * g, object)}
      fps = float(batch[InputFields.feature_fps][b])
      proposals[vid] = {"segments": segments[b, :n].numpy().astype(float) / fps,
                        "scores": scores[b, :n].numpy().astype(float)}
      counts.append(n)
  ar = activitynet_protocol.average_recall_metrics(
      gt, proposals, activitynet_protocol.PROPOSAL_TIOU_THRESHOLDS, max_avg_nr_proposals=100,
      ar_at=(10, 50, 100))
  return {"steps": steps, "lr": lr, "train_seconds": train_seconds,
          "p_true_in_action": float(np.mean(inside)), "acc_in_action": float(np.mean(accuracy)),
          "max_p_outside": float(np.mean(outside)), "proposals_per_video": float(np.mean(counts)),
          **{f"AR@{k}": float(v) for k, v in ar["ar_at_an"].items()}}


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
  # Fig. 5 (with / without the RN) and Fig. 6 (non-local / plain pyramid): per-class AP@0.5.
  for figure, other, ours, theirs in (("Fig. 5", "no_rn", "with RN", "without RN"),
                                      ("Fig. 6", "plain_pyramid", "NLPF (non-local)",
                                       "STPF (plain)")):
    a = results.get("full", {}).get("output", {}).get("per_class_AP@0.5")
    b = results.get(other, {}).get("output", {}).get("per_class_AP@0.5")
    if not (a and b):
      continue
    lines += ["", f"{figure}, per-class AP@0.5 (%)", "",
              f"| class | {ours} | {theirs} | difference |", "|---|---|---|---|"]
    for name in a:
      lines.append(f"| {name} | {_fmt(a[name])} | {_fmt(b.get(name))} | "
                   f"{100 * (a[name] - b.get(name, 0.0)):+.1f} |")
    better = sum(a[n] > b.get(n, 0.0) for n in a)
    lines.append(f"| classes higher {ours} | {better} of {len(a)} | | |")
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
  parser.add_argument("--an_diagnostic", default="",
                      help="steps:lr,... : train the actionness phase alone per pair and "
                      "report the AN's accuracy and its proposals' AR@AN (no other runs)")
  parser.add_argument("--run_one", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run_one:
    run_one(args)
    return
  if args.an_diagnostic:
    rows = []
    for pair in args.an_diagnostic.split(","):
      steps, lr = pair.split(":")
      rows.append(an_diagnostic(args, int(steps), float(lr)))
    lines = ["| AN steps | rate | p(true class), in actions | argmax accuracy, in actions | "
             "max p, outside | proposals / video | AR@10 | AR@50 | AR@100 | train s |",
             "|---" * 10 + "|"]
    for r in rows:
      lines.append(f"| {r['steps']} | {r['lr']:g} | {r['p_true_in_action']:.3f} | "
                   f"{r['acc_in_action']:.3f} | {r['max_p_outside']:.3f} | "
                   f"{r['proposals_per_video']:.1f} | " + " | ".join(
                       _fmt(r[k]) for k in AR_KEYS) + f" | {r['train_seconds']:.0f} |")
    print("\n".join(lines))
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
