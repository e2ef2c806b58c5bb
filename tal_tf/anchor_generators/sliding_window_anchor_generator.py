"""S-CNN multi-scale sliding windows (lengths in frames, output in feature steps)."""
import math

import tensorflow as tf

from tal_tf.anchor_generators import anchor_generator

S_CNN_WINDOW_LENGTHS = (16, 32, 64, 128, 256, 512)


class SlidingWindowAnchorGenerator(anchor_generator.AnchorGenerator):
  """Windows of each length L (frames) starting at 0 with stride L * (1 - overlap), fully inside the video.

  Boundary rule: only windows that fit entirely inside the video (start + L <= video frames)
  are kept, so a video shorter than L gets no windows of length L (and a video shorter than
  the smallest length gets none at all: N = 0). S-CNN slides windows over the video and feeds
  each window's frames to the network; a window running past the last frame has no frames to
  sample there, so partial windows are not generated (and not clipped either, which would
  duplicate a shorter scale).

  Order: by window length (in the given order), then by start time. Output [N, 2] in feature
  steps: frames / frames_per_step.
  """

  def __init__(self, window_lengths=S_CNN_WINDOW_LENGTHS, overlap=0.75, frames_per_step=1):
    """window_lengths: in frames (positive, distinct); overlap in [0, 1); frames_per_step > 0."""
    try:
      lengths = tuple(float(x) for x in window_lengths)
    except (TypeError, ValueError):
      raise ValueError(
          f"window_lengths: expected a sequence of positive numbers, got {window_lengths!r}"
      ) from None
    if not lengths:
      raise ValueError("window_lengths: expected at least one window length, got none")
    if not all(x > 0 and math.isfinite(x) for x in lengths):
      raise ValueError(
          f"window_lengths: every length must be positive and finite, got {window_lengths!r}")
    if len(set(lengths)) != len(lengths):
      raise ValueError(f"window_lengths: duplicate lengths are not allowed, got {window_lengths!r}")
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
      raise ValueError(f"overlap: expected a fraction in [0, 1), got {overlap!r}")
    frames_per_step = float(frames_per_step)
    if not (frames_per_step > 0 and math.isfinite(frames_per_step)):
      raise ValueError(f"frames_per_step: expected a positive number, got {frames_per_step!r}")
    self._window_lengths = lengths
    self._overlap = overlap
    self._frames_per_step = frames_per_step

  @property
  def window_lengths(self):
    """Window lengths in frames, in output order."""
    return self._window_lengths

  @property
  def overlap(self):
    """Fraction by which consecutive windows of one length overlap."""
    return self._overlap

  @property
  def frames_per_step(self):
    """Video frames per feature step."""
    return self._frames_per_step

  def strides(self):
    """Stride of each window length, in frames."""
    return tuple(length * (1.0 - self._overlap) for length in self._window_lengths)

  def num_anchors_per_location(self):
    """Not defined for sliding windows: raises NotImplementedError."""
    raise NotImplementedError(
        "SlidingWindowAnchorGenerator is not location-based (windows have per-scale strides); "
        "use num_anchors(num_steps) instead of num_anchors_per_location()")

  def _count_per_length(self, num_steps):
    """Number of windows of each length (list of int32 scalars) for num_steps steps."""
    num_frames = tf.cast(num_steps, tf.float64) * self._frames_per_step
    counts = []
    for length, stride in zip(self._window_lengths, self.strides()):
      # Windows k = 0..n-1 start at k * stride and need k * stride + length <= num_frames.
      # The small tolerance keeps exact fits (e.g. 0.25 * 16 steps) from being lost to rounding.
      n = tf.floor((num_frames - length) / stride + 1e-9) + 1.0
      counts.append(tf.cast(tf.maximum(n, 0.0), tf.int32))
    return counts

  def num_anchors(self, num_steps):
    """Total number of windows for a video of num_steps feature steps (int32 scalar tensor)."""
    num_steps = anchor_generator._as_num_steps(num_steps)
    return tf.add_n(self._count_per_length(num_steps))

  def _generate(self, num_steps):
    counts = self._count_per_length(num_steps)
    pieces = []
    for (length, stride), count in zip(zip(self._window_lengths, self.strides()), counts):
      starts = tf.cast(tf.range(count), tf.float64) * stride                 # frames
      pieces.append(tf.stack([starts, starts + length], axis=-1))
    anchors = tf.concat(pieces, axis=0) / self._frames_per_step
    return tf.cast(anchors, tf.float32)
