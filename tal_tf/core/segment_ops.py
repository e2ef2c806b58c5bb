"""Operations on 1D temporal segments.

A segment is a float32 pair (start, end) in the last dimension of a tensor [..., 2]. Inside
models segments are in feature steps (step t covers [t, t + 1)); at the edges of the system
they are in seconds (seconds = steps / feature_fps). All functions are vectorized TF ops that
work eagerly, inside tf.function and in a SavedModel (core ops only).
"""
import numpy as np
import tensorflow as tf


def _as_float32(x, name):
  """Converts `x` to a float32 tensor (casting other numeric dtypes)."""
  t = tf.convert_to_tensor(x, name=name)
  if t.dtype != tf.float32:
    t = tf.cast(t, tf.float32)
  return t


def _as_segments(segments, name, ranks=None):
  """Converts `segments` to float32 [..., 2], checking the static shape where known."""
  t = _as_float32(segments, name)
  rank = t.shape.rank
  if rank is not None:
    if rank == 0:
      raise ValueError(f"{name}: expected a segments tensor of shape [..., 2], got a scalar")
    if ranks is not None and rank not in ranks:
      raise ValueError(
          f"{name}: expected rank in {sorted(ranks)} (shape [N, 2] or [B, N, 2]), "
          f"got rank {rank} with shape {t.shape}")
    last = t.shape[-1]
    if last is not None and last != 2:
      raise ValueError(
          f"{name}: expected last dimension 2 (start, end), got shape {t.shape}")
  return t


def _broadcast_per_batch(value, segments, name):
  """Shapes a scalar or [B] value to broadcast against a coordinate segments[..., 0] [B, N]."""
  v = _as_float32(value, name)
  if v.shape.rank is None:
    raise ValueError(f"{name}: rank must be known statically (scalar or [B])")
  if v.shape.rank == 0:
    return v
  if v.shape.rank != 1:
    raise ValueError(f"{name}: expected a scalar or a per-batch vector [B], got shape {v.shape}")
  seg_rank = segments.shape.rank
  if seg_rank is None or seg_rank < 2:
    raise ValueError(
        f"{name}: a per-batch vector [B] needs segments of shape [B, ..., 2] with known rank, "
        f"got segments shape {segments.shape}")
  # [B] -> [B, 1, ..., 1] with the rank of one coordinate (segments rank - 1), so it applies
  # to every segment of its batch element when combined with segments[..., 0] or [..., 1].
  return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([seg_rank - 2], tf.int32)], 0))


def length(segments):
  """Returns end - start for segments [..., 2] -> [...] (negative for inverted segments)."""
  with tf.name_scope("SegmentLength"):
    s = _as_segments(segments, "segments")
    return s[..., 1] - s[..., 0]


def is_valid(segments):
  """Returns a bool [...] that is True where end > start, for segments [..., 2]."""
  with tf.name_scope("SegmentIsValid"):
    s = _as_segments(segments, "segments")
    return s[..., 1] > s[..., 0]


def intersection(a, b):
  """Pairwise intersection lengths: a [N, 2], b [M, 2] -> [N, M]; batched [B, N, 2], [B, M, 2] -> [B, N, M].

  Mixed ranks broadcast: a [N, 2] with b [B, M, 2] gives [B, N, M] (shared anchors vs batched
  ground truth). Disjoint or inverted segments give 0.
  """
  with tf.name_scope("SegmentIntersection"):
    a = _as_segments(a, "a", ranks=(2, 3))
    b = _as_segments(b, "b", ranks=(2, 3))
    # a rows along axis -2, b columns along axis -1.
    a_start = a[..., :, 0][..., :, tf.newaxis]
    a_end = a[..., :, 1][..., :, tf.newaxis]
    b_start = b[..., :, 0][..., tf.newaxis, :]
    b_end = b[..., :, 1][..., tf.newaxis, :]
    inter = tf.minimum(a_end, b_end) - tf.maximum(a_start, b_start)
    return tf.maximum(inter, 0.0)


