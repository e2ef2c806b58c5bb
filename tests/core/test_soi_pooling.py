"""Tests for tal_tf.core.soi_pooling against loop-based numpy references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core.soi_pooling import soi_pooling


def np_signal(features, num_steps, x, outside):
  """Feature value [D] at continuous position x: step t's feature sits at t + 0.5."""
  n = min(num_steps, features.shape[0])
  if n == 0 or (outside == "zeros" and not 0.0 <= x < n):
    return np.zeros(features.shape[1])
  centres = np.arange(n) + 0.5
  # np.interp is linear between centres and constant beyond the first / last one,
  # which is both the in-range edge rule and the 'clamp' rule.
  return np.array([np.interp(x, centres, features[:n, d]) for d in range(features.shape[1])])


def np_soi_sample(features, segments, num_steps, num_bins, context, samples, outside):
  """Reference for mode='sample': max over sub-bin centre samples of each bin."""
  batch, proposals = segments.shape[:2]
  out = np.zeros([batch, proposals, num_bins, features.shape[2]])
  for b in range(batch):
    for p in range(proposals):
      start, end = segments[b, p]
      start, end = start - context * (end - start), end + context * (end - start)
      width = (end - start) / num_bins
      for k in range(num_bins):
        values = [np_signal(features[b], num_steps[b],
                            start + (k + (j + 0.5) / samples) * width, outside)
                  for j in range(samples)]
        out[b, p, k] = np.max(values, axis=0)
  return out


def np_soi_max(features, segments, num_steps, num_bins, context, outside):
  """Reference for mode='max': max over steps floor(a) .. ceil(b) - 1 of each bin."""
  batch, proposals = segments.shape[:2]
  out = np.zeros([batch, proposals, num_bins, features.shape[2]])
  for b in range(batch):
    n = num_steps[b]
    for p in range(proposals):
      start, end = segments[b, p]
      start, end = start - context * (end - start), end + context * (end - start)
      width = (end - start) / num_bins
      for k in range(num_bins):
        first = math.floor(start + k * width)
        stop = max(math.ceil(start + (k + 1) * width), first + 1)
        values = []
        for t in range(first, stop):
          if outside == "clamp":
            t = min(max(t, 0), n - 1)
          values.append(features[b, t] if 0 <= t < n else np.zeros(features.shape[2]))
        out[b, p, k] = np.max(values, axis=0) if n > 0 else 0.0
  return out


def random_case(rng, batch=2, max_steps=20, proposals=5, depth=3):
  """Random features with huge values in the padding, and segments around the video."""
  features = rng.normal(size=[batch, max_steps, depth]).astype(np.float32)
  num_steps = rng.integers(1, max_steps + 1, size=batch)
  num_steps[0] = max_steps
  for b in range(batch):
    features[b, num_steps[b]:] = 1e6  # Must never show up in any output.
  start = rng.uniform(-4, max_steps, size=[batch, proposals])
  length = rng.uniform(0.0, 12.0, size=[batch, proposals])
  segments = np.stack([start, start + length], -1).astype(np.float32)
  return features, segments, num_steps.astype(np.int32)


