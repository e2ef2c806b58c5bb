"""Overlapping windows over long videos and the merging of their detections (host side).

A video longer than `window_steps` is cut into windows of exactly `window_steps` steps whose
starts are `stride = round(window_steps * (1 - overlap))` apart; the last window is aligned
to the video's end rather than left short, so every window has the length the model was
run with in training-sized crops and no tiny tail window yields boundary artefacts. Each
window's detections are shifted by its start and all of a video's windows are merged by
per-class greedy NMS, then cut to the best `max_detections`; proposals are merged the same
way without classes.

NMS conventions are those of the graph-side `tal_tf.core.post_processing` (so a merge agrees
with the model's own suppression): a segment is suppressed when its tIoU with a kept one is
strictly greater than the threshold, and equal scores keep their input order.
"""

import numpy as np

from tal_tf.core import segment_ops_np


def plan_windows(num_steps, window_steps, overlap):
  """Window (start, length) pairs covering [0, num_steps); one window when window_steps <= 0
  or the video fits in one."""
  num_steps = int(num_steps)
  window_steps = int(window_steps)
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}")
  if not 0.0 <= float(overlap) < 1.0:
    raise ValueError(f"window overlap must be in [0, 1), got {overlap}")
  if window_steps <= 0 or num_steps <= window_steps:
    return [(0, num_steps)]
  stride = max(1, int(round(window_steps * (1.0 - float(overlap)))))
  starts = list(range(0, num_steps - window_steps, stride))
  starts.append(num_steps - window_steps)  # End-aligned last window.
  return [(s, window_steps) for s in starts]


def nms(segments, scores, iou_threshold, max_output=None):
  """Greedy NMS: segments [N, 2], scores [N] -> kept indices (decreasing score, ties in
  input order), at most `max_output`."""
  segments = np.asarray(segments, np.float64).reshape(-1, 2)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if len(segments) != len(scores):
    raise ValueError(f"segments ({len(segments)}) and scores ({len(scores)}) differ in length")
  order = np.argsort(-scores, kind="stable")
  limit = len(order) if max_output is None else int(max_output)
  keep = []
  alive = np.ones(len(order), bool)
  ordered = segments[order]
  for i in range(len(order)):
    if len(keep) >= limit:
      break
    if not alive[i]:
      continue
    keep.append(order[i])
    # Suppress the rest of the queue against the newly kept segment, vectorized.
    rest = slice(i + 1, None)
    iou = segment_ops_np.pairwise_tiou(ordered[i:i + 1], ordered[rest])[0]
    alive[rest] &= ~(iou > iou_threshold)
  return np.asarray(keep, np.int64)


def merge_detections(segments, scores, classes, iou_threshold, max_detections):
  """Per-class NMS over pooled window detections, then the top `max_detections` by score.

  Args: segments [N, 2] (seconds, whole-video time), scores [N], classes [N] label ids.
  Returns: (segments [K, 2], scores [K], classes [K]) sorted by decreasing score.
  """
  segments = np.asarray(segments, np.float64).reshape(-1, 2)
  scores = np.asarray(scores, np.float64).reshape(-1)
  classes = np.asarray(classes, np.int64).reshape(-1)
  kept = []
  for cls in np.unique(classes):
    idx = np.flatnonzero(classes == cls)
    kept.append(idx[nms(segments[idx], scores[idx], iou_threshold)])
  kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
  # Stable sort: equal scores keep lower class id first, then per-class NMS order.
  kept = kept[np.argsort(-scores[kept], kind="stable")][:int(max_detections)]
  return segments[kept], scores[kept], classes[kept]


def merge_proposals(segments, scores, iou_threshold, max_proposals):
  """Class-agnostic NMS over pooled window proposals -> (segments [K, 2], scores [K])."""
  segments = np.asarray(segments, np.float64).reshape(-1, 2)
  scores = np.asarray(scores, np.float64).reshape(-1)
  keep = nms(segments, scores, iou_threshold, max_output=max_proposals)
  return segments[keep], scores[keep]
