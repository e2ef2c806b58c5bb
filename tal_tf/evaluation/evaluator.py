"""One evaluator object for training-time evaluation: detection mAP + proposal AR@AN.

Wraps the protocol modules so the training loop, the demo and the evaluation CLI share one
implementation. Inputs are per-video dicts `{video_id: {"segments": [N, 2] seconds,
"labels": [N] names, "scores": [N]}}` (ground truth without scores; proposals without labels).
"""

import numpy as np

from tal_tf.evaluation import activitynet_protocol
from tal_tf.evaluation import metrics_table
from tal_tf.evaluation import thumos14_protocol
from tal_tf.evaluation import visualization

PROTOCOLS = ("activitynet", "thumos14")


class DetectionEvaluator:
  """Computes detection mAP (per tIoU, average, per class) and proposal AR@AN."""

  def __init__(self, tiou_thresholds=tuple(activitynet_protocol.THUMOS14_TIOU_THRESHOLDS),
               recall_tiou_thresholds=tuple(activitynet_protocol.PROPOSAL_TIOU_THRESHOLDS),
               average_number_of_proposals=(10, 50, 100), protocol="activitynet"):
    if protocol not in PROTOCOLS:
      raise ValueError(f"eval_config.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    self.tiou_thresholds = activitynet_protocol.as_thresholds(tiou_thresholds)
    self.recall_tiou_thresholds = activitynet_protocol.as_thresholds(
        recall_tiou_thresholds, "recall_tiou_thresholds")
    ans = sorted(int(a) for a in average_number_of_proposals)
    if not ans or ans[0] <= 0:
      raise ValueError(f"average_number_of_proposals must be positive, got {ans}")
    self.average_number_of_proposals = tuple(ans)
    self.protocol = protocol

  def evaluate(self, groundtruth, results, proposals=None, class_names=None,
               results_per_threshold=None):
    """Metrics dict {'detection': ..., 'proposals': ...} (proposals only if given).

    results_per_threshold: optional {theta: results} for thresholds whose mAP is scored on
    their own detections (a model post-processed per threshold); other thresholds use
    `results`. The per-threshold rows are merged with `merge_detection_metrics`.
    """

    def score(res, thresholds):
      if self.protocol == "thumos14":
        return thumos14_protocol.thumos14_mean_average_precision(
            groundtruth, res, thresholds, class_names=class_names)
      return activitynet_protocol.mean_average_precision(
          groundtruth, res, thresholds, class_names=class_names)

    detection = detection_metrics_per_threshold(score, self.tiou_thresholds, results,
                                                results_per_threshold)
    metrics = {"detection": detection}
    if proposals is not None:
      metrics["proposals"] = activitynet_protocol.average_recall_metrics(
          groundtruth, proposals, self.recall_tiou_thresholds,
          max_avg_nr_proposals=self.average_number_of_proposals[-1],
          ar_at=self.average_number_of_proposals)
    return metrics

  def summary_images(self, metrics, groundtruth, results, num_videos=4):
    """{name: uint8 [H, W, 3]}: per-class AP bars, AR-AN curve, gt-vs-detection timelines."""
    # The videos with the most ground truth make the most informative timelines.
    ranked = sorted(groundtruth, key=lambda v: (-len(groundtruth[v]["segments"]), v))
    return visualization.evaluation_images(metrics, groundtruth, results,
                                           ranked[:max(int(num_videos), 0)])


def detection_metrics_per_threshold(score_fn, thresholds, results, results_per_threshold=None):
  """Detection metrics at `thresholds`, each scored on its own results where given.

  score_fn(results, thresholds) -> detection metrics (either protocol); thresholds sharing
  one results object are scored together. Without `results_per_threshold` this is exactly
  score_fn(results, thresholds).
  """
  thresholds = np.asarray(thresholds, np.float64)
  per = {float(t): r for t, r in (results_per_threshold or {}).items()}
  groups = {}   # id(results) -> (results, [threshold indices]), in threshold order
  for i, t in enumerate(thresholds):
    res = _lookup_threshold(per, t, results)
    groups.setdefault(id(res), (res, []))[1].append(i)
  if len(groups) == 1:
    res = next(iter(groups.values()))[0]
    return score_fn(res, thresholds)
  return merge_detection_metrics(
      [(idx, score_fn(res, thresholds[idx])) for res, idx in groups.values()], thresholds)


def _lookup_threshold(per, threshold, default):
  for t, res in per.items():
    if abs(t - threshold) < 1e-6:
      return res
  return default


def merge_detection_metrics(parts, thresholds):
  """One detection metrics dict from [(threshold indices, metrics at those thresholds)].

  AP rows go back to their thresholds' places; mAP, the average and per-class AP are
  recomputed from them. Counts (predictions per class, ignored predictions) are those of the
  first threshold's detections: with per-threshold post-processing they differ by threshold.
  """
  parts = sorted(parts, key=lambda p: min(p[0]))
  first = parts[0][1]
  classes = list(first["class_names"])
  ap = np.zeros((len(thresholds), len(classes)), np.float64)
  for idx, part in parts:
    if list(part["class_names"]) != classes:
      raise ValueError("merge_detection_metrics: parts evaluate different classes")
    ap[np.asarray(idx)] = np.asarray(part["ap"], np.float64)
  merged = dict(first)
  m_ap = ap.mean(axis=1) if classes else np.zeros(len(thresholds))
  merged.update(tiou_thresholds=np.asarray(thresholds, np.float64), ap=ap, mAP=m_ap,
                average_mAP=float(m_ap.mean()),
                per_class_ap={c: ap[:, i] for i, c in enumerate(classes)})
  return merged


def scalar_metrics(metrics):
  """Flat {name: float} for TensorBoard."""
  return metrics_table.metrics_to_scalars(metrics)


def format_table(metrics):
  """Readable text table of mAP per threshold (+ average) and AR@AN."""
  return metrics_table.format_metrics_table(metrics)


def to_json(metrics):
  """JSON-ready copy of a metrics dict."""
  return metrics_table.metrics_to_json_dict(metrics)


def as_arrays(segments, labels=None, scores=None):
  """Per-video dict entry from lists (helper for callers building inputs by hand)."""
  entry = {"segments": np.asarray(segments, np.float64).reshape(-1, 2)}
  if labels is not None:
    entry["labels"] = np.asarray(labels)
  if scores is not None:
    entry["scores"] = np.asarray(scores, np.float64)
  return entry