def pairwise_tiou(a, b):
  """Pairwise temporal IoU: a [N, 2], b [M, 2] -> [N, M]; batched [B, N, 2], [B, M, 2] -> [B, N, M].

  Zero-length, inverted or padded segments have length 0 and give tIoU 0 (never NaN): the
  union is computed from clamped lengths and a zero union yields 0 via divide_no_nan.
  """
  with tf.name_scope("PairwiseTIoU"):
    a = _as_segments(a, "a", ranks=(2, 3))
    b = _as_segments(b, "b", ranks=(2, 3))
    inter = intersection(a, b)
    len_a = tf.maximum(a[..., 1] - a[..., 0], 0.0)[..., :, tf.newaxis]
    len_b = tf.maximum(b[..., 1] - b[..., 0], 0.0)[..., tf.newaxis, :]
    union = len_a + len_b - inter
    return tf.math.divide_no_nan(inter, union)


def clip_to_window(segments, window_start, window_end):
  """Clips segments [..., 2] to [window_start, window_end] (scalars, or [B] for [B, N, 2]).

  Segments entirely outside the window collapse to zero length at the nearest window edge
  (they are not removed, so shapes stay static); use `is_valid` to find them afterwards.
  """
  with tf.name_scope("ClipToWindow"):
    s = _as_segments(segments, "segments")
    lo = _broadcast_per_batch(window_start, s, "window_start")
    hi = _broadcast_per_batch(window_end, s, "window_end")
    start = tf.minimum(tf.maximum(s[..., 0], lo), hi)
    end = tf.minimum(tf.maximum(s[..., 1], lo), hi)
    return tf.stack([start, end], axis=-1)


def inside_window(segments, window_start, window_end):
  """Returns bool [...]: True where a segment [..., 2] lies fully inside [window_start, window_end]."""
  with tf.name_scope("InsideWindow"):
    s = _as_segments(segments, "segments")
    lo = _broadcast_per_batch(window_start, s, "window_start")
    hi = _broadcast_per_batch(window_end, s, "window_end")
    return tf.logical_and(s[..., 0] >= lo, s[..., 1] <= hi)


def to_center_length(segments):
  """Converts (start, end) [..., 2] to (center, length) [..., 2]."""
  with tf.name_scope("ToCenterLength"):
    s = _as_segments(segments, "segments")
    return tf.stack([(s[..., 0] + s[..., 1]) * 0.5, s[..., 1] - s[..., 0]], axis=-1)


def from_center_length(center_length):
  """Converts (center, length) [..., 2] to (start, end) [..., 2]."""
  with tf.name_scope("FromCenterLength"):
    cl = _as_segments(center_length, "center_length")
    half = cl[..., 1] * 0.5
    return tf.stack([cl[..., 0] - half, cl[..., 0] + half], axis=-1)


def _check_static_fps(fps):
  """Raises if `fps` is a Python/numpy value that is not strictly positive."""
  if isinstance(fps, tf.Tensor):
    value = tf.get_static_value(fps)
  else:
    value = fps
  if value is None:
    return  # Dynamic value: cannot be checked without adding assert ops to serving graphs.
  try:
    # Host-side check of a constant only; nothing numpy enters the graph.
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    raise ValueError(f"feature_fps: expected a positive number or [B] vector, got {value!r}")
  if arr.size and not np.all(arr > 0):
    raise ValueError(f"feature_fps: expected positive values, got {value!r}")


def steps_to_seconds(segments, feature_fps):
  """Converts segments [..., 2] in feature steps to seconds; feature_fps scalar or [B] for [B, N, 2]."""
  with tf.name_scope("StepsToSeconds"):
    _check_static_fps(feature_fps)
    s = _as_segments(segments, "segments")
    fps = _broadcast_per_batch(feature_fps, s, "feature_fps")
    # fps has no trailing axis for (start, end); add one so it scales both coordinates.
    return s / fps[..., tf.newaxis] if fps.shape.rank else s / fps


def seconds_to_steps(segments, feature_fps):
  """Converts segments [..., 2] in seconds to feature steps; feature_fps scalar or [B] for [B, N, 2]."""
  with tf.name_scope("SecondsToSteps"):
    _check_static_fps(feature_fps)
    s = _as_segments(segments, "segments")
    fps = _broadcast_per_batch(feature_fps, s, "feature_fps")
    return s * fps[..., tf.newaxis] if fps.shape.rank else s * fps
