"""Structured temporal pyramid pooling (SSN, used by ETP's Localization Network Sec. 3.3).

A segment [s, e] of length l is augmented to [s - c l, e + c l] (c = context_fraction, SSN and
ETP: 0.5) and split into three stages: starting [s - c l, s], course [s, e] and ending
[e, e + c l]. Each stage is average-pooled by a temporal pyramid: level k splits the stage
into k equal parts. ETP builds on SSN and uses its configuration, which is the default here:
course levels (1, 2) (the whole course plus its two halves) and one level for the starting
and ending stages, i.e. 5 parts in the order

  start[1/1], course[1/1], course[1/2], course[2/2], end[1/1].

Pooling is the exact average of the piecewise-constant signal (step t's feature covers
[t, t + 1)) over each part, computed from a cumulative sum (O(B T D + B P parts D) memory for
any segment length). Parts are clipped to the valid range [0, num_steps): context beyond the
video's edges is not invented; a part lying wholly outside it pools to 0, and a zero-length
part inside reads the step it falls in.
"""
import tensorflow as tf


def _check_levels(levels, name):
  """Raises ValueError unless levels is a non-empty tuple of ints >= 1."""
  if not levels or any(int(k) < 1 for k in levels):
    raise ValueError(f"{name}: expected pyramid levels >= 1, got {levels!r}")


def part_bounds(segments, context_fraction=0.5, start_levels=(1,), course_levels=(1, 2),
                end_levels=(1,)):
  """Part boundaries [..., parts, 2] of segments [..., 2] (see the module docstring)."""
  for levels, name in ((start_levels, "start_levels"), (course_levels, "course_levels"),
                       (end_levels, "end_levels")):
    _check_levels(levels, name)
  if not float(context_fraction) >= 0.0:
    raise ValueError(f"context_fraction: expected >= 0, got {context_fraction!r}")
  segments = tf.convert_to_tensor(segments, tf.float32)
  start, end = segments[..., 0], segments[..., 1]
  extent = (end - start) * float(context_fraction)
  stages = ((start - extent, start, start_levels), (start, end, course_levels),
            (end, end + extent, end_levels))
  bounds = []
  for a, b, levels in stages:
    for k in levels:
      width = (b - a) / float(k)
      for i in range(int(k)):
        bounds.append(tf.stack([a + i * width, a + (i + 1) * width], axis=-1))
  return tf.stack(bounds, axis=-2)


def num_parts(start_levels=(1,), course_levels=(1, 2), end_levels=(1,)):
  """Number of pooled parts per segment."""
  return sum(int(k) for k in tuple(start_levels) + tuple(course_levels) + tuple(end_levels))


def average_pool_ranges(features, ranges, num_steps):
  """Exact mean of features [B, T, D] over ranges [B, P, M, 2] (steps) -> [B, P, M, D]."""
  features = tf.convert_to_tensor(features, tf.float32)
  ranges = tf.convert_to_tensor(ranges, tf.float32)
  t = tf.shape(features)[1]
  n = tf.cast(tf.clip_by_value(tf.cast(num_steps, tf.int32), 0, t), tf.float32)
  n_b = n[:, None, None]
  a = tf.clip_by_value(ranges[..., 0], 0.0, n_b)
  b = tf.clip_by_value(ranges[..., 1], 0.0, n_b)
  b = tf.maximum(a, b)
  # Exclusive cumulative sum with one extra (zero) step so every index below is valid.
  padded = tf.pad(features, [[0, 0], [0, 1], [0, 0]])
  cumulative = tf.cumsum(padded, axis=1, exclusive=True)  # [B, T + 1, D]
  last = tf.maximum(n_b - 1.0, 0.0)

  def integral(x):
    # F(x) = sum of whole steps before floor(x) + fraction of step floor(x); x in [0, n].
    i = tf.minimum(tf.floor(x), last)
    frac = (x - i)[..., None]
    idx = tf.cast(i, tf.int32)
    shape = tf.shape(idx)
    flat = tf.reshape(idx, [shape[0], -1])
    base = tf.gather(cumulative, flat, batch_dims=1)
    value = tf.gather(padded, flat, batch_dims=1)
    new_shape = tf.concat([shape, [-1]], 0)
    return tf.reshape(base, new_shape) + frac * tf.reshape(value, new_shape)

  length = (b - a)[..., None]
  mean = tf.math.divide_no_nan(integral(b) - integral(a), length)
  # A zero-length part inside the video reads the step it falls in.
  point_idx = tf.cast(tf.minimum(tf.floor(a), last), tf.int32)
  shape = tf.shape(point_idx)
  point = tf.reshape(tf.gather(padded, tf.reshape(point_idx, [shape[0], -1]), batch_dims=1),
                     tf.concat([shape, [-1]], 0))
  inside = (ranges[..., 0] < n_b) & (ranges[..., 0] >= 0.0)
  point = tf.where(inside[..., None], point, 0.0)
  return tf.where(length > 0.0, mean, point)


def structured_pyramid_pooling(features, segments, num_steps, context_fraction=0.5,
                               start_levels=(1,), course_levels=(1, 2), end_levels=(1,)):
  """STPP of features [B, T, D] over segments [B, P, 2] -> [B, P, parts, D] (module doc)."""
  with tf.name_scope("structured_pyramid_pooling"):
    bounds = part_bounds(segments, context_fraction, start_levels, course_levels, end_levels)
    return average_pool_ranges(features, bounds, num_steps)
