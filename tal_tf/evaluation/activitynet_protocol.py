"""The ActivityNet detection and proposal protocols (host-side numpy), reproduced exactly.

Detection AP of one class (`average_precision_detection`), as ActivityNet's
`compute_average_precision_detection`:
  1. predictions are visited in decreasing score order; ties keep input order;
  2. each prediction walks its own video's ground truth by decreasing tIoU, skips ground truth
     already matched at that threshold, is a true positive at the first unmatched one with
     tIoU >= threshold and a false positive otherwise (also when its video has no ground truth);
  3. precision/recall over the ranked list; AP is all-point interpolated (VOC 2011: precision
     made monotone from the right, summed over the recall steps).
`mean_average_precision` runs it per class (classes come from the ground truth; a class with no
predictions has AP 0) and averages over classes, per threshold and over thresholds.

Proposals (`average_recall_vs_num_proposals`), as ActivityNet's
`average_recall_vs_avg_nr_proposals`: each video's proposals (score-sorted) are truncated to
int(n_v * ratio), ratio = max_avg_nr_proposals * num_videos / total proposals; recall is pooled
over all ground truth at 100 fractions of those truncated lists; AR averages over tIoU.

Tie rules (the reference script uses `argsort()[::-1]`, whose order for equal keys depends on
numpy's sort kind and CPU): equal scores keep input order and, when a prediction has equal tIoU
with several ground truths, the one listed first is tried first. Everything else, including the
floating-point tIoU formula inter / (len_gt + len_pred - inter), follows the reference.

Vectorized across thresholds and within videos: the greedy matching of a video only changes
state when a prediction becomes a true positive, so it jumps from one such event to the next
(at most one per ground truth) instead of visiting every prediction.
"""

import logging

import numpy as np

from tal_tf.core import segment_ops_np
from tal_tf.evaluation import io as eval_io

ACTIVITYNET_TIOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
THUMOS14_TIOU_THRESHOLDS = np.linspace(0.1, 0.7, 7)
PROPOSAL_TIOU_THRESHOLDS = np.linspace(0.5, 1.0, 11)
DEFAULT_AR_AT = (1, 5, 10, 50, 100)
NUM_RECALL_POINTS = 100


def _as_table(values, num_columns, name):
  """Validated float64 [N, num_columns] copy of `values` (an [N, k] table or empty)."""
  table = np.asarray(values, np.float64)
  if table.size == 0:
    return np.zeros((0, num_columns), np.float64)
  if table.ndim != 2 or table.shape[1] != num_columns:
    raise ValueError(f"{name}: expected shape [N, {num_columns}], got {table.shape}")
  if not np.all(np.isfinite(table)):
    bad = np.argwhere(~np.isfinite(table))[0]
    raise ValueError(f"{name}: row {bad[0]} column {bad[1]} is {table[tuple(bad)]}, "
                     "expected a finite number")
  return table


def as_thresholds(tiou_thresholds, name="tiou_thresholds"):
  """Validated float64 [T] tIoU thresholds in [0, 1]."""
  thr = np.atleast_1d(np.asarray(tiou_thresholds, np.float64))
  if thr.ndim != 1 or thr.size == 0:
    raise ValueError(f"{name}: expected a non-empty 1-D list, got {tiou_thresholds!r}")
  if not np.all(np.isfinite(thr)) or np.any(thr < 0) or np.any(thr > 1):
    raise ValueError(f"{name}: expected values in [0, 1], got {thr.tolist()}")
  return thr


