"""Segment coders: encode segments relative to anchors as regression targets, and back.

`SegmentCoder` is the interface (public `encode` / `decode` open a name scope and call the
protected `_encode` / `_decode`); `CenterLengthCoder` is the TAL-Net parameterization.
"""
import abc
import math

import tensorflow as tf

from tal_tf.core import segment_ops

# Smallest length used inside logs and divisions, so zero-length (e.g. padded) segments or
# anchors encode to large but finite codes instead of -inf / NaN.
EPSILON = 1e-8

# Default bound on the decoded log length ratio log(l / la): a decoded segment can be at most
# 1000 / 16 = 62.5 times its anchor (the bound Faster R-CNN implementations use). With anchors
# of 1..16 steps this still allows ~1000-step segments while keeping exp() far from overflow.
DEFAULT_MAX_LOG_LENGTH_DELTA = math.log(1000.0 / 16.0)


class SegmentCoder(abc.ABC):
  """Encodes segments [..., 2] relative to anchors [..., 2] into codes [..., code_size]."""

  @property
  @abc.abstractmethod
  def code_size(self):
    """Number of values per encoded segment."""

  def encode(self, segments, anchors):
    """Encodes segments [..., 2] w.r.t. anchors [..., 2] (same leading dims) -> [..., code_size]."""
    with tf.name_scope("Encode"):
      segments = segment_ops._as_segments(segments, "segments")
      anchors = segment_ops._as_segments(anchors, "anchors")
      return self._encode(segments, anchors)

  def decode(self, rel_codes, anchors):
    """Decodes rel_codes [..., code_size] w.r.t. anchors [..., 2] -> segments [..., 2]."""
    with tf.name_scope("Decode"):
      rel_codes = segment_ops._as_float32(rel_codes, "rel_codes")
      last = rel_codes.shape[-1] if rel_codes.shape.rank else None
      if rel_codes.shape.rank == 0 or (last is not None and last != self.code_size):
        raise ValueError(
            f"rel_codes: expected shape [..., {self.code_size}], got {rel_codes.shape}")
      anchors = segment_ops._as_segments(anchors, "anchors")
      return self._decode(rel_codes, anchors)

  @abc.abstractmethod
  def _encode(self, segments, anchors):
    """Encodes float32 segments [..., 2] relative to anchors [..., 2]."""

  @abc.abstractmethod
  def _decode(self, rel_codes, anchors):
    """Decodes float32 codes [..., code_size] relative to anchors [..., 2]."""


class CenterLengthCoder(SegmentCoder):
  """TAL-Net coder: tc = sc * (c - ca) / la, tl = sl * log(l / la), codes [..., 2] = (tc, tl).

  The TAL-Net supplementary (Eq. 2) prints the center offset as (c - ca) / ci; there is no
  `ci` defined anywhere in the text, and the method follows Faster R-CNN, whose center offset
  is normalized by the anchor extent. We therefore read `ci` as the anchor (or proposal)
  length `la`. Default scale factors (sc, sl) = (10, 5) are the paper's.
  """

  def __init__(self, scale_factors=(10.0, 5.0),
               max_log_length_delta=DEFAULT_MAX_LOG_LENGTH_DELTA):
    """scale_factors: (center, length) multipliers; max_log_length_delta: decode clamp on log(l/la)."""
    try:
      factors = tuple(float(f) for f in scale_factors)
    except (TypeError, ValueError):
      raise ValueError(
          f"scale_factors: expected two positive numbers, got {scale_factors!r}") from None
    if len(factors) != 2 or not all(f > 0 and math.isfinite(f) for f in factors):
      raise ValueError(f"scale_factors: expected two positive numbers, got {scale_factors!r}")
    if max_log_length_delta is not None:
      max_log_length_delta = float(max_log_length_delta)
      if not max_log_length_delta > 0 or not math.isfinite(max_log_length_delta):
        raise ValueError(
            f"max_log_length_delta: expected a positive finite number or None, "
            f"got {max_log_length_delta!r}")
    self._scale_factors = factors
    self._max_log_length_delta = max_log_length_delta

  @property
  def code_size(self):
    """Two values per segment: (tc, tl)."""
    return 2

  @property
  def scale_factors(self):
    """(center, length) multipliers, e.g. (10.0, 5.0)."""
    return self._scale_factors

  @property
  def max_log_length_delta(self):
    """Upper clamp on the decoded log(l / la), or None for no clamp."""
    return self._max_log_length_delta

  def _encode(self, segments, anchors):
    sc, sl = self._scale_factors
    center_length = segment_ops.to_center_length(segments)
    anchor_center_length = segment_ops.to_center_length(anchors)
    # Clamp lengths to EPSILON: a zero-length segment (or anchor) would otherwise give
    # log(0) = -inf and, through the division, NaN targets.
    c, l = center_length[..., 0], tf.maximum(center_length[..., 1], EPSILON)
    ca, la = anchor_center_length[..., 0], tf.maximum(anchor_center_length[..., 1], EPSILON)
    tc = sc * (c - ca) / la
    tl = sl * tf.math.log(l / la)
    return tf.stack([tc, tl], axis=-1)

  def _decode(self, rel_codes, anchors):
    sc, sl = self._scale_factors
    anchor_center_length = segment_ops.to_center_length(anchors)
    ca, la = anchor_center_length[..., 0], anchor_center_length[..., 1]
    dc = rel_codes[..., 0] / sc
    dl = rel_codes[..., 1] / sl
    # Clamp the exponent from above only: exp(dl) overflows float32 for dl > ~88, so an
    # untrained or diverging regressor would produce inf (and then NaN in tIoU / NMS). Very
    # negative dl simply decodes to a (near) zero-length segment, which is harmless, so the
    # lower side is left unclamped (keeps decode an exact inverse of encode there).
    if self._max_log_length_delta is not None:
      dl = tf.minimum(dl, self._max_log_length_delta)
    c = ca + dc * la
    l = la * tf.exp(dl)
    return segment_ops.from_center_length(tf.stack([c, l], axis=-1))
