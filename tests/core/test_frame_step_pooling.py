"""Frame scores -> feature-step scores: hand-worked cases and an exact numpy reference."""
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import frame_step_pooling as fsp


def reference(scores, num_frames, frame_fps, step_fps, num_steps, t):
  """Plain transcription of the module docstring in exact rational arithmetic."""
  b, _, k = scores.shape
  out = np.zeros([b, t, k], np.float64)
  for v in range(b):
    ff, sf = Fraction(float(frame_fps[v])), Fraction(float(step_fps[v]))
    times = [Fraction(i) / ff for i in range(num_frames[v])]
    for s in range(min(num_steps[v], t)):
      lo, hi = Fraction(s) / sf, Fraction(s + 1) / sf
      inside = [i for i, time in enumerate(times) if lo <= time < hi]
      if inside:
        out[v, s] = scores[v, inside].mean(axis=0)
      elif times:
        center = (Fraction(s) + Fraction(1, 2)) / sf
        distances = [abs(time - center) for time in times]
        out[v, s] = scores[v, distances.index(min(distances))]  # first = earlier on a tie
  return out


def pool(scores, num_frames, frame_fps, step_fps, num_steps, t):
  return fsp.pool_frames_to_steps(tf.constant(scores, tf.float32), num_frames, frame_fps,
                                  step_fps, num_steps, t).numpy()


def test_hand_cases():
  # 10 frames at 10 fps, 2.5 steps/s: 4 frames per step, the last step holds 2 frames.
  scores = np.arange(10, dtype=np.float32).reshape(1, 10, 1)
  np.testing.assert_allclose(pool(scores, [10], 10.0, 2.5, [3], 4)[0, :, 0],
                             [(0 + 1 + 2 + 3) / 4, (4 + 5 + 6 + 7) / 4, (8 + 9) / 2, 0.0])
  # Frames sparser than steps: 3 frames at 1 fps (scores 1, 2, 3), 2.5 steps/s, 6 steps.
  # Step intervals [0, .4) [.4, .8) [.8, 1.2) [1.2, 1.6) [1.6, 2) [2, 2.4): steps 1, 3, 4
  # hold no frame and take the frame nearest their centers .6, 1.4, 1.8 (frames 1, 1, 2);
  # step 6 is padding.
  scores = np.array([1, 2, 3, 4, 5], np.float32).reshape(1, 5, 1)
  np.testing.assert_allclose(pool(scores, [3], 1.0, 2.5, [6], 7)[0, :, 0],
                             [1, 2, 2, 2, 3, 3, 0])
  # A tie: 1 fps frames, 3 steps/s; empty step 1's center 0.5 s is halfway between frames 0
  # and 1 and takes the earlier; step 2's center 5/6 s is nearer frame 1.
  scores = np.array([10, 20], np.float32).reshape(1, 2, 1)
  np.testing.assert_allclose(pool(scores, [2], 1.0, 3.0, [5], 5)[0, :, 0],
                             [10, 10, 20, 20, 20])


def test_snippet_boundaries_survive_float_rates():
  # 16-frame snippets of a 29.97 fps video, the frame rate in float64 and the step rate
  # stored as a float32 (as in a record): frame i belongs to step i // 16 (frame 16 lies on
  # a boundary, which 16 * float32(29.97 / 16) / 29.97 = 0.99999998 misses without care).
  step_fps = tf.constant(29.97 / 16, tf.float32)
  index = fsp.frame_step_indices(16 * 400, tf.constant(29.97, tf.float64), step_fps)
  index = index.numpy()[0]
  np.testing.assert_array_equal(index, np.arange(16 * 400) // 16)


def test_matches_reference_on_random_batches():
  rng = np.random.default_rng(3)
  for _ in range(20):
    b, f, k, t = 3, int(rng.integers(0, 30)), 4, int(rng.integers(1, 25))
    scores = rng.random((b, f, k)).astype(np.float32)
    num_frames = rng.integers(0, f + 1, b)
    frame_fps = rng.choice([1.0, 2.5, 8.0, 10.0, 25.0], b)
    step_fps = rng.choice([0.625, 1.0, 2.5, 4.0, 5.0], b)
    num_steps = rng.integers(0, t + 1, b)
    got = pool(scores, num_frames, frame_fps, step_fps, num_steps, t)
    np.testing.assert_allclose(
        got, reference(scores, num_frames, frame_fps, step_fps, num_steps, t), atol=1e-6)


def test_frames_past_the_features_and_padding_are_ignored():
  # Frame 4 (time 1.0 s) falls in step 2, past num_steps = 2: it must not leak anywhere;
  # the second video has no frames at all.
  scores = np.array([[1, 1, 3, 3, 100], [7, 7, 7, 7, 7]], np.float32)[..., None]
  got = pool(scores, [5, 0], 4.0, 2.0, [2, 3], 3)[..., 0]
  np.testing.assert_allclose(got, [[1, 3, 0], [0, 0, 0]])
  # A batch without a single frame.
  assert pool(np.zeros([2, 0, 3], np.float32), [0, 0], 1.0, 2.5, [4, 1], 4).sum() == 0.0


def test_inside_a_graph_with_dynamic_shapes():
  fn = tf.function(fsp.pool_frames_to_steps, input_signature=[
      tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None], tf.int32),
      tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.float32),
      tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32)])
  scores = np.random.default_rng(0).random((2, 9, 2)).astype(np.float32)
  args = ([9, 4], [3.0, 2.0], [1.0, 1.0], [3, 2], 4)
  np.testing.assert_allclose(fn(scores, *[tf.constant(a) for a in args]).numpy(),
                             reference(scores, *args), atol=1e-6)


@pytest.mark.parametrize("frame_fps,step_fps", [(10.0, 0.625), (25.0, 25.0 / 16)])
def test_every_frame_counts_once(frame_fps, step_fps):
  # Constant-per-step scores survive pooling exactly: each frame lands in one step.
  f = 200
  index = np.floor(np.arange(f) * step_fps / frame_fps).astype(int)
  t = index.max() + 1
  scores = index.astype(np.float32).reshape(1, f, 1)
  np.testing.assert_allclose(pool(scores, [f], frame_fps, step_fps, [t], t)[0, :, 0],
                             np.arange(t))
