"""The host-side tIoU: hand values, and agreement with the graph-side op on random segments."""

import numpy as np
import tensorflow as tf

from tal_tf.core import segment_ops
from tal_tf.core import segment_ops_np


def test_pairwise_tiou_hand_values():
  a = np.array([[0.0, 10.0], [5.0, 5.0]])
  b = np.array([[5.0, 15.0], [20.0, 30.0], [5.0, 5.0], [2.0, 3.0]])
  # [0,10] vs [5,15]: 5 / 15; disjoint: 0; zero-length vs zero-length: defined as 0;
  # [0,10] vs [2,3]: 1 / 10.
  np.testing.assert_allclose(segment_ops_np.pairwise_tiou(a, b),
                             [[1 / 3, 0, 0, 0.1], [0, 0, 0, 0]], atol=1e-12)
  np.testing.assert_array_equal(segment_ops_np.intersection(a, b),
                                [[5, -10, 0, 1], [0, -15, 0, -2]])
  assert segment_ops_np.pairwise_tiou(np.zeros((0, 2)), b).shape == (0, 4)


def test_pairwise_tiou_matches_the_graph_op():
  rng = np.random.default_rng(0)
  starts = rng.uniform(0, 50, size=(2, 40))
  a = np.stack([starts[0], starts[0] + rng.uniform(0.1, 20, 40)], -1)
  b = np.stack([starts[1], starts[1] + rng.uniform(0.1, 20, 40)], -1)
  expected = segment_ops.pairwise_tiou(a, b).numpy()  # float32 inside the graph op
  np.testing.assert_allclose(segment_ops_np.pairwise_tiou(a, b), expected, atol=2e-6)
  assert (expected > 0).sum() > 50  # overlapping pairs were really compared