def test_hand_worked():
  features = np.array([[[1.0], [5.0], [2.0], [3.0]]], np.float32)
  segments = np.array([[[0.0, 4.0]]], np.float32)
  # Exact max: bins [0, 2) and [2, 4) -> max(1, 5), max(2, 3).
  out = soi_pooling(features, segments, [4], num_bins=2, mode="max")
  np.testing.assert_allclose(out.numpy()[0, 0, :, 0], [5.0, 3.0])
  # One sample per bin at positions 1.0 and 3.0, halfway between step centres
  # 0.5 / 1.5 and 2.5 / 3.5: (1 + 5) / 2 and (2 + 3) / 2.
  out = soi_pooling(features, segments, [4], num_bins=2, samples_per_bin=1)
  np.testing.assert_allclose(out.numpy()[0, 0, :, 0], [3.0, 2.5])
  # Context 0.5 on [1, 3] extends it to [0, 4]: same as above.
  out = soi_pooling(features, [[[1.0, 3.0]]], [4], num_bins=2, samples_per_bin=1,
                    context_fraction=0.5)
  np.testing.assert_allclose(out.numpy()[0, 0, :, 0], [3.0, 2.5])
  # Segment [-2, 2] of a video with negative features: the half outside reads 0.
  negative = -features
  out = soi_pooling(negative, [[[-2.0, 2.0]]], [4], num_bins=2, mode="max")
  np.testing.assert_allclose(out.numpy()[0, 0, :, 0], [0.0, -1.0])
  out = soi_pooling(negative, [[[-2.0, 2.0]]], [4], num_bins=2, mode="max",
                    outside="clamp")
  np.testing.assert_allclose(out.numpy()[0, 0, :, 0], [-1.0, -1.0])


@pytest.mark.parametrize("outside", ["zeros", "clamp"])
@pytest.mark.parametrize("context", [0.0, 0.5])
def test_sample_mode_matches_numpy(outside, context):
  rng = np.random.default_rng(10)
  features, segments, num_steps = random_case(rng)
  out = soi_pooling(features, segments, num_steps, num_bins=4, context_fraction=context,
                    samples_per_bin=3, outside=outside).numpy()
  expected = np_soi_sample(features, segments, num_steps, 4, context, 3, outside)
  assert out.shape == (2, 5, 4, 3)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  assert out.max() < 1e5  # No padded step leaked in.


@pytest.mark.parametrize("outside", ["zeros", "clamp"])
@pytest.mark.parametrize("context", [0.0, 0.5])
def test_max_mode_matches_numpy(outside, context):
  rng = np.random.default_rng(11)
  features, segments, num_steps = random_case(rng, max_steps=24, proposals=6)
  # Include a zero-length segment and one far past the end.
  segments[0, 0] = [3.5, 3.5]
  segments[1, 1] = [40.0, 45.0]
  out = soi_pooling(features, segments, num_steps, num_bins=3, context_fraction=context,
                    mode="max", outside=outside).numpy()
  expected = np_soi_max(features, segments, num_steps, 3, context, outside)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  assert out.max() < 1e5


def test_empty_video_reads_zeros():
  features = np.full([1, 5, 2], 7.0, np.float32)
  for mode in ("sample", "max"):
    for outside in ("zeros", "clamp"):
      out = soi_pooling(features, [[[0.0, 3.0]]], [0], num_bins=2, mode=mode,
                        outside=outside)
      np.testing.assert_array_equal(out.numpy(), np.zeros([1, 1, 2, 2]))


def test_gradients_flow_to_features():
  # Max mode: bins [0, 3) and [3, 6) pick steps 2 and 4; step 6 is padding.
  features = tf.constant([[[0.0], [1.0], [5.0], [2.0], [7.0], [3.0], [100.0]]])
  with tf.GradientTape() as tape:
    tape.watch(features)
    out = soi_pooling(features, [[[0.0, 6.0]]], [6], num_bins=2, mode="max")
  gradient = tape.gradient(out, features).numpy()[0, :, 0]
  np.testing.assert_array_equal(gradient, [0, 0, 1, 0, 1, 0, 0])

  # Sample mode: the bin's maximum sample at position 2.0 interpolates steps 1 and 2
  # (centres 1.5, 2.5) half and half; one sample per bin.
  with tf.GradientTape() as tape:
    tape.watch(features)
    out = soi_pooling(features, [[[1.5, 2.5]]], [6], num_bins=1, samples_per_bin=1)
  gradient = tape.gradient(out, features).numpy()[0, :, 0]
  np.testing.assert_allclose(gradient, [0, 0.5, 0.5, 0, 0, 0, 0])


