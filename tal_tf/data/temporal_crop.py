"""Temporal window cropping of one decoded video (graph mode, core TF ops).

Long videos are trained on a window of at most `max_steps` feature steps. Ground-truth
segments are clipped to the window; a segment keeps its place only if the clipped part is at
least `min_kept_fraction` of its original length, because a sliver of an action at a window
edge teaches the detector to fire on fragments. Video-level labels follow the kept segments:
a class whose segments were all cropped away is dropped; a class with no segment at all in
the video (weak labels) is kept.
"""

import tensorflow as tf

from tal_tf.core.standard_fields import InputFields
from tal_tf.data import input_fields


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
    num_steps = T', window_offset = offset (int32) and video_labels (when present) without
    the classes whose segments the crop all dropped (each field's rule is in
    tal_tf/data/input_fields.py).
  """
  with tf.name_scope("crop_window"):
    return input_fields.crop(decoded, offset, window_steps, min_kept_fraction)


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
