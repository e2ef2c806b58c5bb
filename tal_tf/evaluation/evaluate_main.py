r"""Evaluates a results JSON against an annotation JSON; prints a table, writes metrics JSON.

Detection mAP (default)::

  python -m tal_tf.evaluation.evaluate_main --annotations=thumos14.json \
      --results=results.json --dataset=thumos14 --output_json=metrics.json

THUMOS14 toolkit rules with the official Ambiguous list::

  python -m tal_tf.evaluation.evaluate_main --annotations=thumos14.json \
      --results=results.json --protocol=thumos14 \
      --ambiguous_annotations=official_txt/annotation_test

Proposals (AR@AN, labels ignored)::

  python -m tal_tf.evaluation.evaluate_main --annotations=thumos14.json \
      --results=proposals.json --proposals

Per-threshold detections (a model that post-processes per evaluated tIoU, e.g. S-CNN's NMS at
theta - 0.1; training's evaluation writes them as detections_step_<N>_tiou<theta>.json)::

  python -m tal_tf.evaluation.evaluate_main --annotations=thumos14.json \
      --results=detections_step_N.json \
      --threshold_results=0.5=detections_step_N_tiou0.5.json,0.7=detections_step_N_tiou0.7.json

mAP at a listed theta is scored on its file; the other thresholds on --results.

`--dataset` picks defaults: thumos14 -> subset 'test', mAP at tIoU 0.1:0.1:0.7, AR@AN at
0.5:0.05:1.0; activitynet -> subset 'validation', mAP at 0.5:0.05:0.95 (0.5 / 0.75 / 0.95 and
the average reported), AR@AN at 0.5:0.05:0.95. `--subset=all` evaluates every video.
Ground truth labelled 'Ambiguous' is never a class: the thumos14 protocol uses it as
Ambiguous segments, the activitynet protocol drops it.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from tal_tf.evaluation import activitynet_protocol
from tal_tf.evaluation import evaluator
from tal_tf.evaluation import io as eval_io
from tal_tf.evaluation import metrics_table
from tal_tf.evaluation import thumos14_protocol

DATASET_PRESETS = {
    "thumos14": {
        "subset": "test",
        "tiou_thresholds": np.linspace(0.1, 0.7, 7),
        "reported_thresholds": np.linspace(0.1, 0.7, 7),
        "recall_tiou_thresholds": np.linspace(0.5, 1.0, 11),
    },
    "activitynet": {
        "subset": "validation",
        "tiou_thresholds": np.linspace(0.5, 0.95, 10),
        "reported_thresholds": np.array([0.5, 0.75, 0.95]),
        "recall_tiou_thresholds": np.linspace(0.5, 0.95, 10),
    },
}
PROTOCOLS = ("activitynet", "thumos14")

FLAGS = flags.FLAGS


def define_flags():
  """Registers the CLI flags (idempotent, so tests can import this module repeatedly)."""
  if "annotations" in FLAGS:
    return
  flags.DEFINE_string("annotations", None, "Ground-truth annotation JSON ({'database': ...}).")
  flags.DEFINE_string("results", None, "Results JSON ({'results': {video: [...]}}).")
  flags.DEFINE_string("subset", None, "Subset to evaluate (case-insensitive); default from "
                      "--dataset; 'all' = every video.")
  flags.DEFINE_enum("protocol", "activitynet", list(PROTOCOLS), "Detection matching rules.")
  flags.DEFINE_enum("dataset", "thumos14", list(DATASET_PRESETS),
                    "Preset for the subset and thresholds.")
  flags.DEFINE_list("tiou_thresholds", None, "Comma-separated tIoU thresholds (overrides the "
                    "preset; for --proposals the recall thresholds).")
  flags.DEFINE_boolean("proposals", False, "Evaluate AR@AN of class-agnostic proposals.")
  flags.DEFINE_integer("max_avg_nr_proposals", 100, "Largest average number of proposals per "
                       "video on the AR-AN curve.")
  flags.DEFINE_list("ar_at", ["1", "5", "10", "50", "100"], "AN values at which AR is reported.")
  flags.DEFINE_string("ambiguous_annotations", None, "THUMOS14 Ambiguous segments: annotation "
                      "directory (Ambiguous_<subset>.txt), one .txt file or an annotation JSON.")
  flags.DEFINE_list("threshold_results", None, "theta=results.json pairs: mAP@theta from that "
                    "file (per-threshold post-processing) instead of --results.")
  flags.DEFINE_string("output_json", None, "Where to write the metrics JSON.")
  flags.DEFINE_boolean("per_class", False, "Also print per-class AP.")


def parse_thresholds(values, name="tiou_thresholds"):
  """['0.1', '0.2'] or '0.1,0.2' -> float64 [T] in [0, 1]."""
  if isinstance(values, str):
    values = [v for v in values.split(",") if v.strip()]
  try:
    thr = [float(v) for v in values]
  except ValueError:
    raise ValueError(f"--{name}: expected comma-separated numbers, got {values!r}") from None
  return activitynet_protocol.as_thresholds(thr, name=f"--{name}")


def parse_threshold_results(values):
  """['0.5=a.json', ...] or '0.5=a.json,...' -> {0.5: 'a.json'} (thresholds in (0, 1])."""
  if isinstance(values, str):
    values = [v for v in values.split(",") if v.strip()]
  out = {}
  for item in values or ():
    theta, sep, path = item.partition("=")
    try:
      t = float(theta)
    except ValueError:
      t = None
    if not sep or not path or t is None or not 0.0 < t <= 1.0:
      raise ValueError(f"--threshold_results: expected theta=path with theta in (0, 1], got "
                       f"{item!r}")
    out[t] = path
  return out


def run_evaluation(annotations, results, subset=None, protocol="activitynet",
                   dataset="thumos14", tiou_thresholds=None, proposals=False,
                   ambiguous_annotations=None, max_avg_nr_proposals=100,
                   ar_at=activitynet_protocol.DEFAULT_AR_AT, threshold_results=None):
  """Loads both files and evaluates -> (metrics dict, reported thresholds or None).

  threshold_results: optional {theta: results path}: mAP@theta from that file instead.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
  if dataset not in DATASET_PRESETS:
    raise ValueError(f"dataset: expected one of {sorted(DATASET_PRESETS)}, got {dataset!r}")
  preset = DATASET_PRESETS[dataset]
  if subset is None:
    subset = preset["subset"]
  if subset.lower() == "all" or subset == "":
    subset = None
  annotation_data = eval_io.read_json(annotations)
  gt = eval_io.parse_annotations(annotation_data, path=annotations, subset=subset)
  known_labels = None
  if not proposals:
    every_video = gt if subset is None else eval_io.parse_annotations(annotation_data,
                                                                      path=annotations)
    known_labels = {l for v in every_video.values() for l in v[eval_io.LABELS]}
  res = eval_io.load_results(results, require_labels=not proposals)
  # Raises when the results name none of the videos (or classes); counts partial mismatches.
  coverage = eval_io.check_results_match_annotations(gt, res, annotations, results, subset,
                                                     known_labels)
  gt, ambiguous = eval_io.split_ambiguous(gt)
  logging.info("loaded %d videos (%d segments) from %s, %d videos (%d entries) from %s",
               len(gt), sum(len(v[eval_io.SEGMENTS]) for v in gt.values()), annotations,
               len(res), sum(len(v[eval_io.SCORES]) for v in res.values()), results)
  if proposals:
    thr = (preset["recall_tiou_thresholds"] if tiou_thresholds is None
           else parse_thresholds(tiou_thresholds))
    metrics = activitynet_protocol.average_recall_metrics(
        gt, res, thr, max_avg_nr_proposals=max_avg_nr_proposals, ar_at=tuple(ar_at))
    metrics["annotations"], metrics["results"], metrics["subset"] = annotations, results, subset
    metrics.update(coverage)
    return metrics, None
  thr = preset["tiou_thresholds"] if tiou_thresholds is None else parse_thresholds(
      tiou_thresholds)
  reported = preset["reported_thresholds"] if tiou_thresholds is None else thr
  if protocol == "activitynet":
    if ambiguous:
      logging.info("activitynet protocol: %d 'Ambiguous' ground-truth segments dropped",
                   sum(len(a) for a in ambiguous.values()))
    score = lambda r, t: activitynet_protocol.mean_average_precision(gt, r, t)
  else:
    if ambiguous_annotations:
      extra = eval_io.load_ambiguous_segments(ambiguous_annotations, subset=subset)
      for video_id, segs in extra.items():
        ambiguous[video_id] = (np.concatenate([ambiguous[video_id], segs])
                               if video_id in ambiguous else segs)
    elif not ambiguous:
      logging.warning("thumos14 protocol without Ambiguous segments: pass "
                      "--ambiguous_annotations to ignore detections on them, as the toolkit")
    score = lambda r, t: thumos14_protocol.thumos14_mean_average_precision(gt, r, t, ambiguous)
  per_threshold = {}
  for theta, path in (threshold_results or {}).items():
    if not np.any(np.abs(thr - theta) < 1e-6):
      raise ValueError(f"--threshold_results: {theta} is not an evaluated threshold "
                       f"({', '.join(f'{t:g}' for t in thr)})")
    per_threshold[theta] = eval_io.load_results(path, require_labels=True)
    eval_io.check_results_match_annotations(gt, per_threshold[theta], annotations, path, subset)
  metrics = evaluator.detection_metrics_per_threshold(score, thr, res, per_threshold)
  metrics["annotations"], metrics["results"], metrics["subset"] = annotations, results, subset
  metrics["reported_thresholds"] = np.asarray(reported)
  metrics.update(coverage)
  return metrics, reported


