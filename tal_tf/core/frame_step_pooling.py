"""Per-frame scores -> per-feature-step scores (ETP's frame Actionness Network feeding the
feature-step chain).

Time. Frame i of a video decoded at `frame_fps` is the instant i / frame_fps (the frame
records' convention: a frame's time is when it is shown). Feature step k covers
[k / step_fps, (k + 1) / step_fps) (a snippet of frames starting at k * stride, the feature
records' convention). A frame belongs to the step whose interval holds its time:
k = floor(i * step_fps / frame_fps). The quotient x is computed in float64 and nudged up by
1e-6 x (at least 1e-6) before the floor: rates stored as float32 carry a relative error of
~1e-7, so a frame on a boundary in exact arithmetic (frame 16 of a 29.97 fps video with
16-frame snippets, step_fps = float32(29.97 / 16)) would otherwise fall into the earlier
step; no real frame lies within 1e-6 (relative) of a step boundary without being on it.

Pooling. A step's score is the mean of the scores of its frames. A step that holds no frame
(frames sparser than steps, e.g. 1 frame/s against 2.5 steps/s) takes the scores of the
frame nearest in time to its center (k + 0.5) / step_fps (on a tie the earlier frame), so
the actionness curve has no artificial holes that would split Algorithm 1's connected
components. Frames at or past num_frames and steps at or past num_steps are ignored (output
0); a video without frames gives 0 everywhere.
"""

import tensorflow as tf

# Relative nudge before taking floors / ceilings: see the module docstring.
_BOUNDARY_EPSILON = 1e-6


def _nudge(x):
  return _BOUNDARY_EPSILON * tf.maximum(tf.abs(x), 1.0)


def frame_step_indices(num_frames_padded, frame_fps, step_fps):
  """Step index of each frame: int32 [B, F] = floor(i * step_fps / frame_fps).

  frame_fps, step_fps: float [B] (per video) or scalars."""
  i = tf.range(num_frames_padded, dtype=tf.float64)[None, :]
  ratio = (tf.reshape(tf.cast(step_fps, tf.float64), [-1, 1]) /
           tf.reshape(tf.cast(frame_fps, tf.float64), [-1, 1]))
  position = i * ratio
  return tf.cast(tf.floor(position + _nudge(position)), tf.int32)


def nearest_frames(num_steps_padded, num_frames, frame_fps, step_fps):
  """Frame nearest in time to each step's center (the earlier on a tie), clipped to the
  video's frames: int32 [B, T]. num_frames int [B]; fps as in frame_step_indices."""
  centers = (tf.range(num_steps_padded, dtype=tf.float64)[None, :] + 0.5) / tf.reshape(
      tf.cast(step_fps, tf.float64), [-1, 1])
  position = centers * tf.reshape(tf.cast(frame_fps, tf.float64), [-1, 1])
  # ceil(x - 0.5) is round-half-down: at exactly .5 the earlier frame.
  index = tf.cast(tf.math.ceil(position - 0.5 - _nudge(position)), tf.int32)
  last = tf.maximum(tf.cast(num_frames, tf.int32) - 1, 0)[:, None]
  return tf.minimum(tf.maximum(index, 0), last)


def pool_frames_to_steps(frame_scores, num_frames, frame_fps, step_fps, num_steps,
                         num_steps_padded):
  """Mean frame scores per feature step (module docstring).

  frame_scores: float [B, F, K]; num_frames: int [B] valid frames; frame_fps, step_fps:
  float [B] or scalars; num_steps: int [B] valid steps; num_steps_padded: int scalar T.
  Returns float32 [B, T, K].
  """
  frame_scores = tf.convert_to_tensor(frame_scores, tf.float32)
  shape = tf.shape(frame_scores)
  batch, frames, classes = shape[0], shape[1], shape[2]
  num_frames = tf.minimum(tf.cast(num_frames, tf.int32), frames)
  num_steps = tf.cast(num_steps, tf.int32)
  t = tf.convert_to_tensor(num_steps_padded, tf.int32)

  step = frame_step_indices(frames, frame_fps, step_fps)                  # [B, F]
  step = tf.broadcast_to(step, [batch, frames])
  used = (tf.sequence_mask(num_frames, frames) & (step < num_steps[:, None]))
  # Unused frames go to one extra bucket per video (index T), dropped afterwards.
  bucket = tf.where(used, step, t)
  ids = bucket + tf.range(batch)[:, None] * (t + 1)
  sums = tf.math.unsorted_segment_sum(tf.reshape(frame_scores, [-1, classes]),
                                      tf.reshape(ids, [-1]), batch * (t + 1))
  counts = tf.math.unsorted_segment_sum(tf.reshape(tf.cast(used, tf.float32), [-1]),
                                        tf.reshape(ids, [-1]), batch * (t + 1))
  sums = tf.reshape(sums, [batch, t + 1, classes])[:, :t]
  counts = tf.reshape(counts, [batch, t + 1])[:, :t]
  means = sums / tf.maximum(counts, 1.0)[..., None]

  # One zero frame appended so the gather is valid for videos (or batches) without frames.
  padded = tf.pad(frame_scores, [[0, 0], [0, 1], [0, 0]])
  nearest = tf.broadcast_to(nearest_frames(t, num_frames, frame_fps, step_fps), [batch, t])
  nearest = tf.gather(padded, nearest, batch_dims=1)                      # [B, T, K]
  has_frames = (num_frames > 0)[:, None]
  pooled = tf.where((counts > 0)[..., None], means,
                    tf.where(has_frames[..., None], nearest, 0.0))
  valid = tf.sequence_mask(num_steps, t)
  return tf.where(valid[..., None], pooled, 0.0)
