"""Tests for tal_tf.core.balanced_sampler."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import balanced_sampler


def expected_counts(indicator, labels, batch_size, fraction):
  """Reference counts per row (loop): positives capped, negatives fill the rest."""
  out = []
  for ind, lab in zip(indicator, labels):
    pos = sum(1 for e, l in zip(ind, lab) if e and l)
    neg = sum(1 for e, l in zip(ind, lab) if e and not l)
    num_pos = min(pos, int(np.floor(batch_size * fraction + 1e-9)))
    out.append((num_pos, min(neg, batch_size - num_pos)))
  return out


@pytest.mark.parametrize("batch_size,fraction", [(8, 0.5), (16, 0.25), (5, 1.0), (6, 0.0)])
def test_counts_match_reference(batch_size, fraction):
  rng = np.random.default_rng(batch_size)
  indicator = rng.uniform(size=(12, 30)) < 0.6
  labels = rng.uniform(size=(12, 30)) < rng.uniform(0, 0.5, size=(12, 1))
  indicator[0] = False                # nothing eligible
  indicator[1, 3:] = False            # fewer than batch_size eligible
  sampler = balanced_sampler.BalancedPositiveNegativeSampler(batch_size, fraction)
  got = sampler.subsample(tf.constant(indicator), tf.constant(labels), seed=3).numpy()
  assert got.shape == indicator.shape
  assert not np.any(got & ~indicator)
  for row, (num_pos, num_neg) in enumerate(expected_counts(indicator, labels, batch_size,
                                                           fraction)):
    assert np.sum(got[row] & labels[row]) == num_pos, row
    assert np.sum(got[row] & ~labels[row]) == num_neg, row
  np.testing.assert_array_equal(got[1], indicator[1])  # all of the few eligible are kept


def test_paper_settings_caps():
  assert balanced_sampler.BalancedPositiveNegativeSampler(256, 0.5).max_positives() == 128
  assert balanced_sampler.BalancedPositiveNegativeSampler(64, 0.25).max_positives() == 16


def test_sampling_is_uniform_and_seeded():
  rows = 4000
  indicator = np.ones((rows, 10), bool)
  labels = np.zeros((rows, 10), bool)
  labels[:, :5] = True
  sampler = balanced_sampler.BalancedPositiveNegativeSampler(4, 0.5)
  got = sampler.subsample(indicator, labels, seed=7).numpy()
  freq = got.mean(axis=0)
  # Each of 5 positives is kept with probability 2/5, each of 5 negatives with 2/5.
  np.testing.assert_allclose(freq, np.full(10, 0.4), atol=0.04)
  again = sampler.subsample(indicator, labels, seed=7).numpy()
  np.testing.assert_array_equal(got, again)
  other = sampler.subsample(indicator, labels, seed=8).numpy()
  assert np.any(got != other)
  unseeded = sampler.subsample(indicator, labels).numpy()
  assert unseeded.sum(axis=1).max() == 4


def test_works_in_tf_function_with_dynamic_shapes():
  sampler = balanced_sampler.BalancedPositiveNegativeSampler(3, 0.34)
  fn = tf.function(sampler.subsample, input_signature=[
      tf.TensorSpec([None, None], tf.bool), tf.TensorSpec([None, None], tf.bool)])
  indicator = np.array([[True] * 6, [True, False, True, False, False, False]])
  labels = np.array([[True, True, True, False, False, False], [True] * 6])
  got = fn(indicator, labels).numpy()
  assert np.sum(got[0] & labels[0]) == 1 and np.sum(got[0] & ~labels[0]) == 2
  assert np.sum(got[1]) == 1 and not np.any(got[1] & ~indicator[1])


def test_bad_arguments():
  with pytest.raises(ValueError, match="batch_size"):
    balanced_sampler.BalancedPositiveNegativeSampler(0, 0.5)
  with pytest.raises(ValueError, match="positive_fraction"):
    balanced_sampler.BalancedPositiveNegativeSampler(8, 1.5)
  sampler = balanced_sampler.BalancedPositiveNegativeSampler(8, 0.5)
  with pytest.raises(ValueError, match="indicator"):
    sampler.subsample(np.ones((2, 3), np.int32), np.ones((2, 3), bool))
  with pytest.raises(ValueError, match="labels"):
    sampler.subsample(np.ones((2, 3), bool), np.ones((3,), bool))
  with pytest.raises(ValueError, match="shapes must match"):
    sampler.subsample(np.ones((2, 3), bool), np.ones((2, 4), bool))
