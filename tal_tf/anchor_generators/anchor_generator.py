"""Anchor generator interface: fixed 1D segments (in feature steps) laid over a video."""
import abc

import tensorflow as tf


class AnchorGenerator(abc.ABC):
  """Generates anchors [num_anchors(num_steps), 2] = (start, end) in feature steps.

  Location-based generators (one group of K anchors per feature step) return
  num_steps * K anchors ordered location-major (index = t * K + k), so per-step predictions
  [B, T, K, ...] reshaped to [B, T * K, ...] line up with them.
  """

  def generate(self, num_steps):
    """Returns anchors [num_anchors(num_steps), 2] for a video of `num_steps` (int or scalar tensor)."""
    with tf.name_scope(self.name_scope()):
      num_steps = _as_num_steps(num_steps)
      return self._generate(num_steps)

  def name_scope(self):
    """Name scope of the generated ops."""
    return type(self).__name__

  @abc.abstractmethod
  def num_anchors_per_location(self):
    """Number of anchors per feature step K (Python int)."""

  def num_anchors(self, num_steps):
    """Number of anchors for `num_steps` steps (int32 scalar tensor)."""
    return _as_num_steps(num_steps) * self.num_anchors_per_location()

  @abc.abstractmethod
  def _generate(self, num_steps):
    """Returns anchors [N, 2] for an int32 scalar tensor num_steps."""


def _as_num_steps(num_steps):
  """Converts num_steps to an int32 scalar tensor, rejecting non-scalars and negative constants."""
  t = tf.convert_to_tensor(num_steps, name="num_steps")
  if not (t.dtype.is_integer or t.dtype.is_floating):
    raise ValueError(f"num_steps: expected an integer scalar, got dtype {t.dtype}")
  if t.shape.rank is not None and t.shape.rank != 0:
    raise ValueError(f"num_steps: expected a scalar, got shape {t.shape}")
  if t.dtype.is_floating:
    t = tf.cast(tf.round(t), tf.int32)
  elif t.dtype != tf.int32:
    t = tf.cast(t, tf.int32)
  value = tf.get_static_value(t)
  if value is not None and value < 0:
    raise ValueError(f"num_steps: expected a non-negative number of steps, got {value}")
  return t