@pytest.mark.parametrize("mode", ["sample", "max"])
def test_gradient_matches_finite_differences(mode):
  rng = np.random.default_rng(12)
  features, segments, num_steps = random_case(rng, batch=1, max_steps=9, proposals=3,
                                              depth=2)
  features = features.astype(np.float64)

  def pool(x):
    return soi_pooling(x, segments, num_steps, num_bins=3, samples_per_bin=2, mode=mode,
                       context_fraction=0.25)

  theoretical, numerical = tf.test.compute_gradient(pool, [tf.constant(features)],
                                                    delta=1e-4)
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-4)
  assert np.abs(theoretical[0]).sum() > 0
  # Padded steps get no gradient.
  padded = np.zeros_like(features, bool)
  padded[0, num_steps[0]:] = True
  assert np.all(np.reshape(theoretical[0], (-1,) + features.shape)[:, padded] == 0)


def test_tf_function_dynamic_shapes_and_long_video():
  pool = tf.function(
      lambda f, s, n: (soi_pooling(f, s, n, context_fraction=0.5),
                       soi_pooling(f, s, n, context_fraction=0.5, mode="max")),
      input_signature=[tf.TensorSpec([None, None, None], tf.float32),
                       tf.TensorSpec([None, None, 2], tf.float32),
                       tf.TensorSpec([None], tf.int32)])
  rng = np.random.default_rng(13)
  features, segments, num_steps = random_case(rng, batch=2, max_steps=11, proposals=4)
  sampled, maxed = pool(features, segments, num_steps)
  np.testing.assert_allclose(sampled.numpy(),
                             np_soi_sample(features, segments, num_steps, 7, 0.5, 2,
                                           "zeros"), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(maxed.numpy(),
                             np_soi_max(features, segments, num_steps, 7, 0.5, "zeros"),
                             rtol=1e-6)
  # A long video with many long proposals stays cheap (no [B, P, bins, T, D] mask).
  features = rng.normal(size=[2, 4000, 16]).astype(np.float32)
  start = rng.uniform(0, 3000, size=[2, 300])
  segments = np.stack([start, start + rng.uniform(1, 1000, size=[2, 300])], -1)
  segments = segments.astype(np.float32)
  sampled, maxed = pool(features, segments, np.array([4000, 2500]))
  assert sampled.shape == maxed.shape == (2, 300, 7, 16)
  # Spot-check a few of them against the references (float32 positions near step 3000
  # are only accurate to ~1e-3 steps, hence the looser tolerance for 'sample').
  num_steps = np.array([4000, 2500])
  np.testing.assert_allclose(
      sampled.numpy()[:, :4],
      np_soi_sample(features, segments[:, :4], num_steps, 7, 0.5, 2, "zeros"),
      atol=5e-3)
  np.testing.assert_allclose(
      maxed.numpy()[:, :4], np_soi_max(features, segments[:, :4], num_steps, 7, 0.5,
                                       "zeros"), rtol=1e-6)


def test_bad_arguments_raise():
  features = np.zeros([1, 4, 2], np.float32)
  segments = np.zeros([1, 1, 2], np.float32)
  with pytest.raises(ValueError, match="num_bins"):
    soi_pooling(features, segments, [4], num_bins=0)
  with pytest.raises(ValueError, match="samples_per_bin"):
    soi_pooling(features, segments, [4], samples_per_bin=0)
  with pytest.raises(ValueError, match="context_fraction"):
    soi_pooling(features, segments, [4], context_fraction=-0.5)
  with pytest.raises(ValueError, match="mode"):
    soi_pooling(features, segments, [4], mode="average")
  with pytest.raises(ValueError, match="outside"):
    soi_pooling(features, segments, [4], outside="reflect")
  with pytest.raises(ValueError, match="features"):
    soi_pooling(np.zeros([4, 2], np.float32), segments, [4])
  with pytest.raises(ValueError, match="segments"):
    soi_pooling(features, np.zeros([1, 1, 3], np.float32), [4])