def main(argv):
  """CLI entry point (absl): evaluate, print the table, write --output_json."""
  del argv
  if not FLAGS.annotations or not FLAGS.results:
    raise app.UsageError("--annotations and --results are required")
  try:
    ar_at = [float(a) if "." in a else int(a) for a in FLAGS.ar_at]
  except ValueError:
    raise app.UsageError(f"--ar_at: expected numbers, got {FLAGS.ar_at}") from None
  metrics, reported = run_evaluation(
      FLAGS.annotations, FLAGS.results, subset=FLAGS.subset, protocol=FLAGS.protocol,
      dataset=FLAGS.dataset, tiou_thresholds=FLAGS.tiou_thresholds, proposals=FLAGS.proposals,
      ambiguous_annotations=FLAGS.ambiguous_annotations,
      max_avg_nr_proposals=FLAGS.max_avg_nr_proposals, ar_at=ar_at,
      threshold_results=parse_threshold_results(FLAGS.threshold_results or []))
  print("\n".join([metrics_table.format_metrics_table(metrics, per_class=FLAGS.per_class,
                                                     reported_thresholds=reported)]
                  + eval_io.input_notes(metrics)))
  sys.stdout.flush()
  if FLAGS.output_json:
    metrics_table.write_metrics_json(metrics, FLAGS.output_json)
    logging.info("metrics written to %s", FLAGS.output_json)
  return 0


define_flags()

if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
