"""Tests for tal_tf.core.video_scores (Eq. 2-4) against loop-based numpy references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import video_scores


def np_blocks(n, block_size):
  """Step ranges [start, end) of a video's blocks, written from the rules in words."""
  if n == 0:
    return []
  if block_size <= 0 or n < block_size:
    return [(0, n)]  # One block of the whole video.
  count = n // block_size
  ranges = [(i * block_size, (i + 1) * block_size) for i in range(count)]
  ranges[-1] = (ranges[-1][0], n)  # The remainder joins the last block.
  return ranges


def np_block_means(activations, n, block_size, k):
  """[n_B, C] mean of the min(k, len) largest activations per block and class."""
  out = []
  for start, end in np_blocks(n, block_size):
    block = activations[start:end]
    kk = min(k, end - start)
    out.append(np.sort(block, axis=0)[::-1][:kk].mean(axis=0))
  return np.array(out).reshape(-1, activations.shape[1])


def np_video_probability(activations, n, block_size, k):
  """P(c | V) = 1 - prod (1 - sigmoid(block mean)) (Eq. 2-4)."""
  means = np_block_means(activations, n, block_size, k)
  block_p = 1.0 / (1.0 + np.exp(-means))
  return 1.0 - np.prod(1.0 - block_p, axis=0)


def test_block_layout_rules():
  assert np_blocks(130, 60) == [(0, 60), (60, 130)]
  np.testing.assert_array_equal(
      video_scores.num_blocks([0, 5, 59, 60, 119, 120, 130], 60).numpy(),
      [0, 1, 1, 1, 1, 2, 2])
  np.testing.assert_array_equal(video_scores.num_blocks([0, 5, 300], 0).numpy(), [0, 1, 1])


def test_hand_worked_blocks():
  # Block size 3, k = 2, one class; n = 7 -> blocks [0, 3) and [3, 7) (remainder merged).
  s = np.array([1.0, 5.0, 3.0, 0.0, -1.0, 2.0, 4.0], np.float32)[None, :, None]
  means, valid = video_scores.block_top_k_means(s, [7], block_size=3, k=2)
  np.testing.assert_allclose(means.numpy()[0, :2, 0], [(5 + 3) / 2, (4 + 2) / 2])
  assert valid.numpy().tolist() == [[True, True, False]]
  # A 2-step video shorter than a block: one block with k = min(2, 2).
  means, valid = video_scores.block_top_k_means(s[:, :2], [2], block_size=3, k=5)
  np.testing.assert_allclose(means.numpy()[0, 0, 0], 3.0)
  log_p, log_q = video_scores.video_class_log_probabilities(s, [7], block_size=3, k=2)
  p1, p2 = 1 / (1 + math.exp(-4.0)), 1 / (1 + math.exp(-3.0))
  np.testing.assert_allclose(np.exp(log_p.numpy()), [[1 - (1 - p1) * (1 - p2)]], rtol=1e-6)
  np.testing.assert_allclose(np.exp(log_q.numpy()), [[(1 - p1) * (1 - p2)]], rtol=1e-6)


@pytest.mark.parametrize("block_size,k", [(6, 3), (6, 10), (4, 1), (0, 3), (0, 50)])
def test_matches_numpy_and_padding_does_not_matter(block_size, k):
  rng = np.random.default_rng(block_size * 10 + k)
  lengths = [23, 5, 6, 0, 13, 1]
  length = max(lengths) + 4  # Extra padding beyond the longest video.
  activations = rng.normal(size=[len(lengths), length, 3]).astype(np.float32) * 3
  for b, n in enumerate(lengths):
    activations[b, n:] = 100.0  # Padding must never count.
  log_p, log_q = video_scores.video_class_log_probabilities(activations, lengths,
                                                            block_size, k)
  for b, n in enumerate(lengths):
    expected = (np_video_probability(activations[b].astype(np.float64), n, block_size, k)
                if n else np.zeros(3))
    np.testing.assert_allclose(np.exp(log_q.numpy()[b]), 1.0 - expected, rtol=1e-5,
                               atol=1e-6)
    if n:
      np.testing.assert_allclose(np.exp(log_p.numpy()[b]), expected, rtol=1e-5, atol=1e-6)
      # The same video alone, unpadded, gives the same numbers.
      alone_p, _ = video_scores.video_class_log_probabilities(
          activations[b:b + 1, :n], [n], block_size, k)
      np.testing.assert_allclose(np.exp(alone_p.numpy()[0]), np.exp(log_p.numpy()[b]),
                                 rtol=1e-5, atol=1e-6)
    else:
      assert np.all(np.isfinite(log_p.numpy()[b]))


def test_log_probabilities_stay_finite_when_saturated_and_have_gradients():
  activations = tf.constant(np.full([1, 600, 2], 4.0, np.float32))  # 10 confident blocks
  with tf.GradientTape() as tape:
    tape.watch(activations)
    log_p, log_q = video_scores.video_class_log_probabilities(activations, [600], 60, 10)
    total = tf.reduce_sum(log_p) + tf.reduce_sum(log_q)
  # P rounds to 1 in float32, but log(1 - P) = -10 softplus(4) is exact.
  np.testing.assert_allclose(log_q.numpy(), -10 * np.log1p(np.exp(4.0)), rtol=1e-6)
  gradient = tape.gradient(total, activations).numpy()
  assert np.all(np.isfinite(gradient))
  # Only the top-10 steps of each block receive gradient.
  assert np.count_nonzero(gradient[0, :, 0]) == 100


def test_dynamic_shapes_and_empty_input():
  @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32),
                                tf.TensorSpec([None], tf.int32)])
  def run(activations, num_steps):
    return video_scores.video_class_log_probabilities(activations, num_steps, 60, 10)

  log_p, log_q = run(tf.zeros([2, 0, 3]), tf.constant([0, 0]))
  assert log_p.shape == (2, 3)
  np.testing.assert_allclose(log_q.numpy(), 0.0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=[1, 130, 2]).astype(np.float32)
  log_p, _ = run(x, tf.constant([130]))
  np.testing.assert_allclose(np.exp(log_p.numpy()[0]),
                             np_video_probability(x[0].astype(np.float64), 130, 60, 10),
                             rtol=1e-5)


def test_bad_arguments():
  with pytest.raises(ValueError, match="k must be"):
    video_scores.block_top_k_means(np.zeros([1, 3, 2], np.float32), [3], 2, 0)
  with pytest.raises(ValueError, match=r"\[B, T, C\]"):
    video_scores.block_top_k_means(np.zeros([3, 2], np.float32), [3], 2, 1)