def _greedy_match_video(iou, thresholds):
  """True-positive flags [T, P] of one video's score-ordered predictions vs its gt (iou [P,G])."""
  num_preds, num_gt = iou.shape
  num_thr = thresholds.shape[0]
  tp = np.zeros((num_thr, num_preds), bool)
  # Predictions below the loosest threshold for every gt are false positives everywhere and
  # never change the matching state: drop them up front.
  rows = np.flatnonzero(iou.max(axis=1) >= thresholds.min())
  if rows.size == 0:
    return tp
  iou = iou[rows]
  n = rows.size
  # rank[p, g]: position of gt g in prediction p's walk (decreasing tIoU, ties: lower index).
  walk = np.argsort(-iou, axis=1, kind="stable")
  rank = np.empty_like(walk)
  np.put_along_axis(rank, walk, np.broadcast_to(np.arange(num_gt), walk.shape), axis=1)
  candidate = iou[None, :, :] >= thresholds[:, None, None]          # [T, n, G]
  candidate_f = candidate.astype(np.float32)
  available = np.ones((num_thr, num_gt), bool)                      # gt not yet matched
  next_pred = np.zeros(num_thr, np.int64)                           # first unvisited
  pred_range = np.arange(n)
  while True:
    lo = int(next_pred.min())
    # Number of unmatched gt above the threshold, per prediction (batched mat-vec).
    counts = np.matmul(candidate_f[:, lo:, :], available[:, :, None].astype(np.float32))
    hit = (counts[:, :, 0] > 0) & (pred_range[None, lo:] >= next_pred[:, None])
    active = np.flatnonzero(hit.any(axis=1))
    if active.size == 0:
      break
    # The first prediction (in score order) that still has an unmatched gt above the
    # threshold is the next true positive; everything before it was a false positive.
    pred = hit[active].argmax(axis=1) + lo
    usable = candidate[active, pred] & available[active]            # [k, G]
    choice = np.where(usable, rank[pred], num_gt).argmin(axis=1)
    available[active, choice] = False
    tp[active, rows[pred]] = True
    next_pred[active] = pred + 1
    # Thresholds without a hit are finished: park them past the end.
    finished = np.ones(num_thr, bool)
    finished[active] = False
    next_pred[finished] = n
  return tp


def _interpolated_ap(tp, num_positives):
  """All-point interpolated AP [T] (VOC 2011) from ranked true-positive flags tp [T, P]."""
  tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)
  fp_cum = np.cumsum(~tp, axis=1, dtype=np.float64)
  recall = tp_cum / float(num_positives)
  precision = tp_cum / (tp_cum + fp_cum)
  num_thr = tp.shape[0]
  zeros, ones = np.zeros((num_thr, 1)), np.ones((num_thr, 1))
  mprec = np.hstack([zeros, precision, zeros])
  mrec = np.hstack([zeros, recall, ones])
  # Monotone precision: running maximum from the right.
  mprec = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]
  ap = np.zeros(num_thr)
  for t in range(num_thr):
    # Sum only over recall steps, as the reference does (same float summation).
    idx = np.flatnonzero(mrec[t, 1:] != mrec[t, :-1]) + 1
    ap[t] = np.sum((mrec[t, idx] - mrec[t, idx - 1]) * mprec[t, idx])
  return ap


def _group_rows(video):
  """Rows of `video` grouped by value: (unique ids, start offsets, counts, order)."""
  order = np.argsort(video, kind="stable")
  ids, starts, counts = np.unique(video[order], return_index=True, return_counts=True)
  return ids, starts, counts, order


def match_predictions(ground_truth, predictions, tiou_thresholds):
  """True-positive flags [T, P] of predictions [P,4] (video, start, end, score) already in
  ranked order vs ground_truth [G,3] (video, start, end), ActivityNet greedy matching."""
  gt = _as_table(ground_truth, 3, "ground_truth")
  pred = _as_table(predictions, 4, "predictions")
  thr = as_thresholds(tiou_thresholds)
  tp = np.zeros((thr.size, pred.shape[0]), bool)
  if pred.shape[0] == 0 or gt.shape[0] == 0:
    return tp
  g_ids, g_starts, g_counts, g_order = _group_rows(gt[:, 0])
  p_ids, p_starts, p_counts, p_order = _group_rows(pred[:, 0])
  gt_sorted = gt[g_order]
  # Videos with predictions but no ground truth keep tp = False (all false positives).
  where = np.searchsorted(g_ids, p_ids).clip(max=g_ids.size - 1)
  for k in np.flatnonzero(g_ids[where] == p_ids):
    gi = where[k]
    gts = gt_sorted[g_starts[gi]:g_starts[gi] + g_counts[gi], 1:3]
    # Stable grouping keeps ranked order inside the video.
    rows = p_order[p_starts[k]:p_starts[k] + p_counts[k]]
    iou = segment_ops_np.pairwise_tiou(pred[rows, 1:3], gts)
    tp[:, rows] = _greedy_match_video(iou, thr)
  return tp


