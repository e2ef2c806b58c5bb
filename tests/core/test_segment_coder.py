"""Tests for tal_tf.core.segment_coder (TAL-Net supplementary Eq. 2)."""
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tal_tf.core import segment_coder


def np_encode(segments, anchors, sc=10.0, sl=5.0):
  segments = np.asarray(segments, np.float64).reshape(-1, 2)
  anchors = np.asarray(anchors, np.float64).reshape(-1, 2)
  out = []
  for (s, e), (sa, ea) in zip(segments, anchors):
    c, l = (s + e) / 2, e - s
    ca, la = (sa + ea) / 2, ea - sa
    out.append([sc * (c - ca) / la, sl * math.log(l / la)])
  return np.array(out)


def test_paper_formula_by_hand():
  coder = segment_coder.CenterLengthCoder()
  # Anchor [0, 4]: ca = 2, la = 4. Ground truth [1, 7]: c = 4, l = 6.
  got = coder.encode([[1.0, 7.0]], [[0.0, 4.0]]).numpy()
  np.testing.assert_allclose(got, [[10.0 * 2.0 / 4.0, 5.0 * math.log(6.0 / 4.0)]], rtol=1e-6)
  assert coder.code_size == 2


def test_encode_matches_reference_batched():
  rng = np.random.default_rng(0)
  starts = rng.uniform(0, 50, (3, 4, 2))
  lengths = rng.uniform(0.5, 20, (3, 4, 2))
  segs = np.stack([starts[..., 0], starts[..., 0] + lengths[..., 0]], -1).astype(np.float32)
  anchors = np.stack([starts[..., 1], starts[..., 1] + lengths[..., 1]], -1).astype(np.float32)
  coder = segment_coder.CenterLengthCoder(scale_factors=(10.0, 5.0))
  got = coder.encode(segs, anchors).numpy()
  assert got.shape == (3, 4, 2)
  np.testing.assert_allclose(got.reshape(-1, 2), np_encode(segs, anchors), rtol=1e-4, atol=1e-4)
  other = segment_coder.CenterLengthCoder(scale_factors=(1.0, 2.0)).encode(segs, anchors).numpy()
  np.testing.assert_allclose(other.reshape(-1, 2), np_encode(segs, anchors, 1.0, 2.0),
                             rtol=1e-4, atol=1e-4)


_coord = st.floats(min_value=-100.0, max_value=100.0, allow_nan=False)
# Length ratios stay below the default decode clamp (62.5x) so decode inverts encode exactly.
_len = st.floats(min_value=0.5, max_value=20.0, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(_coord, _len, _coord, _len), min_size=1, max_size=6))
def test_round_trip_property(rows):
  segs = np.array([[s, s + l] for s, l, _, _ in rows], np.float32)
  anchors = np.array([[s, s + l] for _, _, s, l in rows], np.float32)
  coder = segment_coder.CenterLengthCoder()
  decoded = coder.decode(coder.encode(segs, anchors), anchors).numpy()
  np.testing.assert_allclose(decoded, segs, rtol=1e-4, atol=1e-3)


def test_decode_clamps_exponent_so_huge_codes_stay_finite():
  coder = segment_coder.CenterLengthCoder(max_log_length_delta=math.log(10.0))
  anchors = np.array([[0.0, 2.0], [0.0, 2.0]], np.float32)
  codes = np.array([[0.0, 1e6], [0.0, 500.0]], np.float32)
  got = coder.decode(codes, anchors).numpy()
  assert np.all(np.isfinite(got))
  # Clamped to l = la * 10 = 20 around the anchor center 1.
  np.testing.assert_allclose(got, [[-9.0, 11.0], [-9.0, 11.0]], rtol=1e-5)
  default = segment_coder.CenterLengthCoder().decode(codes, anchors).numpy()
  assert np.all(np.isfinite(default))
  np.testing.assert_allclose(default[0, 1] - default[0, 0], 2.0 * 1000.0 / 16.0, rtol=1e-4)


def test_encode_zero_length_is_finite():
  coder = segment_coder.CenterLengthCoder()
  got = coder.encode([[3.0, 3.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]]).numpy()
  assert np.all(np.isfinite(got))


def test_public_methods_open_name_scopes():
  coder = segment_coder.CenterLengthCoder()
  graph = tf.Graph()
  with graph.as_default():
    anchors = tf.constant([[0.0, 1.0]])
    coder.decode(coder.encode(anchors, anchors), anchors)
  names = [op.name for op in graph.get_operations()]
  assert any(n.startswith("Encode/") for n in names)
  assert any(n.startswith("Decode/") for n in names)


def test_bad_arguments():
  with pytest.raises(ValueError, match="scale_factors"):
    segment_coder.CenterLengthCoder(scale_factors=(10.0, -5.0))
  with pytest.raises(ValueError, match="scale_factors"):
    segment_coder.CenterLengthCoder(scale_factors=(10.0,))
  with pytest.raises(ValueError, match="max_log_length_delta"):
    segment_coder.CenterLengthCoder(max_log_length_delta=0.0)
  coder = segment_coder.CenterLengthCoder()
  with pytest.raises(ValueError, match="rel_codes"):
    coder.decode(np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32))
  with pytest.raises(ValueError, match="anchors"):
    coder.encode(np.zeros((2, 2), np.float32), np.zeros((2, 4), np.float32))
