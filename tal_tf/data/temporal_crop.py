"""Temporal window cropping of one decoded video (graph mode, core TF ops).

Long videos are trained on a window of at most `max_steps` feature steps. Ground-truth
segments are clipped to the window; a segment keeps its place only if the clipped part is at
least `min_kept_fraction` of its original length, because a sliver of an action at a window
edge teaches the detector to fire on fragments.
"""

import tensorflow as tf

from tal_tf.core.standard_fields import InputFields


def crop_window(decoded, offset, window_steps, min_kept_fraction=0.5):
  """Crops a decoded video (parse_sequence_example output) to steps [offset, offset+window).

  Args:
    decoded: dict from parse_sequence_example (unbatched): features {s: [T, D]},
      groundtruth_segments [G, 2] (steps), groundtruth_segments_seconds, groundtruth_labels
      [G], num_steps, feature_fps.
    offset: int32 scalar, first kept step (0 <= offset < T).
    window_steps: int32 scalar, window length (the crop keeps min(window, T - offset) steps).
    min_kept_fraction: float in [0, 1]: minimum clipped/original length to keep a segment.
  Returns:
    dict like `decoded` with features [T', D], segments in window coordinates (steps and
    seconds relative to the window start), labels / num_groundtruth_segments filtered,
    num_steps = T' and window_offset = offset (int32).
  """
  with tf.name_scope("crop_window"):
    offset = tf.cast(offset, tf.int32)
    window_steps = tf.cast(window_steps, tf.int32)
    num_steps = tf.cast(decoded[InputFields.num_steps], tf.int32)
    end = tf.minimum(offset + window_steps, num_steps)
    new_len = tf.maximum(end - offset, 0)
    out = dict(decoded)
    out[InputFields.features] = {
        stream: values[offset:end] for stream, values in decoded[InputFields.features].items()
    }
    segments = decoded[InputFields.segments]
    lo = tf.cast(offset, segments.dtype)
    hi = tf.cast(end, segments.dtype)
    starts = tf.maximum(segments[:, 0], lo)
    ends = tf.minimum(segments[:, 1], hi)
    clipped_len = ends - starts
    orig_len = segments[:, 1] - segments[:, 0]
    # Zero-length segments (the converter drops them) have clipped_len <= 0 and are dropped
    # here too; the maximum() only keeps the division finite for them.
    kept_fraction = clipped_len / tf.maximum(orig_len, 1e-6)
    keep = tf.logical_and(clipped_len > 0, kept_fraction >= min_kept_fraction)
    new_segments = tf.stack([starts, ends], axis=-1) - lo
    new_segments = tf.boolean_mask(new_segments, keep)
    out[InputFields.segments] = tf.reshape(new_segments, [-1, 2])
    fps = tf.cast(decoded[InputFields.feature_fps], segments.dtype)
    out[InputFields.segments_seconds] = out[InputFields.segments] / fps
    out[InputFields.labels] = tf.boolean_mask(decoded[InputFields.labels], keep)
    out[InputFields.num_segments] = tf.reduce_sum(tf.cast(keep, tf.int32))
    out[InputFields.num_steps] = new_len
    out[InputFields.window_offset] = offset
  return out


def random_crop(decoded, max_steps, min_kept_fraction=0.5, seed=None, stateless_seed=None):
  """Crops a random window of max_steps (uniform start) if the video is longer; else offset 0.

  `stateless_seed` (int [2] tensor) makes the draw a pure function of the seed, which is
  what a parallel tf.data map needs for reproducibility (a stateful op's draws are shared
  by racing threads); otherwise `seed` is the op-level seed of a stateful draw.
  """
  with tf.name_scope("random_crop"):
    num_steps = tf.cast(decoded[InputFields.num_steps], tf.int32)
    max_steps = tf.cast(max_steps, tf.int32)
    max_offset = tf.maximum(num_steps - max_steps, 0)
    # Uniform over start positions: the papers do not say how training windows are drawn;
    # a uniform start is the simplest choice with no bias toward or away from actions.
    if stateless_seed is not None:
      offset = tf.random.stateless_uniform([], stateless_seed, 0, max_offset + 1,
                                           dtype=tf.int32)
    else:
      offset = tf.random.uniform([], 0, max_offset + 1, dtype=tf.int32, seed=seed)
    return crop_window(decoded, offset, max_steps, min_kept_fraction)