def average_precision_detection(ground_truth, predictions, tiou_thresholds):
  """AP [T] of one class: ground_truth [G,3] (video index, t-start, t-end), predictions [P,4]
  (video index, t-start, t-end, score); 0 when there are no predictions or no ground truth."""
  gt = _as_table(ground_truth, 3, "ground_truth")
  pred = _as_table(predictions, 4, "predictions")
  thr = as_thresholds(tiou_thresholds)
  if pred.shape[0] == 0 or gt.shape[0] == 0:
    # No ground truth: recall is undefined; report 0 rather than NaN (only reachable through
    # this low-level call: mean_average_precision takes its classes from the ground truth).
    return np.zeros(thr.size)
  order = np.argsort(-pred[:, 3], kind="mergesort")   # decreasing score, ties: input order
  tp = match_predictions(gt, pred[order], thr)
  return _interpolated_ap(tp, gt.shape[0])


def _class_list(gt_labels, class_names):
  """Evaluated classes (from the ground truth, ordered by `class_names` when given)."""
  present = set(gt_labels.tolist())
  if class_names is None:
    try:
      return sorted(present), []
    except TypeError:   # mixed label types: keep first-appearance order
      return list(dict.fromkeys(gt_labels.tolist())), []
  class_names = list(class_names)
  missing = [c for c in class_names if c not in present]
  extra = [c for c in dict.fromkeys(gt_labels.tolist()) if c not in set(class_names)]
  if extra:
    logging.warning("ground-truth labels not in class_names are not evaluated: %s", extra)
  return [c for c in class_names if c in present], missing


def _label_to_class(labels, classes):
  """Class index [N] per label of labels [N] (-1 for labels outside `classes`)."""
  index = {c: i for i, c in enumerate(classes)}
  if labels.size == 0:
    return np.zeros(0, np.int64)
  uniq, inverse = _unique_inverse(labels)
  mapped = np.array([index.get(u, -1) for u in uniq], np.int64)
  return mapped[inverse]


def _unique_inverse(labels):
  """(unique labels, inverse [N]) for an object array of hashable labels (str, int, None)."""
  values = labels.tolist()
  uniq = list(dict.fromkeys(values))
  lookup = {u: i for i, u in enumerate(uniq)}
  return uniq, np.array([lookup[v] for v in values], np.int64)


def mean_average_precision(gt_by_video, results_by_video,
                           tiou_thresholds=ACTIVITYNET_TIOU_THRESHOLDS, class_names=None):
  """ActivityNet detection mAP of {video: {segments [G,2], labels [G]}} vs {video: {segments
  [P,2], labels [P], scores [P]}} -> dict(ap [T,C], mAP [T], average_mAP, per_class_ap, ...).

  Classes come from the ground truth (restricted to and ordered by `class_names` if given;
  listed classes without ground truth are reported in 'classes_without_ground_truth' and not
  averaged). Predictions on videos absent from `gt_by_video` are false positives of their
  class. Predictions whose label is not an evaluated class are ignored (counted in
  'num_ignored_predictions'), since no ground truth of that class exists to measure them.
  """
  thr = as_thresholds(tiou_thresholds)
  video_index = {}
  g_vid, g_seg, g_lab, _ = eval_io.flatten_by_video(gt_by_video, video_index, False,
                                                    "ground truth")
  p_vid, p_seg, p_lab, p_score = eval_io.flatten_by_video(results_by_video, video_index, True,
                                                          "results")
  classes, missing = _class_list(g_lab, class_names)
  g_cls = _label_to_class(g_lab, classes)
  p_cls = _label_to_class(p_lab, classes)
  num_classes = len(classes)
  ap = np.zeros((thr.size, num_classes))
  g_table = np.column_stack([g_vid, g_seg]) if g_vid.size else np.zeros((0, 3))
  p_table = np.column_stack([p_vid, p_seg, p_score]) if p_vid.size else np.zeros((0, 4))
  g_groups = np.argsort(g_cls, kind="stable")
  p_groups = np.argsort(p_cls, kind="stable")   # stable: input order kept within a class
  g_bounds = np.searchsorted(g_cls[g_groups], np.arange(num_classes + 1))
  p_bounds = np.searchsorted(p_cls[p_groups], np.arange(num_classes + 1))
  for c in range(num_classes):
    g_rows = g_groups[g_bounds[c]:g_bounds[c + 1]]
    p_rows = p_groups[p_bounds[c]:p_bounds[c + 1]]
    ap[:, c] = average_precision_detection(g_table[g_rows], p_table[p_rows], thr)
  return detection_metrics("activitynet", thr, classes, ap, g_cls, p_cls, len(gt_by_video),
                           missing)


