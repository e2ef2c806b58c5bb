"""What one input stream's step is: a feature vector or a decoded RGB frame.

Input readers describe their streams as `{name: spec}` (`stream_dims`): an int D for a
feature stream (float32 [T, D]) or a `FrameStream` for the JPEG frames of frame records
(uint8 [T, height, width, 3]). Shared code asks this module for a spec's step shape, dtype
and a dummy input instead of assuming a feature dim.
"""

import collections

import tensorflow as tf


class FrameStream(collections.namedtuple("FrameStream", ["height", "width", "fps"],
                                          defaults=(0.0,))):
  """A stream of decoded RGB frames, uint8 [T, height, width, 3], at `fps` frames per
  second (0 = not declared)."""

  def __int__(self):
    raise TypeError(f"{self} is a frame stream; it has no feature dim")


def is_frames(spec):
  """True when `spec` (a stream_dims value) is a frame stream."""
  return isinstance(spec, FrameStream)


def step_shape(spec):
  """Shape of one step: [D] for features, [H, W, 3] for frames."""
  if is_frames(spec):
    return [int(spec.height), int(spec.width), 3]
  return [int(spec)]


def dtype(spec):
  """Element dtype of a stream: float32 features, uint8 frames."""
  return tf.uint8 if is_frames(spec) else tf.float32


def dummy_input(spec, batch=1, steps=1):
  """Zeros [batch, steps, *step_shape] of the stream's dtype (builds a model's weights)."""
  return tf.zeros([batch, steps] + step_shape(spec), dtype(spec))


def has_frames(stream_dims):
  """True when any stream of {name: spec} is a frame stream."""
  return any(is_frames(s) for s in dict(stream_dims).values())


def describe(spec):
  """'dim 1024' or 'frames 128x171' (for messages)."""
  if is_frames(spec):
    return f"frames {spec.height}x{spec.width}"
  return f"dim {int(spec)}"
