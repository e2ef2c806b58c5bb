"""Tests for the TAL-Net multiscale and S-CNN sliding-window anchor generators."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.anchor_generators import multiscale_anchor_generator as multiscale
from tal_tf.anchor_generators import sliding_window_anchor_generator as sliding


def np_multiscale(num_steps, scales):
  out = []
  for t in range(num_steps):
    for s in scales:
      out.append([t + 0.5 - s / 2.0, t + 0.5 + s / 2.0])
  return np.array(out, np.float64).reshape(-1, 2)


def np_sliding(num_steps, lengths, overlap, frames_per_step):
  num_frames = num_steps * frames_per_step
  out = []
  for length in lengths:
    stride = length * (1.0 - overlap)
    k = 0
    while k * stride + length <= num_frames + 1e-9:
      out.append([k * stride / frames_per_step, (k * stride + length) / frames_per_step])
      k += 1
  return np.array(out, np.float64).reshape(-1, 2)


@pytest.mark.parametrize("num_steps", [0, 1, 7])
def test_multiscale_matches_reference(num_steps):
  gen = multiscale.MultiscaleAnchorGenerator()
  got = gen.generate(num_steps).numpy()
  assert gen.num_anchors_per_location() == 9
  np.testing.assert_allclose(got, np_multiscale(num_steps, (1, 2, 3, 4, 5, 6, 8, 11, 16)))
  assert int(gen.num_anchors(num_steps)) == got.shape[0]


def test_multiscale_location_major_order_lines_up_with_reshaped_predictions():
  scales = (2, 1, 5)
  gen = multiscale.MultiscaleAnchorGenerator(scales=scales)
  num_steps, k = 4, len(scales)
  anchors = gen.generate(num_steps).numpy()
  # A per-step prediction [T, K] that records (t, k); flattened as [T * K] like the heads.
  preds = np.array([[(t, kk) for kk in range(k)] for t in range(num_steps)]).reshape(-1, 2)
  for (t, kk), (start, end) in zip(preds, anchors):
    assert (start + end) / 2.0 == pytest.approx(t + 0.5)
    assert end - start == pytest.approx(scales[kk])


def test_multiscale_dynamic_num_steps_in_tf_function():
  gen = multiscale.MultiscaleAnchorGenerator(scales=(1, 3))
  fn = tf.function(gen.generate, input_signature=[tf.TensorSpec([], tf.int32)])
  for t in (0, 3, 5):
    np.testing.assert_allclose(fn(tf.constant(t)).numpy(), np_multiscale(t, (1, 3)))


@pytest.mark.parametrize("scales,match", [((1, -2), "positive"), ((0, 1), "positive"),
                                          ((1, 2, 2), "duplicate"), ((), "at least one"),
                                          (("a",), "scales")])
def test_multiscale_bad_scales(scales, match):
  with pytest.raises(ValueError, match=match):
    multiscale.MultiscaleAnchorGenerator(scales=scales)


def test_num_steps_must_be_scalar_non_negative():
  gen = multiscale.MultiscaleAnchorGenerator()
  with pytest.raises(ValueError, match="num_steps"):
    gen.generate([3, 4])
  with pytest.raises(ValueError, match="num_steps"):
    gen.generate(-1)


@pytest.mark.parametrize("num_steps,frames_per_step", [(0, 1), (15, 1), (16, 1), (100, 1),
                                                       (40, 8), (13, 16)])
def test_sliding_window_matches_reference(num_steps, frames_per_step):
  gen = sliding.SlidingWindowAnchorGenerator(frames_per_step=frames_per_step)
  got = gen.generate(num_steps).numpy()
  expected = np_sliding(num_steps, (16, 32, 64, 128, 256, 512), 0.75, frames_per_step)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  assert int(gen.num_anchors(num_steps)) == expected.shape[0]


def test_sliding_window_hand_case():
  # 48 frames, windows of 16 and 32 frames at 50% overlap: strides 8 and 16 frames.
  gen = sliding.SlidingWindowAnchorGenerator(window_lengths=(16, 32), overlap=0.5,
                                             frames_per_step=8)
  got = gen.generate(6).numpy()
  expected = np.array([[0, 16], [8, 24], [16, 32], [24, 40], [32, 48],
                       [0, 32], [16, 48]], np.float64) / 8.0
  np.testing.assert_allclose(got, expected)
  # Every window lies inside the video.
  assert got.min() >= 0.0 and got.max() <= 6.0


def test_sliding_window_dynamic_num_steps_in_tf_function():
  gen = sliding.SlidingWindowAnchorGenerator(window_lengths=(4, 8), overlap=0.75)
  fn = tf.function(gen.generate, input_signature=[tf.TensorSpec([], tf.int32)])
  for t in (3, 9, 20):
    np.testing.assert_allclose(fn(tf.constant(t)).numpy(), np_sliding(t, (4, 8), 0.75, 1),
                               atol=1e-6)


def test_sliding_window_is_not_location_based():
  gen = sliding.SlidingWindowAnchorGenerator()
  with pytest.raises(NotImplementedError, match="num_anchors"):
    gen.num_anchors_per_location()


@pytest.mark.parametrize("kwargs,match", [
    (dict(overlap=1.0), "overlap"), (dict(overlap=-0.1), "overlap"),
    (dict(window_lengths=(16, -32)), "window_lengths"),
    (dict(window_lengths=(16, 16)), "duplicate"),
    (dict(frames_per_step=0), "frames_per_step")])
def test_sliding_window_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sliding.SlidingWindowAnchorGenerator(**kwargs)