def detection_metrics(protocol, thresholds, classes, ap, g_cls, p_cls, num_videos, missing):
  """Packs per-class AP [T, C] and the class index of each ground truth / prediction into the
  metrics dict shared by both protocols (mAP per threshold, average, per-class AP, counts)."""
  num_classes = len(classes)
  num_ignored = int(np.sum(p_cls < 0))
  if num_ignored:
    logging.info("%d predictions have labels outside the evaluated classes and are ignored",
                 num_ignored)
  # No class at all (empty ground truth): mAP is reported as 0 rather than NaN.
  m_ap = ap.mean(axis=1) if num_classes else np.zeros(thresholds.size)
  return {
      "protocol": protocol,
      "tiou_thresholds": thresholds,
      "class_names": list(classes),
      "ap": ap,
      "mAP": m_ap,
      "average_mAP": float(m_ap.mean()),
      "per_class_ap": {c: ap[:, i] for i, c in enumerate(classes)},
      "num_ground_truth": np.bincount(g_cls[g_cls >= 0], minlength=num_classes),
      "num_predictions": np.bincount(p_cls[p_cls >= 0], minlength=num_classes),
      "num_ignored_predictions": num_ignored,
      "num_videos": int(num_videos),
      "classes_without_ground_truth": missing,
  }


def _first_hits(tiou, thresholds):
  """Index [T, G] of the first column with tiou [G, N] >= threshold (N if none)."""
  if tiou.shape[1] == 0:   # every proposal truncated away
    return np.zeros((thresholds.size, tiou.shape[0]), np.int64)
  hits = tiou[None, :, :] >= thresholds[:, None, None]
  first = hits.argmax(axis=2)
  return np.where(hits.any(axis=2), first, tiou.shape[1])


def average_recall_vs_num_proposals(ground_truth, proposals,
                                    tiou_thresholds=PROPOSAL_TIOU_THRESHOLDS,
                                    max_avg_nr_proposals=100, ar_at=DEFAULT_AR_AT):
  """AR vs average number of proposals per video, as ActivityNet: ground_truth [G,3] (video,
  start, end), proposals [P,4] (video, start, end, score) -> dict(recall [T,100],
  average_recall [100], avg_nr_proposals [100], ar_at_an {AN: AR}, auc).

  Only videos with ground truth are evaluated; as in the reference, the truncation ratio
  max_avg_nr_proposals * num_videos / P counts all P proposals, including those on videos
  without ground truth. max_avg_nr_proposals=None uses P / num_videos. AR@AN is read off the
  curve (linear interpolation between its points; NaN outside it), auc = area under the
  AR-AN curve / its last AN (a fraction; the reference prints it x100).
  """
  gt = _as_table(ground_truth, 3, "ground_truth")
  props = _as_table(proposals, 4, "proposals")
  thr = as_thresholds(tiou_thresholds)
  g_ids, g_starts, g_counts, g_order = _group_rows(gt[:, 0])
  num_videos = g_ids.size
  total_proposals = props.shape[0]
  if max_avg_nr_proposals is None:
    max_avg = float(total_proposals) / num_videos if num_videos else 0.0
  else:
    max_avg = float(max_avg_nr_proposals)
    if not max_avg > 0:
      raise ValueError(f"max_avg_nr_proposals: expected > 0, got {max_avg_nr_proposals!r}")
  fractions = np.arange(1, NUM_RECALL_POINTS + 1) / 100.0
  recall = np.zeros((thr.size, NUM_RECALL_POINTS))
  if num_videos == 0 or total_proposals == 0:
    # Nothing to retrieve or nothing retrieved: recall 0 everywhere (the reference divides
    # by zero here).
    return _recall_result(thr, recall, fractions * max_avg, ar_at)
  ratio = max_avg * float(num_videos) / total_proposals
  gt_sorted = gt[g_order]
  p_ids, p_starts, p_counts, p_order = _group_rows(props[:, 0])
  where = np.searchsorted(p_ids, g_ids).clip(max=max(p_ids.size - 1, 0))
  first_hits, columns, owner = [], np.zeros(num_videos, np.int64), []
  total_kept = 0
  for v in range(num_videos):
    gts = gt_sorted[g_starts[v]:g_starts[v] + g_counts[v], 1:3]
    if p_ids.size and p_ids[where[v]] == g_ids[v]:
      rows = p_order[p_starts[where[v]]:p_starts[where[v]] + p_counts[where[v]]]
      video_props = props[rows]
      video_props = video_props[np.argsort(-video_props[:, 3], kind="mergesort")]
      kept = min(int(video_props.shape[0] * ratio), video_props.shape[0])
      total_kept += kept
      tiou = segment_ops_np.pairwise_tiou(gts, video_props[:kept, 1:3])         # [G_v, kept]
    else:
      # The reference scores a video without proposals as one proposal of tIoU 0.
      tiou = np.zeros((gts.shape[0], 1))
    columns[v] = tiou.shape[1]
    first_hits.append(_first_hits(tiou, thr))
    owner.append(np.full(gts.shape[0], v))
  if total_kept == 0:
    return _recall_result(thr, recall, fractions * max_avg, ar_at)
  first_hits = np.concatenate(first_hits, axis=1)                      # [T, G]
  owner = np.concatenate(owner)
  # Same float expressions as the reference so truncations agree bit for bit.
  pcn = np.arange(1, NUM_RECALL_POINTS + 1) / 100.0 * (
      max_avg * float(num_videos) / total_kept)
  retrieved = np.minimum((columns[:, None] * pcn[None, :]).astype(np.int64),
                         columns[:, None])                             # [V, 100]
  matched = first_hits[:, :, None] < retrieved[owner][None, :, :]      # [T, G, 100]
  recall = matched.sum(axis=1) / float(gt.shape[0])
  avg_nr = pcn * (float(total_kept) / num_videos)
  return _recall_result(thr, recall, avg_nr, ar_at)


