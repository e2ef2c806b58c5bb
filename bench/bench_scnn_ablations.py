r"""S-CNN ablations (Tab. 3, Fig. 7, the alpha sweep) on the embedded dataset (features
backbone) or on tiny synthetic videos (C3D backbone on frames).

  python bench/bench_scnn_ablations.py [--work_dir=/tmp/scnn_ablations] [--steps=150]
      [--base_lr=RATE] [--fc8_multiplier=M] [--num_videos=60] [--seed=1]
      [--runs=all|name,name,...] [--fresh]
  python bench/bench_scnn_ablations.py --backbone=c3d --work_dir=/tmp/scnn_c3d \
      [--steps=150] [--num_videos=24] ...

C3D mode: configs/scnn_c3d_synthetic_video.config (C3D at 1/16 of its widths, 16x16 crops,
windows 16/32/64 frames) on videos of tal_tf.video.synthetic (moving shapes, an action is a
disc whose colour is its class; 2 classes) made into frame records at 10 fps, 32x24 pixels
by create_frame_records; two thirds train, one third test; C3D at 1/4 of its widths without
dropout (`C3D_MODEL`), batches of 4 videos. Training runs C3D only on each batch's Sec. 3.2
sample (at most 8 windows per video). The narrow C3D starts from random
weights, so its config trains at C3D's own from-scratch rate (3e-3, no fc8 multiplier)
rather than the paper's fine-tuning rate (1e-4, fc8 at 100x over Sports-1M weights).

Every run builds configs/scnn_embedded.config with a `model.scnn` override and trains its
phases in order ("proposal", "classification", "localization", minus those an ablation drops)
in its own subprocess, with the same data, steps and seed:
  * each phase: the solver of its `train_config.phases` entry in the config (SGD with
    momentum, Caffe-style weight decay added to the gradient, the fc8 learning-rate
    multiplier, the piecewise rate's first value as base rate and the ratio of its first two
    values as the step decay), the decay applied every `--steps // 3` iterations, i.e. the
    trainer's phases with the iteration counts scaled down; `--base_lr` / `--fc8_multiplier`
    override every phase's base rate / fc8 multiplier;
  * `begin_phase` before each phase (length prior from the training data, localization
    initialized from the classification network).
Evaluation follows the paper through the shared evaluator (`eval_lib.evaluate_dataset`,
S-CNN's `evaluation_postprocess_kwargs`): mAP at theta from detections post-processed with
NMS at theta - 0.1, one post-processing per theta over the same network outputs; also mAP
with the serving NMS (0.4) at every theta, the protocol TAL-Net is evaluated with. Fig. 7: the detections of NMS at 0.4, pooled over the test videos, cut to the
top kappa by score, mAP@0.5 against kappa.

configs/scnn_embedded.config has the paper's solver (base 1e-4, fc8 at 100x) except the
proposal phase's base rate 1e-3 with fc8 at 10x (the config says why); a base rate of 1e-3
with fc8 at 100x (1e-1) diverged (proposal loss 1.8 -> 5.7 within 60 iterations).
Runs (names for --runs):
  scnn               the full model                        (Tab. 3, Fig. 7)
  no_proposal        use_proposal_network: false           (Tab. 3)
  no_classification  localization not initialized from classification (Fig. 7)
  no_localization    the classification network scores windows      (Fig. 7)
  alpha_0.5, alpha_0.75, alpha_1.0   overlap_alpha (the text's stability claim)
Results: <work_dir>/scnn_ablations.json and .md (printed too); bench/README.md discusses them.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CONFIG = os.path.join(ROOT, "configs", "scnn_embedded.config")
C3D_CONFIG = os.path.join(ROOT, "configs", "scnn_c3d_synthetic_video.config")
DIM = 32
FEATURE_FPS = 2.0
THETAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
KAPPAS = (25, 50, 100, 200, 400, 800, 1600)
# The C3D mode's test set is ~8 videos with ~2 actions each.
C3D_KAPPAS = (4, 8, 16, 32, 64, 128, 256)

RUNS = {
    "scnn": ("", "S-CNN"),
    "no_proposal": ("use_proposal_network: false", "S-CNN (w/o proposal)"),
    "no_classification": ("initialize_localization_from_classification: false",
                          "S-CNN (w/o classification)"),
    "no_localization": ("scoring_network: CLASSIFICATION", "S-CNN (w/o localization)"),
    "alpha_0.5": ("overlap_alpha: 0.5", "alpha 0.5"),
    "alpha_0.75": ("overlap_alpha: 0.75", "alpha 0.75"),
    "alpha_1.0": ("overlap_alpha: 1.0", "alpha 1.0"),
}
def prepare_frames(work_dir, num_videos, seed=0):
  """Synthetic videos -> frame records (train = 'validation', test) at the C3D config's
  frame rate and size; returns the reader override for that config."""
  from tal_tf.dataset_tools import create_frame_records  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  from tal_tf.video import synthetic  # pylint: disable=g-import-not-at-top
  root = os.path.join(work_dir, "frames_data")
  spec = config_util.stream_dims(
      config_util.load_pipeline_config(C3D_CONFIG).train_input_reader)["frames"]
  done = os.path.join(root, "done")
  if not os.path.exists(done):
    synthetic.write_dataset(root, num_videos=num_videos, seconds=12.0, fps=25, width=96,
                            height=72, seed=seed)
    for subset in ("validation", "test"):
      create_frame_records.convert_videos(
          os.path.join(root, "videos"), os.path.join(root, "annotations.json"),
          os.path.join(root, subset), os.path.join(root, "label_map.pbtxt"), subset=subset,
          fps=spec.fps, size=(spec.width, spec.height), progress_stream=None)
    open(done, "w").close()
  label_map = os.path.join(root, "label_map.pbtxt")
  return (f'train_input_reader {{ input_path: "{root}/validation-*.tfrecord" '
          f'label_map_path: "{label_map}" batch_size: 4 }} '
          f'eval_input_reader {{ input_path: "{root}/test-*.tfrecord" '
          f'label_map_path: "{label_map}" }}')


# C3D at 1/4 of its widths without dropout: at the config's 1/16 (4 channels in conv1a) the
# randomly initialized network did not learn at all (proposal loss stayed at ln 2 over 800
# steps at rates 3e-3 and 1e-2), at 1/4 it fits the training windows within ~500 steps.
C3D_MODEL = "c3d { width_multiplier: 0.25 } dropout_rate: 0.0"


def phase_solver(config, phase, base_lr=None, fc8_multiplier=None):
  """The configured solver of `phase`: dict(base_lr, decay, momentum, weight_decay,
  multipliers [(regex, multiplier)]) from train_config.phases (piecewise_constant values v:
  base v[0], decay v[1] / v[0]); base_lr / fc8_multiplier override the configured ones."""
  for p in config.train_config.phases:
    if p.name != phase:
      continue
    opt = p.optimizer
    values = list(opt.learning_rate.piecewise_constant.values)
    if opt.WhichOneof("optimizer_oneof") != "momentum" or len(values) < 2:
      raise ValueError(f"train_config.phases {phase!r}: the bench needs momentum with a "
                       f"piecewise_constant rate of >= 2 values, got {opt}")
    multipliers = [(m.regex, m.multiplier) for m in p.learning_rate_multipliers]
    if fc8_multiplier is not None:
      multipliers = [("/fc8/", float(fc8_multiplier))]
    return dict(base_lr=values[0] if base_lr is None else float(base_lr),
                decay=values[1] / values[0], momentum=opt.momentum.momentum,
                weight_decay=opt.momentum.weight_decay, multipliers=multipliers)
  raise ValueError(f"train_config has no phase {phase!r}")


def train_phase(model, phase, dataset, steps, solver, log, on_step=None):
  """Caffe SGD on `phase`'s variables for `steps` batches of `dataset` (an iterator), with
  `solver` from `phase_solver` (the rate decayed at every third of the phase); on_step(i)
  is called after iteration i (1-based) when given."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.core.standard_fields import InputFields  # pylint: disable=g-import-not-at-top
  variables = model.phase_variables(phase)
  velocity = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
  # The first matching regex wins (the trainer's rule).
  multipliers = [next((m for r, m in solver["multipliers"] if re.search(r, v.name)), 1.0)
                 for v in variables]
  mu, wd = solver["momentum"], solver["weight_decay"]
  gt_keys = (InputFields.segments, InputFields.labels, InputFields.num_segments)

  @tf.function(reduce_retracing=True)
  def step(batch, lr):
    with tf.GradientTape() as tape:
      pred = model.predict(batch[InputFields.features], batch[InputFields.num_steps],
                           training=True, phase=phase)
      losses = model.loss(pred, {k: batch[k] for k in gt_keys}, phase)
    grads = tape.gradient(losses["total_loss"], variables)
    for v, g, s, m in zip(variables, grads, velocity, multipliers):
      # Caffe SGD: V = mu V + lr (g + wd w); w -= V.
      s.assign(mu * s + lr * m * (g + wd * v))
      v.assign_sub(s)
    return losses["total_loss"], losses[f"{phase}_num_windows"]

  decay_every = max(steps // 3, 1)
  t0 = time.time()
  for i in range(steps):
    lr = solver["base_lr"] * solver["decay"] ** (i // decay_every)
    loss, n = step(next(dataset), tf.constant(lr, tf.float32))
    if (i + 1) % max(steps // 5, 1) == 0 or i < 3:
      log(f"  {phase} step {i + 1}/{steps} loss {float(loss):.4f} windows {int(n)} "
          f"lr {lr:.2e} ({time.time() - t0:.0f}s)")
    if on_step is not None:
      on_step(i + 1)


def evaluate(model, config, kappas=KAPPAS):
  """mAP@theta with NMS theta - 0.1 (the shared evaluator's per-threshold post-processing),
  mAP@theta with the serving NMS for every theta (TAL-Net's protocol), AR@AN of the
  proposals, and mAP@0.5 vs top-kappa."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import activitynet_protocol  # pylint: disable=g-import-not-at-top
  from tal_tf.training import eval_lib  # pylint: disable=g-import-not-at-top

  num_classes = model.num_classes
  class_names = eval_lib.class_names_from_config(config, num_classes)
  names = [class_names[i] for i in sorted(class_names)]
  eval_config = config.eval_config
  eval_config.ClearField("tiou_thresholds")
  eval_config.tiou_thresholds.extend(THETAS)
  eval_config.average_number_of_proposals[:] = [10, 50, 100, 200]
  eval_config.per_threshold_postprocessing = True
  metrics, collector, gt, _ = eval_lib.evaluate_dataset(
      model, eval_config, eval_lib.build_eval_dataset(config, num_classes), class_names)
  detection = metrics["detection"]
  nms = model.evaluation_nms_iou_thresholds(THETAS)
  out = {"mAP": {str(t): float(v) for t, v in zip(THETAS, detection["mAP"])},
         "nms": {str(t): nms[t] for t in THETAS}}
  out["avg_mAP"] = float(np.mean(list(out["mAP"].values())))
  serving = activitynet_protocol.mean_average_precision(gt, collector.results, list(THETAS),
                                                        class_names=names)
  out["mAP_serving_nms"] = {str(t): float(v) for t, v in zip(THETAS, serving["mAP"])}
  out["avg_mAP_serving_nms"] = float(serving["average_mAP"])
  out["serving_nms"] = model.nms_iou_threshold
  ar = metrics["proposals"]
  out["proposals"] = {f"AR@{k}": float(v) for k, v in ar["ar_at_an"].items()}
  out["proposals"]["AUC"] = float(ar["auc"])
  # Fig. 7: top-kappa of the pooled detections of theta = 0.5 (NMS at 0.4), mAP@0.5.
  results = collector.results_per_threshold[0.5]
  pooled = sorted(((float(s), v, i) for v, r in results.items()
                   for i, s in enumerate(r["scores"])), key=lambda x: -x[0])
  out["num_detections"] = len(pooled)
  out["top_kappa"] = {}
  for kappa in tuple(kappas) + (len(pooled),):
    keep = {}
    for _, v, i in pooled[:kappa]:
      keep.setdefault(v, []).append(i)
    cut = {}
    for v, r in results.items():
      idx = np.array(sorted(keep.get(v, [])), int)
      cut[v] = {k: np.asarray(r[k])[idx] for k in ("segments", "labels", "scores")}
    m = activitynet_protocol.mean_average_precision(gt, cut, [0.5], class_names=names)
    out["top_kappa"][str(kappa)] = float(m["mAP"][0])
  return out


def build_run(model_override, args):
  """(config, model with variables, stream dims, dataset_fn) of the backbone's config with a
  `model.scnn` override, on its data in <work_dir>, seeded by args.seed."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tal_tf import demo  # pylint: disable=g-import-not-at-top
  from tal_tf.builders import input_reader_builder  # pylint: disable=g-import-not-at-top
  from tal_tf.builders import model_builder  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top

  if args.backbone == "c3d":
    override = prepare_frames(args.work_dir, args.num_videos)
    model_override = f"{C3D_MODEL} {model_override}"
    base = C3D_CONFIG
  else:
    paths = demo.prepare_data(os.path.join(args.work_dir, "data"), args.num_videos,
                              FEATURE_FPS, DIM, 0)
    override = demo.demo_override(paths, DIM)
    base = CONFIG
  override += f" model {{ scnn {{ {model_override} }} }}"
  config = config_util.load_pipeline_config(base, override)
  tf_keras.utils.set_random_seed(args.seed)
  model = model_builder.build(config.model)
  dims = config_util.stream_dims(config.train_input_reader)
  model.create_variables(dims)

  def dataset_fn(is_training, repeat):
    ds = input_reader_builder.build(config.train_input_reader, model.num_classes,
                                    is_training=is_training, seed=args.seed)
    return ds if repeat else ds.take(args.prior_batches)

  return config, model, dims, dataset_fn


def run_one(name, args):
  """Trains and evaluates one run in this process; writes <work_dir>/<name>.json."""
  from tal_tf.meta_architectures import meta_arch  # pylint: disable=g-import-not-at-top

  log = lambda msg: print(f"[{name}] {msg}", flush=True)
  config, model, dims, dataset_fn = build_run(RUNS[name][0], args)
  train = iter(dataset_fn(True, True))
  t0 = time.time()
  solvers = {}
  for phase in model.training_phases:
    ctx = meta_arch.TrainingContext(dataset_fn, args.work_dir, 0, True, stream_dims=dims)
    model.begin_phase(phase, ctx)
    solvers[phase] = phase_solver(config, phase, args.base_lr, args.fc8_multiplier)
    log(f"  {phase} solver {solvers[phase]}")
    train_phase(model, phase, train, args.steps, solvers[phase], log)
  train_seconds = time.time() - t0
  metrics = evaluate(model, config, C3D_KAPPAS if args.backbone == "c3d" else KAPPAS)
  metrics.update(name=name, description=RUNS[name][1], phases=list(model.training_phases),
                 train_seconds=train_seconds, steps_per_phase=args.steps,
                 solvers=solvers, seed=args.seed, backbone=args.backbone)
  log(f"avg mAP {metrics['avg_mAP']:.4f} mAP@0.5 {metrics['mAP']['0.5']:.4f} "
      f"({train_seconds:.0f}s training)")
  with open(os.path.join(args.work_dir, f"{name}.json.tmp"), "w") as f:
    json.dump(metrics, f, indent=1)
  os.replace(os.path.join(args.work_dir, f"{name}.json.tmp"),
             os.path.join(args.work_dir, f"{name}.json"))


def tables(results):
  """Markdown tables: Tab. 3, mAP at every theta, Fig. 7 (top-kappa), alpha sweep."""
  lines = []
  pct = lambda x: f"{100 * x:.1f}"
  if "scnn" in results and "no_proposal" in results:
    lines += ["**Tab. 3** mAP (%) at tIoU 0.5 (NMS 0.4)", "",
              "| networks | S-CNN (w/o proposal) | S-CNN |", "|---|---|---|",
              f"| mAP@0.5 | {pct(results['no_proposal']['mAP']['0.5'])} | "
              f"{pct(results['scnn']['mAP']['0.5'])} |", ""]
  lines += ["**mAP (%) at theta, NMS at theta - 0.1**", "",
            "| run | " + " | ".join(str(t) for t in THETAS) + " | avg | AR@100 | train s |",
            "|---|" + "---|" * (len(THETAS) + 3)]
  for name, r in results.items():
    ar = r.get("proposals", {}).get("AR@100")
    lines.append(f"| {r['description']} | " + " | ".join(pct(r["mAP"][str(t)]) for t in THETAS)
                 + f" | {pct(r['avg_mAP'])} | {pct(ar) if ar is not None else '-'} | "
                 f"{r['train_seconds']:.0f} |")
  serving = [n for n, r in results.items() if "mAP_serving_nms" in r]
  if serving:
    lines += ["", "**mAP (%) at theta, serving NMS for every theta** (TAL-Net's protocol)", "",
              "| run | " + " | ".join(str(t) for t in THETAS) + " | avg |",
              "|---|" + "---|" * (len(THETAS) + 1)]
    for n in serving:
      r = results[n]
      lines.append(f"| {r['description']} (NMS {r['serving_nms']:g}) | "
                   + " | ".join(pct(r["mAP_serving_nms"][str(t)]) for t in THETAS)
                   + f" | {pct(r['avg_mAP_serving_nms'])} |")
  fig7 = [n for n in ("scnn", "no_classification", "no_localization") if n in results]
  if fig7:
    # The last entry of each run is "all its detections" (a run-specific count).
    kappas = list(results[fig7[0]]["top_kappa"])[:-1]
    lines += ["", "**Fig. 7** mAP@0.5 (%) of the top-kappa pooled detections", "",
              "| run | " + " | ".join(f"kappa={k}" for k in kappas) + " | all (count) |",
              "|---|" + "---|" * (len(kappas) + 1)]
    for n in fig7:
      tk = list(results[n]["top_kappa"].items())
      lines.append(f"| {results[n]['description']} | "
                   + " | ".join(pct(v) for _, v in tk[:len(kappas)])
                   + f" | {pct(tk[-1][1])} ({tk[-1][0]}) |")
  return "\n".join(lines)


def plot_fig7(results, path):
  """Fig. 7 as a PNG (matplotlib if available)."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for n in ("scnn", "no_classification", "no_localization"):
    if n in results:
      tk = results[n]["top_kappa"]
      ax.plot([int(k) for k in tk], [100 * v for v in tk.values()], marker="o",
              label=results[n]["description"])
  ax.set_xscale("log")
  ax.set_xlabel("kappa (top-kappa detections)")
  ax.set_ylabel("mAP@0.5 (%)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default="/tmp/scnn_ablations")
  parser.add_argument("--backbone", choices=("features", "c3d"), default="features")
  parser.add_argument("--steps", type=int, default=150, help="iterations per phase")
  parser.add_argument("--base_lr", type=float, default=None,
                      help="every phase's base rate (default: each phase's configured one)")
  parser.add_argument("--fc8_multiplier", type=float, default=None,
                      help="every phase's fc8 multiplier (default: the configured ones)")
  parser.add_argument("--prior_batches", type=int, default=20,
                      help="training batches read for the length prior")
  parser.add_argument("--num_videos", type=int, default=None,
                      help="default 60 (features), 24 (c3d)")
  parser.add_argument("--seed", type=int, default=1)
  parser.add_argument("--runs", default="all")
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--one", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.num_videos is None:
    args.num_videos = 24 if args.backbone == "c3d" else 60
  os.makedirs(args.work_dir, exist_ok=True)
  if args.one:
    run_one(args.one, args)
    return
  names = list(RUNS) if args.runs == "all" else args.runs.split(",")
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    raise SystemExit(f"--runs: unknown {unknown}; expected names from {list(RUNS)}")
  results = {}
  for name in names:
    path = os.path.join(args.work_dir, f"{name}.json")
    if args.fresh or not os.path.exists(path):
      cmd = [sys.executable, os.path.abspath(__file__), f"--one={name}"] + [
          a for a in sys.argv[1:] if not a.startswith("--runs") and a != "--fresh"]
      subprocess.run(cmd, check=True)
    with open(path) as f:
      results[name] = json.load(f)
  md = tables(results)
  print(md)
  with open(os.path.join(args.work_dir, "scnn_ablations.md"), "w") as f:
    f.write(md + "\n")
  with open(os.path.join(args.work_dir, "scnn_ablations.json"), "w") as f:
    json.dump(results, f, indent=1)
  png = plot_fig7(results, os.path.join(args.work_dir, "scnn_fig7.png"))
  if png:
    print(f"Fig. 7 plot: {png}")


if __name__ == "__main__":
  main()
