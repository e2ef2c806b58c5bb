"""ETP Refinement Network units: grid fitting, cutting, context, on hand-worked proposals."""
import numpy as np
import pytest

from tal_tf.core import pyramid_pooling
from tal_tf.core import unit_ops


def test_fit_to_grid_hand_worked():
  # d = 4, h = 2. [3, 9]: start floor(3/2)*2 = 2; units [2,6], [4,8], [6,10] reach 9 -> n = 3.
  # [0, 4]: exactly one unit. [5, 5.5]: start 4, one unit [4, 8]. [2, 6.0001]: two units.
  fitted, counts = unit_ops.fit_to_grid(
      np.array([[3., 9.], [0., 4.], [5., 5.5], [2., 6.5]]), 4.0, 2.0)
  np.testing.assert_allclose(fitted.numpy(), [[2, 10], [0, 4], [4, 8], [2, 8]])
  assert list(counts.numpy()) == [3, 1, 1, 2]


def test_fitted_span_covers_proposal_and_is_minimal():
  rng = np.random.default_rng(0)
  segs = np.sort(rng.random((200, 2)) * 50, axis=1).astype(np.float32)
  fitted, counts = unit_ops.fit_to_grid(segs, 6.0, 3.0)
  fitted, counts = fitted.numpy(), counts.numpy()
  assert np.all(fitted[:, 0] <= segs[:, 0] + 1e-5) and np.all(fitted[:, 1] >= segs[:, 1] - 1e-4)
  np.testing.assert_allclose(fitted[:, 0] % 3.0, 0.0, atol=1e-5)
  np.testing.assert_allclose(fitted[:, 1] - fitted[:, 0], (counts - 1) * 3.0 + 6.0, atol=1e-5)
  # One unit fewer would not reach the end (unless one unit already suffices).
  shorter = fitted[:, 1] - 3.0
  assert np.all((counts == 1) | (shorter < segs[:, 1] - 1e-4))


def test_cut_units_and_context():
  fitted, counts = unit_ops.fit_to_grid(np.array([[3., 9.]]), 4.0, 2.0)
  units, valid = unit_ops.cut_units(fitted, counts, 4.0, 2.0, max_units=4)
  np.testing.assert_allclose(units.numpy()[0, :3], [[2, 6], [4, 8], [6, 10]])
  assert list(valid.numpy()[0]) == [True, True, True, False]
  context = unit_ops.unit_context(units, 4.0).numpy()[0, :3]
  np.testing.assert_allclose(context, [[0, 8], [2, 10], [4, 12]])  # [s - d/2, s + d + d/2]
  # The pyramid's stages with context 1/2 span exactly the unit's context range.
  bounds = pyramid_pooling.part_bounds(units, 0.5).numpy()[0, :3]
  np.testing.assert_allclose(bounds[:, 0, 0], context[:, 0])
  np.testing.assert_allclose(bounds[:, -1, 1], context[:, 1])


def test_cut_units_spreads_long_proposals():
  # 10 units at stride 2 from 0; max 4 -> indices round(j * 9 / 3) = 0, 3, 6, 9.
  fitted, counts = unit_ops.fit_to_grid(np.array([[0., 22.]]), 4.0, 2.0)
  assert counts.numpy()[0] == 10
  units, valid = unit_ops.cut_units(fitted, counts, 4.0, 2.0, max_units=4)
  np.testing.assert_allclose(units.numpy()[0, :, 0], [0, 6, 12, 18])
  assert valid.numpy().all()


def test_snap_to_grid():
  snapped = unit_ops.snap_to_grid(np.array([[2.9, 9.2], [5.0, 5.4], [0.4, 0.6]]), 2.0).numpy()
  np.testing.assert_allclose(snapped, [[2, 10], [4, 6], [0, 2]])


def test_bad_arguments():
  with pytest.raises(ValueError, match="unit_length"):
    unit_ops.fit_to_grid(np.zeros([1, 2]), 0.0, 1.0)
  with pytest.raises(ValueError, match="max_units"):
    unit_ops.cut_units(np.zeros([1, 2]), np.ones([1]), 4.0, 2.0, 0)