def _recall_result(thr, recall, avg_nr, ar_at):
  """Packs the AR@AN outputs (see average_recall_vs_num_proposals)."""
  average_recall = recall.mean(axis=0)
  ar_at_an = {}
  for an in (ar_at or ()):
    # Tolerate float noise on the grid's ends (e.g. 99.99999999999999 for AN = 100).
    lo, hi = avg_nr[0] * (1 - 1e-9), avg_nr[-1] * (1 + 1e-9)
    ar_at_an[an] = (float(np.interp(an, avg_nr, average_recall)) if lo <= an <= hi
                    else float("nan"))
  trapezoid = getattr(np, "trapezoid", None) or np.trapz   # renamed in numpy 2
  auc = float(trapezoid(average_recall, avg_nr) / avg_nr[-1]) if avg_nr[-1] > 0 else 0.0
  return {
      "protocol": "activitynet_proposals",
      "tiou_thresholds": thr,
      "recall": recall,
      "average_recall": average_recall,
      "avg_nr_proposals": avg_nr,
      "ar_at_an": ar_at_an,
      "auc": auc,
  }


def average_recall_metrics(gt_by_video, results_by_video,
                           tiou_thresholds=PROPOSAL_TIOU_THRESHOLDS,
                           max_avg_nr_proposals=100, ar_at=DEFAULT_AR_AT):
  """AR@AN of class-agnostic {video: {segments, scores}} proposals vs {video: {segments}}
  ground truth (labels ignored) -> the dict of `average_recall_vs_num_proposals`."""
  video_index = {}
  g_vid, g_seg, _, _ = eval_io.flatten_by_video(gt_by_video, video_index, False,
                                                "ground truth")
  p_vid, p_seg, _, p_score = eval_io.flatten_by_video(results_by_video, video_index, True,
                                                      "results")
  g_table = np.column_stack([g_vid, g_seg]) if g_vid.size else np.zeros((0, 3))
  p_table = np.column_stack([p_vid, p_seg, p_score]) if p_vid.size else np.zeros((0, 4))
  out = average_recall_vs_num_proposals(g_table, p_table, tiou_thresholds,
                                        max_avg_nr_proposals, ar_at)
  out["num_videos"] = int(np.unique(g_vid).size)
  out["num_ground_truth"] = int(g_vid.size)
  out["num_proposals"] = int(p_vid.size)
  return out
