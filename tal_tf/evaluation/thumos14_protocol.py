"""The THUMOS14 detection protocol (host-side numpy), as the official toolkit computes it.

Rules of `TH14evalDet.m` / `TH14eventdetpr` (THUMOS14 evalkit, 2015-09-30), per class and
per tIoU threshold, implemented here:
  1. Videos are the union of those with ground truth and those with detections, visited in
     sorted video-name order (the wrappers below index videos by sorted id).
  2. In each video the class's detections are sorted by decreasing score (stable: ties keep
     input order).
  3. Ground-truth-driven matching: ground truths are visited in their listed order; each takes,
     among the still unmatched detections, the one with the largest overlap (first in score
     order on ties) and matches it only if that overlap is strictly greater than the threshold.
  4. Overlap = intersection / (max(end) - min(start)) when the intersection is > 0, else 0
     (the toolkit's `intervaloverlapvalseconds`; equals tIoU for overlapping segments).
  5. 'Ambiguous' segments: a detection that is NOT matched and overlaps (intersection > 0) any
     Ambiguous segment of its video is removed from the ranked list (neither TP nor FP).
     Matched detections count as true positives even if they overlap an Ambiguous segment:
     the toolkit drops such detections from the false-positive list only, after matching.
  6. The remaining detections of all videos (video order, then score order) are sorted by
     decreasing score (stable); precision at rank k = TP / (TP + FP) over the first k.
  7. AP = sum of the precision at the ranks of true positives / number of ground truths of
     the class (non-interpolated). A class without detections has AP 0.
mAP is the mean over classes, which come from the ground truth (the toolkit's detclasslist);
detections of other classes are ignored, as the toolkit ignores unknown class ids.
"""

import numpy as np

from tal_tf.core import segment_ops_np
from tal_tf.evaluation import activitynet_protocol
from tal_tf.evaluation import io as eval_io

THUMOS14_TIOU_THRESHOLDS = activitynet_protocol.THUMOS14_TIOU_THRESHOLDS


def thumos14_overlap_matrix(a, b):
  """Toolkit overlap [N, M] of segments a [N,2] vs b [M,2]: the toolkit divides the
  intersection by the hull (max end - min start), which equals the union whenever they
  intersect and is 0 otherwise, i.e. the tIoU."""
  return segment_ops_np.pairwise_tiou(a, b)


def _intersects_any(segments, others):
  """[N] True where segments [N,2] intersect (length > 0) any of others [M,2]."""
  if others.shape[0] == 0 or segments.shape[0] == 0:
    return np.zeros(segments.shape[0], bool)
  return (segment_ops_np.intersection(segments, others) > 0).any(axis=1)


def thumos14_average_precision(ground_truth, predictions, tiou_thresholds, ambiguous=None):
  """AP [T] of one class, THUMOS14 toolkit rules: ground_truth [G,3] (video index, start, end),
  predictions [P,4] (video index, start, end, score), ambiguous [A,3] (video index, start,
  end) segments whose overlapping unmatched detections are dropped."""
  gt = activitynet_protocol._as_table(ground_truth, 3, "ground_truth")
  pred = activitynet_protocol._as_table(predictions, 4, "predictions")
  amb = activitynet_protocol._as_table(
      np.zeros((0, 3)) if ambiguous is None else ambiguous, 3, "ambiguous")
  thr = activitynet_protocol.as_thresholds(tiou_thresholds)
  num_thr = thr.size
  if pred.shape[0] == 0 or gt.shape[0] == 0:
    # The toolkit asserts at least one ground truth per class; with none, report 0.
    return np.zeros(num_thr)
  gt_groups = _split_by_video(gt)
  amb_groups = _split_by_video(amb)
  confs, tps, keeps = [], [], []
  for video, rows in _split_by_video(pred, return_rows=True).items():  # sorted by video
    det = pred[rows]
    det = det[np.argsort(-det[:, 3], kind="mergesort")]
    free = np.ones((num_thr, det.shape[0]), bool)
    gts = gt_groups.get(video)
    if gts is not None:
      ov = thumos14_overlap_matrix(gts[:, 1:3], det[:, 1:3])           # [G_v, D]
      arange_t = np.arange(num_thr)
      for k in range(ov.shape[0]):
        # Unmatched detections only; -1 never exceeds a threshold >= 0.
        values = np.where(free, ov[k][None, :], -1.0)                  # [T, D]
        best = values.argmax(axis=1)                                   # first max
        hit = values[arange_t, best] > thr
        free[arange_t[hit], best[hit]] = False
    ambs = amb_groups.get(video)
    near_ambiguous = _intersects_any(det[:, 1:3], ambs[:, 1:3] if ambs is not None
                                     else np.zeros((0, 2)))
    confs.append(det[:, 3])
    tps.append(~free)
    keeps.append(~free | ~near_ambiguous[None, :])
  conf = np.concatenate(confs)
  tp_all = np.concatenate(tps, axis=1)
  keep_all = np.concatenate(keeps, axis=1)
  order = np.argsort(-conf, kind="mergesort")
  ap = np.zeros(num_thr)
  for t in range(num_thr):
    ranked_keep = keep_all[t, order]
    tp = tp_all[t, order][ranked_keep]
    tp_cum = np.cumsum(tp, dtype=np.float64)
    fp_cum = np.cumsum(~tp, dtype=np.float64)
    precision = tp_cum / (tp_cum + fp_cum)
    ap[t] = np.sum(precision[tp]) / gt.shape[0]
  return ap


