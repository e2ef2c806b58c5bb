"""SoI pooling: 1D RoI pooling of segment features (TAL-Net Sec. 4.2, Fig. 5).

Each segment (start, end), in feature steps, is optionally extended by
`context_fraction * (end - start)` on both sides (TAL-Net uses 0.5: the s/2 before and
after a proposal of length s), split into `num_bins` equal bins, and each bin is
max-pooled, giving a fixed-size [num_bins, D] feature map per segment.

Coordinates: step t covers [t, t + 1) and its feature sits at position t + 0.5.

Two modes:
  * 'sample' (default; crop-and-resize + max pool, as TAL-Net's Object Detection API base
    does): `samples_per_bin` evenly spaced points, at the centres of equal sub-bins, are
    read with linear interpolation between neighbouring step centres, and the bin output
    is their maximum. Memory is O(B * P * num_bins * samples_per_bin * D), independent
    of the segment lengths and of T.
  * 'max' (exact RoI max pooling): bin [a, b) covers the steps floor(a) .. ceil(b) - 1
    (at least one step, so zero-length segments read the step they fall in), and the
    output is the exact maximum over those steps. Range maxima come from a sparse table
    (max over every power-of-two window), O(B * T * log2(L) * D) memory for the longest
    bin length L, again never a [B, P, bins, T, D] mask.

Positions outside the valid range [0, num_steps) (context past the video edges, or the
zero padding after num_steps) never read padded features. With outside='zeros' (default)
they read 0, like the zero padding of the convolutions that produced the features and
like crop_and_resize's extrapolation value; a bin partly outside the video therefore
includes 0 in its maximum. With outside='clamp' positions are clamped to the nearest
valid position (the edge step's feature is replicated). Inside the valid range, the
half-steps [0, 0.5) and [n - 0.5, n) read the edge steps' features (no extrapolation).
"""
import math

import tensorflow as tf

_MODES = ("sample", "max")
_OUTSIDE = ("zeros", "clamp")


def _check_args(num_bins, context_fraction, samples_per_bin, mode, outside):
  """Raises ValueError naming the first invalid hyper-parameter."""
  if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
    raise ValueError(f"num_bins must be a Python int >= 1, got {num_bins!r}")
  if (isinstance(samples_per_bin, bool) or not isinstance(samples_per_bin, int)
      or samples_per_bin < 1):
    raise ValueError(f"samples_per_bin must be a Python int >= 1, got {samples_per_bin!r}")
  if not float(context_fraction) >= 0.0:
    raise ValueError(f"context_fraction must be >= 0, got {context_fraction!r}")
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
  if outside not in _OUTSIDE:
    raise ValueError(f"outside must be one of {_OUTSIDE}, got {outside!r}")


def _check_shapes(features, segments, num_steps):
  """Raises ValueError when static shapes contradict [B, T, D], [B, P, 2], [B]."""
  if features.shape.rank is not None and features.shape.rank != 3:
    raise ValueError(f"features must have shape [B, T, D], got shape {features.shape}")
  if segments.shape.rank is not None and (segments.shape.rank != 3 or
                                          segments.shape[-1] not in (None, 2)):
    raise ValueError(f"segments must have shape [B, P, 2], got shape {segments.shape}")
  if num_steps.shape.rank is not None and num_steps.shape.rank != 1:
    raise ValueError(f"num_steps must have shape [B], got shape {num_steps.shape}")


def soi_pooling(features, segments, num_steps, num_bins=7, context_fraction=0.0,
                samples_per_bin=2, mode="sample", outside="zeros"):
  """Pools features [B, T, D] inside segments [B, P, 2] (steps) -> [B, P, num_bins, D].

  `num_steps` [B] gives each video's valid length (steps >= num_steps are padding and
  never read). See the module docstring for the modes and the out-of-range rule.
  """
  _check_args(num_bins, context_fraction, samples_per_bin, mode, outside)
  with tf.name_scope("soi_pooling"):
    features = tf.convert_to_tensor(features)
    segments = tf.cast(tf.convert_to_tensor(segments), tf.float32)
    num_steps = tf.cast(tf.convert_to_tensor(num_steps), tf.int32)
    _check_shapes(features, segments, num_steps)
    # A num_steps larger than the padded length would index past the tensor.
    num_steps = tf.clip_by_value(num_steps, 0, tf.shape(features)[1])

    start, end = tf.unstack(segments, num=2, axis=-1)
    context = float(context_fraction) * (end - start)
    start -= context
    end += context
    if mode == "sample":
      return _sample_pool(features, start, end, num_steps, num_bins, samples_per_bin,
                          outside)
    return _exact_max_pool(features, start, end, num_steps, num_bins, outside)


