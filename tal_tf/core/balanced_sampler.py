"""Random mini-batch sampling of anchors with a bounded fraction of positives, batched."""
import tensorflow as tf


class BalancedPositiveNegativeSampler:
  """Samples up to `batch_size` eligible rows per batch element, at most a fraction positive.

  Per batch element (row of [B, N]):
    num_pos = min(#eligible positives, floor(batch_size * positive_fraction))
    num_neg = min(#eligible negatives, batch_size - num_pos)
  i.e. missing positives are made up with extra negatives (Faster R-CNN / OD API behaviour).
  Fewer than batch_size eligible rows: every eligible row is sampled and the sample is just
  smaller (nothing is duplicated or padded); the mask shape stays [B, N] either way.
  Which positives / negatives are kept is uniformly random.
  """

  def __init__(self, batch_size=256, positive_fraction=0.5):
    """batch_size: samples per batch element (> 0); positive_fraction in [0, 1]."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
      raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    try:
      positive_fraction = float(positive_fraction)
    except (TypeError, ValueError):
      raise ValueError(
          f"positive_fraction: expected a number in [0, 1], got {positive_fraction!r}") from None
    if not 0.0 <= positive_fraction <= 1.0:
      raise ValueError(f"positive_fraction: expected a number in [0, 1], got {positive_fraction}")
    self._batch_size = batch_size
    self._positive_fraction = positive_fraction

  @property
  def batch_size(self):
    """Samples per batch element."""
    return self._batch_size

  @property
  def positive_fraction(self):
    """Largest fraction of positives in a sample."""
    return self._positive_fraction

  def max_positives(self):
    """Largest number of positives sampled per batch element."""
    # Round before flooring so e.g. 64 * 0.25 is exactly 16 despite float error.
    return int(round(self._batch_size * self._positive_fraction, 6) // 1)

  def subsample(self, indicator, labels, seed=None):
    """Returns a bool [B, N] sample mask from indicator [B, N] (eligible) and labels [B, N] (positive).

    seed: optional int; with a seed the sample is deterministic (stateless random ops).
    """
    with tf.name_scope("BalancedPositiveNegativeSampler"):
      indicator, labels = bool_masks(indicator=indicator, labels=labels)
      if not indicator.shape.is_compatible_with(labels.shape):
        raise ValueError(
            f"indicator and labels: shapes must match, got {indicator.shape} and {labels.shape}")

      positives = tf.logical_and(indicator, labels)
      negatives = tf.logical_and(indicator, tf.logical_not(labels))
      shape = tf.shape(indicator)
      if seed is None:
        keys = tf.random.uniform(shape, dtype=tf.float32)
      else:
        keys = tf.random.stateless_uniform(shape, seed=tf.constant([int(seed), 0], tf.int64),
                                           dtype=tf.float32)

      num_pos_available = tf.reduce_sum(tf.cast(positives, tf.int32), axis=1)   # [B]
      num_neg_available = tf.reduce_sum(tf.cast(negatives, tf.int32), axis=1)
      num_pos = tf.minimum(num_pos_available, self.max_positives())
      num_neg = tf.minimum(num_neg_available, self._batch_size - num_pos)
      return tf.logical_or(_random_first_k(positives, keys, num_pos),
                           _random_first_k(negatives, keys, num_neg))


def bool_masks(**masks):
  """Converts named bool [B, N] masks to tensors (in order), naming a wrong dtype or rank."""
  out = []
  for name, value in masks.items():
    t = tf.convert_to_tensor(value, name=name)
    if t.dtype != tf.bool:
      raise ValueError(f"{name}: expected a bool tensor, got dtype {t.dtype}")
    if t.shape.rank is not None and t.shape.rank != 2:
      raise ValueError(f"{name}: expected shape [B, N], got {t.shape}")
    out.append(t)
  return out


def _random_first_k(mask, keys, k):
  """Selects k [B] rows of mask [B, N] per batch element: those with the largest random keys."""
  # Ineligible entries get key -1 (keys are in [0, 1)) so they rank after every eligible one.
  scores = tf.where(mask, keys, -1.0)
  order = tf.argsort(scores, axis=1, direction="DESCENDING", stable=True)
  rank = tf.argsort(order, axis=1, stable=True)                # position of each entry in order
  return tf.logical_and(mask, rank < k[:, tf.newaxis])
