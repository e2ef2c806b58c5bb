"""TAL-Net anchors: K scales centered at every feature step."""
import math

import tensorflow as tf

from tal_tf.anchor_generators import anchor_generator

TAL_NET_SCALES = (1, 2, 3, 4, 5, 6, 8, 11, 16)


class MultiscaleAnchorGenerator(anchor_generator.AnchorGenerator):
  """At each step t, one anchor per scale s: [t + 0.5 - s / 2, t + 0.5 + s / 2] (feature steps).

  Output [T * K, 2], index t * K + k (location-major, scales in the given order). Anchors are
  not clipped to [0, T]: long anchors near the video edges extend past them, which keeps every
  anchor's span equal to its scale (what the receptive-field-aligned towers assume); clip
  with segment_ops.clip_to_window if needed.
  """

  def __init__(self, scales=TAL_NET_SCALES):
    """scales: anchor lengths in feature steps (positive, distinct)."""
    try:
      values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
      raise ValueError(f"scales: expected a sequence of positive numbers, got {scales!r}") from None
    if not values:
      raise ValueError("scales: expected at least one scale, got an empty sequence")
    bad = [s for s in values if not (s > 0 and math.isfinite(s))]
    if bad:
      raise ValueError(f"scales: every scale must be positive and finite, got {scales!r}")
    if len(set(values)) != len(values):
      raise ValueError(f"scales: duplicate scales are not allowed, got {scales!r}")
    self._scales = values

  @property
  def scales(self):
    """Anchor lengths in feature steps, in output order."""
    return self._scales

  def num_anchors_per_location(self):
    """K = number of scales."""
    return len(self._scales)

  def _generate(self, num_steps):
    centers = tf.cast(tf.range(num_steps), tf.float32) + 0.5          # [T]
    half = tf.constant(self._scales, tf.float32) * 0.5                # [K]
    starts = centers[:, tf.newaxis] - half[tf.newaxis, :]             # [T, K]
    ends = centers[:, tf.newaxis] + half[tf.newaxis, :]
    return tf.reshape(tf.stack([starts, ends], axis=-1), [-1, 2])     # [T * K, 2]
