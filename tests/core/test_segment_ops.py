"""Tests for tal_tf.core.segment_ops against loop-based numpy references."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import segment_ops


def np_intersection(a, b):
  out = np.zeros((len(a), len(b)), np.float64)
  for i, (s1, e1) in enumerate(a):
    for j, (s2, e2) in enumerate(b):
      out[i, j] = max(0.0, min(e1, e2) - max(s1, s2))
  return out


def np_tiou(a, b):
  out = np.zeros((len(a), len(b)), np.float64)
  for i, (s1, e1) in enumerate(a):
    for j, (s2, e2) in enumerate(b):
      inter = max(0.0, min(e1, e2) - max(s1, s2))
      union = max(0.0, e1 - s1) + max(0.0, e2 - s2) - inter
      out[i, j] = inter / union if union > 0 else 0.0
  return out


def random_segments(rng, shape, zero_fraction=0.2):
  starts = rng.uniform(0, 20, size=shape)
  lengths = rng.uniform(0, 10, size=shape)
  lengths[rng.uniform(size=shape) < zero_fraction] = 0.0
  return np.stack([starts, starts + lengths], -1).astype(np.float32)


def test_tiou_hand_case():
  got = segment_ops.pairwise_tiou([[0.0, 2.0], [5.0, 6.0]], [[1.0, 3.0], [0.0, 2.0], [2.0, 5.0]])
  expected = [[1.0 / 3.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
  np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_intersection_and_tiou_unbatched_match_reference():
  rng = np.random.default_rng(0)
  a, b = random_segments(rng, 7), random_segments(rng, 5)
  np.testing.assert_allclose(segment_ops.intersection(a, b).numpy(), np_intersection(a, b),
                             atol=1e-5)
  np.testing.assert_allclose(segment_ops.pairwise_tiou(a, b).numpy(), np_tiou(a, b), atol=1e-5)


def test_tiou_batched_and_mixed_rank_match_reference():
  rng = np.random.default_rng(1)
  a, b = random_segments(rng, (3, 6)), random_segments(rng, (3, 4))
  got = segment_ops.pairwise_tiou(a, b).numpy()
  assert got.shape == (3, 6, 4)
  for k in range(3):
    np.testing.assert_allclose(got[k], np_tiou(a[k], b[k]), atol=1e-5)
  shared = a[0]
  got = segment_ops.pairwise_tiou(shared, b).numpy()
  assert got.shape == (3, 6, 4)
  for k in range(3):
    np.testing.assert_allclose(got[k], np_tiou(shared, b[k]), atol=1e-5)


def test_tiou_zero_length_and_padding_give_zero_not_nan():
  a = np.array([[0.0, 0.0], [3.0, 3.0], [1.0, 4.0], [5.0, 2.0]], np.float32)
  got = segment_ops.pairwise_tiou(a, a).numpy()
  assert np.all(np.isfinite(got))
  expected = np.zeros((4, 4))
  expected[2, 2] = 1.0
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tiou_empty_columns():
  got = segment_ops.pairwise_tiou(np.zeros((2, 5, 2), np.float32), np.zeros((2, 0, 2), np.float32))
  assert got.shape == (2, 5, 0)


def test_tiou_in_tf_function_with_dynamic_shapes():
  fn = tf.function(segment_ops.pairwise_tiou, input_signature=[
      tf.TensorSpec([None, None, 2], tf.float32), tf.TensorSpec([None, None, 2], tf.float32)])
  rng = np.random.default_rng(2)
  a, b = random_segments(rng, (2, 3)), random_segments(rng, (2, 4))
  got = fn(a, b).numpy()
  for k in range(2):
    np.testing.assert_allclose(got[k], np_tiou(a[k], b[k]), atol=1e-5)


def test_length_and_is_valid():
  s = np.array([[0.0, 2.5], [3.0, 3.0], [4.0, 1.0]], np.float32)
  np.testing.assert_allclose(segment_ops.length(s).numpy(), [2.5, 0.0, -3.0])
  np.testing.assert_array_equal(segment_ops.is_valid(s).numpy(), [True, False, False])


def test_clip_scalar_window():
  s = np.array([[-1.0, 3.0], [2.0, 12.0], [11.0, 15.0], [-5.0, -2.0]], np.float32)
  got = segment_ops.clip_to_window(s, 0.0, 10.0).numpy()
  expected = [[0.0, 3.0], [2.0, 10.0], [10.0, 10.0], [0.0, 0.0]]
  np.testing.assert_allclose(got, expected)


def test_clip_per_batch_window_matches_reference():
  rng = np.random.default_rng(3)
  s = random_segments(rng, (3, 5)) - 5.0
  lo = np.array([0.0, 2.0, -1.0], np.float32)
  hi = np.array([10.0, 4.0, 30.0], np.float32)
  got = segment_ops.clip_to_window(s, lo, hi).numpy()
  expected = np.empty_like(s)
  for b in range(3):
    for n in range(5):
      for c in range(2):
        expected[b, n, c] = min(max(s[b, n, c], lo[b]), hi[b])
  np.testing.assert_allclose(got, expected)


def test_inside_window():
  s = np.array([[[0.0, 3.0], [2.0, 6.0]], [[0.0, 3.0], [2.0, 6.0]]], np.float32)
  got = segment_ops.inside_window(s, 0.0, np.array([5.0, 8.0], np.float32)).numpy()
  np.testing.assert_array_equal(got, [[True, False], [True, True]])


def test_center_length_round_trip_and_values():
  s = np.array([[1.0, 5.0], [-2.0, 0.0]], np.float32)
  cl = segment_ops.to_center_length(s).numpy()
  np.testing.assert_allclose(cl, [[3.0, 4.0], [-1.0, 2.0]])
  np.testing.assert_allclose(segment_ops.from_center_length(cl).numpy(), s)


def test_steps_seconds_scalar_and_per_batch():
  s = np.array([[[2.0, 4.0]], [[2.0, 4.0]]], np.float32)
  np.testing.assert_allclose(segment_ops.steps_to_seconds(s, 2.0).numpy(), s / 2.0)
  fps = np.array([2.0, 4.0], np.float32)
  got = segment_ops.steps_to_seconds(s, fps).numpy()
  np.testing.assert_allclose(got, [[[1.0, 2.0]], [[0.5, 1.0]]])
  back = segment_ops.seconds_to_steps(got, fps).numpy()
  np.testing.assert_allclose(back, s)
  np.testing.assert_allclose(segment_ops.seconds_to_steps([[1.0, 2.0]], 3.0).numpy(), [[3.0, 6.0]])


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="last dimension 2"):
    segment_ops.pairwise_tiou(np.zeros((3, 3), np.float32), np.zeros((2, 2), np.float32))
  with pytest.raises(ValueError, match="rank"):
    segment_ops.pairwise_tiou(np.zeros((2,), np.float32), np.zeros((2, 2), np.float32))
  with pytest.raises(ValueError, match="feature_fps"):
    segment_ops.steps_to_seconds(np.zeros((2, 2), np.float32), -1.0)
  with pytest.raises(ValueError, match="feature_fps"):
    segment_ops.seconds_to_steps(np.zeros((2, 3, 2), np.float32), [[1.0, 2.0]])
  with pytest.raises(ValueError, match="window_start"):
    segment_ops.clip_to_window(np.zeros((2, 3, 2), np.float32), np.zeros((2, 2)), 1.0)
