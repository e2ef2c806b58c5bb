"""Structured temporal pyramid pooling vs a loop-based numpy reference."""
import numpy as np
import pytest

from tal_tf.core import pyramid_pooling


def np_mean(feat, n, a, b):
  """Exact mean of the step signal (step t covers [t, t + 1)) over [a, b] clipped to [0, n]."""
  a0, b0 = a, b
  a, b = min(max(a, 0.0), n), min(max(b, 0.0), n)
  b = max(a, b)
  if b - a <= 0:
    if 0 <= a0 < n:
      return feat[int(np.floor(a0))]
    return np.zeros(feat.shape[1])
  total = np.zeros(feat.shape[1])
  for t in range(n):
    overlap = max(0.0, min(b, t + 1) - max(a, t))
    total += overlap * feat[t]
  return total / (b - a)


def np_stpp(features, segments, num_steps, context, start_levels, course_levels, end_levels):
  batch, props = segments.shape[:2]
  out = []
  for bi in range(batch):
    row = []
    for p in range(props):
      s, e = segments[bi, p]
      l = e - s
      parts = []
      for a, b, levels in ((s - context * l, s, start_levels), (s, e, course_levels),
                           (e, e + context * l, end_levels)):
        for k in levels:
          w = (b - a) / k
          for i in range(k):
            parts.append(np_mean(features[bi], num_steps[bi], a + i * w, a + (i + 1) * w))
      row.append(parts)
    out.append(row)
  return np.array(out)


@pytest.mark.parametrize("levels", [((1,), (1, 2), (1,)), ((2,), (1, 2, 3), (1,))])
def test_matches_numpy(levels):
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 15, 3)).astype(np.float32)
  num_steps = np.array([15, 9])
  starts = rng.uniform(-3, 14, size=(2, 6))
  lengths = rng.uniform(0, 8, size=(2, 6))
  segments = np.stack([starts, starts + lengths], -1).astype(np.float32)
  segments[0, 0] = [4.0, 4.0]   # zero-length inside
  segments[1, 1] = [11.0, 13.0]  # wholly in the padding of video 1
  got = pyramid_pooling.structured_pyramid_pooling(features, segments, num_steps, 0.5,
                                                   *levels).numpy()
  want = np_stpp(features, segments, num_steps, 0.5, *levels)
  assert got.shape == (2, 6, pyramid_pooling.num_parts(*levels), 3)
  np.testing.assert_allclose(got, want, atol=1e-4)
  np.testing.assert_allclose(got[1, 1], 0.0)


def test_hand_worked_parts():
  features = np.arange(8, dtype=np.float32).reshape(1, 8, 1)  # step t has value t
  got = pyramid_pooling.structured_pyramid_pooling(features, np.array([[[2., 6.]]]),
                                                   [8]).numpy()[0, 0, :, 0]
  # start [0, 2] -> 0.5; course [2, 6] -> 3.5, halves 2.5 / 4.5; end [6, 8] -> 6.5.
  np.testing.assert_allclose(got, [0.5, 3.5, 2.5, 4.5, 6.5])
