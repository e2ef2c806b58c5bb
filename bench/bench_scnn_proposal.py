r"""S-CNN's proposal network against its iterations: P_pro of positive vs background windows.

  python bench/bench_scnn_proposal.py [--work_dir=/tmp/scnn_proposal] [--steps=500]
      [--snapshots=150,300] [--base_lr=RATE] [--fc8_multiplier=M] [--seed=1]

Trains only the proposal phase of configs/scnn_embedded.config on the embedded dataset (the
solver of bench_scnn_ablations.py: the config's, or `--base_lr` / `--fc8_multiplier`
overrides; the paper's solver is --base_lr=1e-4 --fc8_multiplier=100) and, at initialization,
at each snapshot iteration and at the end, labels every sliding window of the whole test and
training videos with the Sec. 3.2 rules and reports, for positive (label > 0) and background
(label 0) windows: the AUC of P_pro (probability that a random positive outscores a random
background), the fraction at P_pro >= the inference cut (0.7), the number of windows
passing it, quantiles and 10-bin histograms of P_pro, and the spread of the logit
difference. The learning-rate schedule is the one of the full `--steps` run, so a snapshot
at 150 of a 500-iteration run is not the 150-iteration run. Results:
<work_dir>/proposal_<steps>.json (printed too).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_scnn_ablations as ablations  # pylint: disable=g-import-not-at-top,wrong-import-position


def auc(positive, background):
  """P(a random positive scores above a random background), ties count half."""
  scores = np.concatenate([positive, background])
  order = scores.argsort(kind="stable")
  ranks = np.empty(len(scores))
  ranks[order] = np.arange(1, len(scores) + 1)
  # Average ranks over ties.
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  ranks = (np.bincount(inverse, ranks) / counts)[inverse]
  n_pos, n_bg = len(positive), len(background)
  return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_bg))


def window_stats(p_pro, labels, logit_diff, cut):
  """Summary of P_pro [N] of labelled windows (labels [N]: > 0 positive, 0 background)."""
  pos, bg = p_pro[labels > 0], p_pro[labels == 0]
  bins = np.linspace(0.0, 1.0, 11)
  return dict(
      num_positive=int(len(pos)), num_background=int(len(bg)), num_windows=int(len(p_pro)),
      auc=auc(pos, bg), positive_at_cut=float(np.mean(pos >= cut)),
      background_at_cut=float(np.mean(bg >= cut)), windows_at_cut=int(np.sum(p_pro >= cut)),
      positive_quantiles=np.quantile(pos, [0.1, 0.5, 0.9]).round(3).tolist(),
      background_quantiles=np.quantile(bg, [0.1, 0.5, 0.9]).round(3).tolist(),
      positive_histogram=np.histogram(pos, bins)[0].tolist(),
      background_histogram=np.histogram(bg, bins)[0].tolist(),
      logit_difference_std=float(np.std(logit_diff)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default="/tmp/scnn_proposal")
  parser.add_argument("--steps", type=int, default=500)
  parser.add_argument("--snapshots", default="150,300")
  parser.add_argument("--base_lr", type=float, default=None)
  parser.add_argument("--fc8_multiplier", type=float, default=None)
  parser.add_argument("--prior_batches", type=int, default=20)
  parser.add_argument("--num_videos", type=int, default=60)
  parser.add_argument("--seed", type=int, default=1)
  args = parser.parse_args()
  args.backbone = "features"
  os.makedirs(args.work_dir, exist_ok=True)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.builders import input_reader_builder  # pylint: disable=g-import-not-at-top
  from tal_tf.core.standard_fields import InputFields  # pylint: disable=g-import-not-at-top
  from tal_tf.meta_architectures import meta_arch  # pylint: disable=g-import-not-at-top
  from tal_tf.meta_architectures import scnn_meta_arch  # pylint: disable=g-import-not-at-top
  from tal_tf.training import eval_lib  # pylint: disable=g-import-not-at-top

  phase = scnn_meta_arch.PROPOSAL
  config, model, dims, dataset_fn = ablations.build_run("", args)
  cut = config.model.scnn.proposal_score_threshold
  solver = ablations.phase_solver(config, phase, args.base_lr, args.fc8_multiplier)
  print(f"solver {solver}", flush=True)
  splits = {"test": eval_lib.build_eval_dataset(config, model.num_classes),
            "train": input_reader_builder.build(config.train_input_reader, model.num_classes,
                                                is_training=False)}

  @tf.function(reduce_retracing=True)
  def probe(batch):
    predictions = model.predict(batch[InputFields.features], batch[InputFields.num_steps],
                                training=False, phase=phase)
    labels = model.label_windows(predictions["windows"], predictions["sliding_valid"], batch,
                                 tf.cast(batch[InputFields.num_steps], tf.int32))["labels"]
    logits = predictions[f"{phase}_logits"]
    return (tf.nn.softmax(logits)[..., 1], labels, predictions["sliding_valid"],
            logits[..., 1] - logits[..., 0])

  results = {}

  def snapshot(step):
    for split, dataset in splits.items():
      parts = [[], [], []]
      for batch in dataset:
        p_pro, labels, valid, diff = (t.numpy() for t in probe(batch))
        for part, value in zip(parts, (p_pro, labels, diff)):
          part.append(value[valid])
      stats = window_stats(*(np.concatenate(p) for p in parts), cut)
      results[f"{split}@{step}"] = stats
      print(f"{split}@{step} " + json.dumps(stats), flush=True)

  ctx = meta_arch.TrainingContext(dataset_fn, args.work_dir, 0, True, stream_dims=dims)
  model.begin_phase(phase, ctx)
  snapshot(0)
  steps = {int(s) for s in args.snapshots.split(",") if s}
  ablations.train_phase(model, phase, iter(dataset_fn(True, True)), args.steps, solver,
                        lambda msg: print(msg, flush=True),
                        on_step=lambda i: snapshot(i) if i in steps or i == args.steps else None)
  out = os.path.join(args.work_dir, f"proposal_{args.steps}.json")
  with open(out + ".tmp", "w") as f:
    json.dump(dict(solver=solver, steps=args.steps, seed=args.seed, results=results), f,
              indent=1)
  os.replace(out + ".tmp", out)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