def _split_by_video(table, return_rows=False):
  """{video index: rows of table (or their indices)}, videos ascending, rows in input order."""
  if table.shape[0] == 0:
    return {}
  order = np.argsort(table[:, 0], kind="stable")
  ids, starts = np.unique(table[order, 0], return_index=True)
  bounds = list(starts) + [table.shape[0]]
  out = {}
  for i, video in enumerate(ids):
    rows = order[bounds[i]:bounds[i + 1]]
    out[video] = rows if return_rows else table[rows]
  return out


def thumos14_mean_average_precision(gt_by_video, results_by_video,
                                    tiou_thresholds=THUMOS14_TIOU_THRESHOLDS,
                                    ambiguous_by_video=None, class_names=None):
  """THUMOS14-toolkit mAP of {video: {segments, labels}} vs {video: {segments, labels,
  scores}} with optional {video: [A,2]} Ambiguous segments -> dict like
  activitynet_protocol.mean_average_precision (ap [T,C], mAP [T], average_mAP, ...).

  Ground truth labelled 'Ambiguous' (any case) is moved to the ambiguous set, never a class.
  """
  thr = activitynet_protocol.as_thresholds(tiou_thresholds)
  gt_by_video, amb_from_gt = eval_io.split_ambiguous(gt_by_video)
  ambiguous = {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in amb_from_gt.items()}
  for video_id, segs in (ambiguous_by_video or {}).items():
    segs = np.asarray(segs, np.float64).reshape(-1, 2)
    ambiguous[video_id] = (np.concatenate([ambiguous[video_id], segs])
                           if video_id in ambiguous else segs)
  # The toolkit visits videos in sorted name order: index them that way so that
  # cross-video score ties resolve as it does.
  all_ids = set(gt_by_video) | set(results_by_video) | set(ambiguous)
  try:
    ordered = sorted(all_ids)
  except TypeError:
    ordered = sorted(all_ids, key=str)
  video_index = {v: i for i, v in enumerate(ordered)}
  g_vid, g_seg, g_lab, _ = eval_io.flatten_by_video(gt_by_video, video_index, False,
                                                    "ground truth")
  p_vid, p_seg, p_lab, p_score = eval_io.flatten_by_video(results_by_video, video_index, True,
                                                          "results")
  amb_rows = [np.column_stack([np.full(len(s), video_index[v], np.float64), s])
              for v, s in ambiguous.items() if len(s)]
  amb_table = np.concatenate(amb_rows) if amb_rows else np.zeros((0, 3))
  classes, missing = activitynet_protocol._class_list(g_lab, class_names)
  g_cls = activitynet_protocol._label_to_class(g_lab, classes)
  p_cls = activitynet_protocol._label_to_class(p_lab, classes)
  g_table = np.column_stack([g_vid, g_seg]) if g_vid.size else np.zeros((0, 3))
  p_table = np.column_stack([p_vid, p_seg, p_score]) if p_vid.size else np.zeros((0, 4))
  num_classes = len(classes)
  ap = np.zeros((thr.size, num_classes))
  for c in range(num_classes):
    ap[:, c] = thumos14_average_precision(g_table[g_cls == c], p_table[p_cls == c], thr,
                                          amb_table)
  metrics = activitynet_protocol.detection_metrics(
      "thumos14", thr, classes, ap, g_cls, p_cls, len(gt_by_video), missing)
  metrics["num_ambiguous_segments"] = int(amb_table.shape[0])
  return metrics