def _sample_pool(features, start, end, num_steps, num_bins, samples_per_bin, outside):
  """'sample' mode: interpolated reads at sub-bin centres, max per bin."""
  num_samples = num_bins * samples_per_bin
  # Sample i = b * S + j sits at (b + (j + 0.5) / S) bin widths, i.e. (i + 0.5) / S.
  offsets = (tf.range(num_samples, dtype=tf.float32) + 0.5) / samples_per_bin
  bin_width = (end - start) / num_bins
  positions = start[..., None] + offsets * bin_width[..., None]  # [B, P, K]

  length = tf.cast(num_steps, tf.float32)[:, None, None]  # [B, 1, 1]
  if outside == "zeros":
    inside = (positions >= 0.0) & (positions < length)
  else:
    inside = tf.broadcast_to(length > 0.0, tf.shape(positions))
  # Step centres are at t + 0.5; clamping to [0, n - 1] makes the edge half-steps read
  # the edge steps (and keeps indices inside the valid part, away from padding).
  last = tf.maximum(length - 1.0, 0.0)
  u = tf.clip_by_value(positions - 0.5, 0.0, last)
  lower = tf.floor(u)
  frac = tf.cast(u - lower, features.dtype)[..., None]
  lower_index = tf.cast(lower, tf.int32)
  upper_index = tf.minimum(lower_index + 1, tf.cast(last, tf.int32))
  lower_value = tf.gather(features, lower_index, batch_dims=1)  # [B, P, K, D]
  upper_value = tf.gather(features, upper_index, batch_dims=1)
  # The outside mask is folded into the interpolation weights ([B, P, K, 1]) instead of a
  # select over the full [B, P, K, D] tensor: same values for finite features (inputs are
  # checked finite at conversion and serving), two fewer full-size passes.
  inside_f = tf.cast(inside, features.dtype)[..., None]
  values = ((1.0 - frac) * inside_f) * lower_value + (frac * inside_f) * upper_value

  shape = tf.shape(values)
  values = tf.reshape(values, tf.stack([shape[0], shape[1], num_bins, samples_per_bin,
                                        shape[3]]))
  return tf.reduce_max(values, axis=3)


def _floor_log2(n):
  """floor(log2(n)) for int32 n >= 1, exact (float log corrected at powers of two)."""
  k = tf.cast(tf.floor(tf.math.log(tf.cast(n, tf.float32)) / math.log(2.0)), tf.int32)
  k = tf.maximum(k, 0)
  one = tf.ones_like(n)
  k = tf.where(tf.bitwise.left_shift(one, k + 1) <= n, k + 1, k)
  k = tf.where(tf.bitwise.left_shift(one, k) > n, k - 1, k)
  return k


def _power_of_two_maxima(features, num_levels):
  """[B, T, D] -> [B, num_levels, T, D]; level k at t = max(features[t : t + 2^k]).

  Windows running past T are filled with zeros; callers only read windows that lie
  inside the valid steps.
  """
  levels = tf.TensorArray(features.dtype, size=num_levels, element_shape=features.shape)
  levels = levels.write(0, features)

  def body(level, previous, levels):
    shift = tf.bitwise.left_shift(1, level - 1)
    shifted = tf.concat([previous[:, shift:], tf.zeros_like(previous[:, :shift])], axis=1)
    current = tf.maximum(previous, shifted)
    return level + 1, current, levels.write(level, current)

  _, _, levels = tf.while_loop(lambda level, *_: level < num_levels, body,
                               (tf.constant(1), features, levels))
  return tf.transpose(levels.stack(), [1, 0, 2, 3])


def _exact_max_pool(features, start, end, num_steps, num_bins, outside):
  """'max' mode: exact max over the integer steps each bin touches."""
  bin_index = tf.range(num_bins, dtype=tf.float32)
  bin_width = ((end - start) / num_bins)[..., None]
  bin_start = start[..., None] + bin_index * bin_width  # [B, P, bins]
  bin_end = start[..., None] + (bin_index + 1.0) * bin_width
  first = tf.cast(tf.floor(bin_start), tf.int32)
  stop = tf.maximum(tf.cast(tf.math.ceil(bin_end), tf.int32), first + 1)

  length = num_steps[:, None, None]
  if outside == "zeros":
    touches_outside = (first < 0) | (stop > length)
    first_in = tf.clip_by_value(first, 0, length)
    stop_in = tf.clip_by_value(stop, 0, length)
    empty = stop_in <= first_in
  else:
    # Clamp the range into the video, keeping at least the nearest edge step.
    first_in = tf.clip_by_value(first, 0, tf.maximum(length - 1, 0))
    stop_in = tf.clip_by_value(stop, first_in + 1, tf.maximum(length, 1))
    touches_outside = tf.zeros_like(first, tf.bool)
    empty = tf.broadcast_to(length <= 0, tf.shape(first))
  window = tf.where(empty, tf.ones_like(first), stop_in - first_in)  # >= 1
  # Empty bins read the (always present) window [0, 1) and are zeroed at the end.
  first_in = tf.where(empty, tf.zeros_like(first_in), first_in)
  stop_in = first_in + window

  level = _floor_log2(window)
  num_levels = _floor_log2(tf.maximum(tf.reduce_max(window), 1)) + 1
  table = _power_of_two_maxima(features, num_levels)  # [B, L, T, D]
  shape = tf.shape(table)
  table = tf.reshape(table, tf.stack([shape[0], shape[1] * shape[2], shape[3]]))
  # Two (possibly overlapping) power-of-two windows cover [first_in, stop_in) exactly.
  left = level * shape[2] + first_in
  right = level * shape[2] + stop_in - tf.bitwise.left_shift(tf.ones_like(level), level)
  pooled = tf.maximum(tf.gather(table, left, batch_dims=1),
                      tf.gather(table, right, batch_dims=1))  # [B, P, bins, D]
  zeros = tf.zeros_like(pooled)
  pooled = tf.where(touches_outside[..., None], tf.maximum(pooled, zeros), pooled)
  return tf.where(empty[..., None], zeros, pooled)
