"""Mini-batch sampling of S-CNN: every positive plus backgrounds in proportion to positives."""
import tensorflow as tf

from tal_tf.core import balanced_sampler


class ProportionalBackgroundSampler:
  """Keeps all positives of a batch and about `background_ratio` x as many random backgrounds.

  S-CNN (Sec. 3.2) trains on all positive windows plus N_b randomly chosen backgrounds with
  N_b ~ N_T + N_U (proposal network, ratio 1) or N_b ~ (N_T + N_U) / K (classification and
  localization networks, ratio 1 / K). The paper states these counts for the whole training
  set; here they hold per mini-batch, pooled over its videos (trimmed clips have positives
  but no backgrounds, so per-video counts would be wrong). The expected count ratio x
  #positives is rounded stochastically (floor plus one with probability of the fraction), so
  a small ratio such as 1 / 20 still gives the dataset-wide proportion on average. When a
  batch has fewer backgrounds than asked for, all are taken.
  """

  def __init__(self, background_ratio):
    """background_ratio: backgrounds per positive (>= 0)."""
    try:
      background_ratio = float(background_ratio)
    except (TypeError, ValueError):
      raise ValueError(
          f"background_ratio: expected a number >= 0, got {background_ratio!r}") from None
    if not background_ratio >= 0.0:
      raise ValueError(f"background_ratio: expected a number >= 0, got {background_ratio}")
    self._ratio = background_ratio

  @property
  def background_ratio(self):
    """Backgrounds sampled per positive (in expectation)."""
    return self._ratio

  def num_backgrounds(self, num_positives, num_available, seed=None):
    """Number of backgrounds to sample (int32 scalar) for num_positives / available (scalars)."""
    target = self._ratio * tf.cast(num_positives, tf.float32)
    base = tf.floor(target)
    if seed is None:
      u = tf.random.uniform([])
    else:
      u = tf.random.stateless_uniform([], seed=tf.constant([int(seed), 1], tf.int64))
    count = base + tf.cast(u < target - base, tf.float32)
    return tf.minimum(tf.cast(count, tf.int32), tf.cast(num_available, tf.int32))

  def subsample(self, positive, background, seed=None):
    """bool [B, N] sample mask from positive / background indicators [B, N] (disjoint)."""
    with tf.name_scope("ProportionalBackgroundSampler"):
      positive, background = balanced_sampler.bool_masks(positive=positive,
                                                         background=background)
      background = tf.logical_and(background, tf.logical_not(positive))
      num_pos = tf.reduce_sum(tf.cast(positive, tf.int32))
      flat = tf.reshape(background, [-1])
      k = self.num_backgrounds(num_pos, tf.reduce_sum(tf.cast(flat, tf.int32)), seed)
      if seed is None:
        keys = tf.random.uniform(tf.shape(flat))
      else:
        keys = tf.random.stateless_uniform(tf.shape(flat),
                                           seed=tf.constant([int(seed), 2], tf.int64))
      # Non-backgrounds rank after every background (keys are in [0, 1)).
      keys = tf.where(flat, keys, -1.0)
      order = tf.argsort(keys, direction="DESCENDING", stable=True)
      rank = tf.scatter_nd(order[:, tf.newaxis], tf.range(tf.size(order)), tf.shape(order))
      chosen = tf.logical_and(flat, rank < k)
      return tf.logical_or(positive, tf.reshape(chosen, tf.shape(background)))
