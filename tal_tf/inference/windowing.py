"""Overlapping windows over long videos and the merging of their detections (host side).

A video longer than `window_steps` is cut into windows of exactly `window_steps` steps whose
starts are `stride = round(window_steps * (1 - overlap))` apart; the last window is aligned
to the video's end rather than left short, so every window has the length the model was
run with in training-sized crops and no tiny tail window yields boundary artefacts. Each
window's detections are shifted by its start and all of a video's windows are merged by
per-class greedy NMS, then cut to the best `max_detections`; proposals are merged the same
way without classes.

A model that also reads a frames stream (ETP's frame Actionness Network) gets, with each
feature window, the frames of the window's time span (`frame_window`). The model places frame
i of its input at i / frame_fps seconds after the window's start, so the frames are exactly
those a video cut at the window's start would have only when the start is on a frame: window
starts are then kept on multiples of `frame_quantum` steps (the smallest q with
q * frame_fps / feature_fps whole; 5 for 25/16 steps/s against 10 frames/s). Rates with no
such q up to MAX_FRAME_QUANTUM get the nearest frame (off by at most half a frame period,
counted by the caller).

NMS conventions are those of the graph-side `tal_tf.core.post_processing` (so a merge agrees
with the model's own suppression): a segment is suppressed when its tIoU with a kept one is
strictly greater than the threshold, and equal scores keep their input order.
"""

import numpy as np

from tal_tf.core import segment_ops_np


MAX_FRAME_QUANTUM = 64
# Relative tolerance for "a whole number of frames": rates are stored as float32 (~1e-7).
_WHOLE_EPSILON = 1e-6


def _nearly_whole(x):
  return abs(x - round(x)) <= _WHOLE_EPSILON * max(1.0, abs(x))


def frame_quantum(feature_fps, frame_fps, max_quantum=MAX_FRAME_QUANTUM):
  """Smallest q in 1..max_quantum such that q feature steps span a whole number of frames
  (q * frame_fps / feature_fps whole, to float32 precision), or None when there is none."""
  if not (feature_fps > 0 and frame_fps > 0):
    raise ValueError(f"feature_fps and frame_fps must be > 0, got {feature_fps}, {frame_fps}")
  ratio = float(frame_fps) / float(feature_fps)
  for q in range(1, int(max_quantum) + 1):
    if _nearly_whole(q * ratio):
      return q
  return None


def frame_window(start, end, feature_fps, frame_fps, num_frames):
  """Frames [a, b) to pass with feature steps [start, end) of a video of num_frames frames.

  a is the frame shown at the window's start time start / feature_fps (the nearest one when
  that time is not on a frame). b is one past the first frame after the window's last step,
  so that a step near the end whose nearest frame lies just beyond the window (frames sparser
  than steps) finds it as in the whole video; frames past the window's steps are otherwise
  ignored by the model's pooling.
  """
  ratio = float(frame_fps) / float(feature_fps)
  a = int(round(start * ratio))
  past = end * ratio
  b = int(np.ceil(past - _WHOLE_EPSILON * max(1.0, past))) + 1
  a = min(max(a, 0), int(num_frames))
  return a, min(max(b, a), int(num_frames))


def plan_windows(num_steps, window_steps, overlap, quantum=1):
  """Window (start, length) pairs covering [0, num_steps); one window when window_steps <= 0
  or the video fits in one.

  quantum > 1 keeps every start on a multiple of it (frame-aligned windows, `frame_quantum`):
  the stride is rounded down to a multiple (at least one quantum) and the last window starts
  at the last multiple that leaves it at least window_steps long, so it may be up to
  quantum - 1 steps longer than the others; windows are at least one quantum long.
  """
  num_steps = int(num_steps)
  window_steps = int(window_steps)
  if num_steps < 0:
    raise ValueError(f"num_steps must be >= 0, got {num_steps}")
  if not 0.0 <= float(overlap) < 1.0:
    raise ValueError(f"window overlap must be in [0, 1), got {overlap}")
  if window_steps <= 0 or num_steps <= window_steps:
    return [(0, num_steps)]
  quantum = int(quantum)
  if quantum < 1:
    raise ValueError(f"window quantum must be >= 1, got {quantum}")
  # Windows shorter than a quantum could not cover the steps between aligned starts.
  window_steps = max(window_steps, quantum)
  if num_steps <= window_steps:
    return [(0, num_steps)]
  stride = max(1, int(round(window_steps * (1.0 - float(overlap)))))
  stride = max(quantum, stride // quantum * quantum)
  starts = list(range(0, num_steps - window_steps, stride))
  last = (num_steps - window_steps) // quantum * quantum  # End-aligned last window.
  if last > starts[-1]:
    starts.append(last)
  return [(s, window_steps) for s in starts[:-1]] + [(starts[-1], num_steps - starts[-1])]


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
