"""Tests for Match, ArgMaxMatcher and ThreeWayMatcher against loop-based numpy references."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.matchers import argmax_matcher
from tal_tf.matchers import matcher
from tal_tf.matchers import three_way_matcher


def np_argmax_match(sim, num_valid, matched, unmatched, force=False, force_min=0.0, strict=True,
                    force_max=np.inf, keep_positives=False):
  """Reference: per batch element, per row, loops over valid columns."""
  b_size, n, _ = sim.shape
  out = np.full((b_size, n), -1, np.int64)
  for b in range(b_size):
    m = int(num_valid[b])
    for i in range(n):
      if m == 0:
        out[b, i] = -1
        continue
      j = int(np.argmax(sim[b, i, :m]))
      v = sim[b, i, j]
      is_pos = v > matched if strict else v >= matched
      if is_pos:
        out[b, i] = j
      elif matched == unmatched or v < unmatched:
        out[b, i] = -1
      else:
        out[b, i] = -2
    if force and n > 0:
      positive = out[b] >= 0
      forced = {}  # row -> list of columns forcing it
      for j in range(m):
        i = int(np.argmax(sim[b, :, j]))
        if force_min < sim[b, i, j] <= force_max:
          forced.setdefault(i, []).append(j)
      for i, cols in forced.items():
        if keep_positives and positive[i]:
          continue
        out[b, i] = max(cols, key=lambda c: (sim[b, i, c], -c))
  return out


def np_three_way(sim, num_valid, pos=0.7, inc=0.3, bg=0.1):
  b_size, n, _ = sim.shape
  results = np.full((b_size, n), -1, np.int64)
  incomplete = np.full((b_size, n), -1, np.int64)
  for b in range(b_size):
    m = int(num_valid[b])
    for i in range(n):
      if m == 0:
        continue
      j = int(np.argmax(sim[b, i, :m]))
      v = sim[b, i, j]
      if v > pos:
        results[b, i] = j
      elif v >= inc:
        results[b, i] = -2
        incomplete[b, i] = j
      elif v < bg:
        results[b, i] = -1
      else:
        results[b, i] = -2
  return results, incomplete


def random_similarity(seed, shape=(4, 10, 5)):
  rng = np.random.default_rng(seed)
  # Sparse, mostly sub-threshold similarities, so many ground truths have no positive row and
  # forcing (with and without a minimum) changes the result.
  sim = rng.uniform(0, 0.85, size=shape).astype(np.float32)
  sim[rng.uniform(size=shape) < 0.6] = 0.0
  num_valid = rng.integers(0, shape[2] + 1, size=shape[0])
  num_valid[0] = shape[2]
  # Padded columns get the highest similarity: they must still never match.
  for b in range(shape[0]):
    sim[b, :, num_valid[b]:] = 0.99
  return sim, num_valid


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("config", [
    dict(matched=0.7, unmatched=0.3),
    dict(matched=0.7, unmatched=0.3, force=True, force_min=0.0),
    dict(matched=0.7, unmatched=0.3, force=True, force_min=0.5),
    dict(matched=0.7, unmatched=0.3, force=True, force_min=0.5, force_max=0.7),
    dict(matched=0.7, unmatched=0.3, force=True, force_min=0.5, force_max=0.7,
         keep_positives=True),
    dict(matched=0.6, unmatched=0.3, force=True, force_min=0.0, keep_positives=True),
    dict(matched=0.5, unmatched=0.5),
    dict(matched=0.6, unmatched=0.2, strict=False, force=True, force_min=-1.0)])
def test_argmax_matcher_matches_reference(seed, config):
  sim, num_valid = random_similarity(seed)
  m = argmax_matcher.ArgMaxMatcher(
      matched_threshold=config["matched"], unmatched_threshold=config["unmatched"],
      force_match_for_each_column=config.get("force", False),
      force_match_min_similarity=config.get("force_min", 0.0),
      force_match_max_similarity=config.get("force_max", np.inf),
      force_match_overrides_positives=not config.get("keep_positives", False),
      strict_positive=config.get("strict", True))
  got = m.match(sim, num_valid).match_results.numpy()
  np.testing.assert_array_equal(got, np_argmax_match(sim, num_valid, **config))


def test_presets_hand_case():
  # One row per column case; columns: gt0 best 0.6, gt1 best 0.45, gt2 best 0.0.
  sim = np.array([[[0.6, 0.0, 0.0],
                   [0.2, 0.45, 0.0],
                   [0.0, 0.0, 0.0]]], np.float32)
  tal = argmax_matcher.ArgMaxMatcher(**argmax_matcher.TAL_NET_PROPOSAL).match(sim, [3])
  np.testing.assert_array_equal(tal.match_results.numpy(), [[0, 1, -1]])
  scnn = argmax_matcher.ArgMaxMatcher(**argmax_matcher.S_CNN_PROPOSAL).match(sim, [3])
  np.testing.assert_array_equal(scnn.match_results.numpy(), [[0, -2, -1]])
  cls = argmax_matcher.ArgMaxMatcher(**argmax_matcher.TAL_NET_CLASSIFICATION).match(sim, [3])
  np.testing.assert_array_equal(cls.match_results.numpy(), [[0, -1, -1]])


def test_scnn_preset_forces_only_groundtruth_without_a_row_above_0_7():
  # gt2's best row r2 is at 0.6: forced (0.5 < 0.6 <= 0.7); gt3's best row r3 at 0.45 is not
  # (ignored band); r0, r1 are above 0.7 and keep their argmax.
  sim = np.array([[[0.75, 0.8, 0.0, 0.0],
                   [0.0, 0.72, 0.0, 0.0],
                   [0.0, 0.0, 0.6, 0.0],
                   [0.0, 0.0, 0.0, 0.45]]], np.float32)
  scnn = argmax_matcher.ArgMaxMatcher(**argmax_matcher.S_CNN_PROPOSAL).match(sim, [4])
  np.testing.assert_array_equal(scnn.match_results.numpy(), [[1, 1, 2, -2]])
  # Where the 0.7 bound matters: r0's argmax is gtA (0.8) but r0 is gtB's best row (0.75).
  # gtB has a row above 0.7, so S-CNN does not force: r0 stays with gtA. Unbounded forcing
  # (min 0.5 only) pulls r0 to gtB.
  sim = np.array([[[0.8, 0.75],
                   [0.9, 0.0]]], np.float32)
  scnn = argmax_matcher.ArgMaxMatcher(**argmax_matcher.S_CNN_PROPOSAL).match(sim, [2])
  np.testing.assert_array_equal(scnn.match_results.numpy(), [[0, 0]])
  unbounded = argmax_matcher.ArgMaxMatcher(0.7, 0.3, force_match_for_each_column=True,
                                           force_match_min_similarity=0.5)
  np.testing.assert_array_equal(unbounded.match(sim, [2]).match_results.numpy(), [[1, 0]])
  # A window above 0.7 with gtA (0.9) that is also gtB's best (0.6, no window above 0.7 for
  # gtB): S-CNN keeps rule (1)'s label (gtA); Faster R-CNN-style forcing moves it to gtB.
  # (gtA's own best window is another one, at 0.95.)
  sim = np.array([[[0.9, 0.6], [0.95, 0.0]]], np.float32)
  scnn = argmax_matcher.ArgMaxMatcher(**argmax_matcher.S_CNN_PROPOSAL).match(sim, [2])
  np.testing.assert_array_equal(scnn.match_results.numpy(), [[0, 0]])
  np.testing.assert_array_equal(unbounded.match(sim, [2]).match_results.numpy(), [[1, 0]])


def test_threshold_boundaries_strict_and_inclusive():
  sim = np.array([[[0.7], [0.3], [0.5]]], np.float32)
  strict = argmax_matcher.ArgMaxMatcher(0.7, 0.3).match(sim, [1]).match_results.numpy()
  np.testing.assert_array_equal(strict, [[-2, -2, -2]])
  inclusive = argmax_matcher.ArgMaxMatcher(0.7, 0.3, strict_positive=False).match(sim, [1])
  np.testing.assert_array_equal(inclusive.match_results.numpy(), [[0, -2, -2]])
  equal = argmax_matcher.ArgMaxMatcher(0.5, 0.5).match(sim, [1]).match_results.numpy()
  np.testing.assert_array_equal(equal, [[0, -1, -1]])


def test_forced_row_shared_by_two_columns_goes_to_higher_similarity():
  sim = np.array([[[0.4, 0.6], [0.1, 0.2]]], np.float32)
  m = argmax_matcher.ArgMaxMatcher(0.7, 0.3, force_match_for_each_column=True)
  np.testing.assert_array_equal(m.match(sim, [2]).match_results.numpy(), [[1, -1]])


def test_empty_columns_and_rows():
  m = argmax_matcher.ArgMaxMatcher(0.7, 0.3, force_match_for_each_column=True)
  got = m.match(np.zeros((2, 5, 0), np.float32), [0, 0]).match_results.numpy()
  np.testing.assert_array_equal(got, np.full((2, 5), -1))
  got = m.match(np.zeros((2, 0, 3), np.float32), [3, 1]).match_results.numpy()
  assert got.shape == (2, 0)
  got = m.match(np.full((1, 2, 2), 0.9, np.float32), [0]).match_results.numpy()
  np.testing.assert_array_equal(got, [[-1, -1]])


def test_matcher_in_tf_function_dynamic_shapes():
  m = argmax_matcher.ArgMaxMatcher(0.7, 0.3, force_match_for_each_column=True)
  fn = tf.function(lambda s, n: m.match(s, n).match_results, input_signature=[
      tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None], tf.int32)])
  sim, num_valid = random_similarity(5)
  np.testing.assert_array_equal(
      fn(sim, num_valid.astype(np.int32)).numpy(),
      np_argmax_match(sim, num_valid, 0.7, 0.3, force=True))


def test_match_helpers_and_gather():
  match = matcher.Match(tf.constant([[1, -1, -2, 0], [-1, -1, 0, -2]]))
  np.testing.assert_array_equal(match.matched_column_indicator().numpy(),
                                [[True, False, False, True], [False, False, True, False]])
  np.testing.assert_array_equal(match.unmatched_indicator().numpy(),
                                [[False, True, False, False], [True, True, False, False]])
  np.testing.assert_array_equal(match.ignored_indicator().numpy(),
                                [[False, False, True, False], [False, False, False, True]])
  np.testing.assert_array_equal(match.num_matched_rows().numpy(), [2, 1])
  np.testing.assert_array_equal(match.incomplete_indicator().numpy(), np.zeros((2, 4), bool))
  labels = tf.constant([[5, 7], [9, 0]])
  np.testing.assert_array_equal(match.gather_based_on_match(labels, 0, -3).numpy(),
                                [[7, 0, -3, 5], [0, 0, 9, -3]])
  segs = tf.constant([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [0.0, 0.0]]])
  got = match.gather_based_on_match(segs, [-1.0, -1.0], [-2.0, -2.0]).numpy()
  np.testing.assert_array_equal(got, [[[3, 4], [-1, -1], [-2, -2], [1, 2]],
                                      [[-1, -1], [-1, -1], [5, 6], [-2, -2]]])
  empty = matcher.Match(tf.constant([[-1, -2]]))
  np.testing.assert_array_equal(
      empty.gather_based_on_match(tf.zeros([1, 0], tf.int32), 4, 5).numpy(), [[4, 5]])
  with pytest.raises(ValueError, match="incomplete"):
    match.gather_incomplete(labels, 0)


@pytest.mark.parametrize("seed", [0, 3])
def test_three_way_matcher_matches_reference(seed):
  sim, num_valid = random_similarity(seed)
  match = three_way_matcher.ThreeWayMatcher().match(sim, num_valid)
  expected, expected_incomplete = np_three_way(sim, num_valid)
  np.testing.assert_array_equal(match.match_results.numpy(), expected)
  np.testing.assert_array_equal(match.incomplete_match_results.numpy(), expected_incomplete)
  np.testing.assert_array_equal(match.incomplete_indicator().numpy(), expected_incomplete >= 0)


def test_three_way_matcher_hand_case():
  # Rows: 0.8 positive, 0.7 incomplete (paper's gap at exactly 0.7), 0.3 incomplete,
  # 0.2 ignored, 0.05 background, 0.1 ignored (background is strictly < 0.1).
  sim = np.array([[[0.8, 0.1], [0.0, 0.7], [0.3, 0.0], [0.2, 0.0], [0.05, 0.0], [0.1, 0.0]]],
                 np.float32)
  match = three_way_matcher.ThreeWayMatcher().match(sim, [2])
  np.testing.assert_array_equal(match.match_results.numpy(), [[0, -2, -2, -2, -1, -2]])
  np.testing.assert_array_equal(match.incomplete_match_results.numpy(), [[-1, 1, 0, -1, -1, -1]])
  np.testing.assert_array_equal(match.gather_incomplete(tf.constant([[3, 4]]), 0).numpy(),
                                [[0, 4, 3, 0, 0, 0]])


def test_bad_arguments():
  with pytest.raises(ValueError, match="unmatched_threshold"):
    argmax_matcher.ArgMaxMatcher(0.3, 0.7)
  with pytest.raises(ValueError, match="matched_threshold"):
    argmax_matcher.ArgMaxMatcher(float("nan"), 0.3)
  with pytest.raises(ValueError, match="force_match_min_similarity"):
    argmax_matcher.ArgMaxMatcher(0.7, 0.3, force_match_min_similarity=-5.0)
  with pytest.raises(ValueError, match="background_threshold"):
    three_way_matcher.ThreeWayMatcher(positive_threshold=0.7, incomplete_threshold=0.3,
                                      background_threshold=0.5)
  m = argmax_matcher.ArgMaxMatcher(0.7, 0.3)
  with pytest.raises(ValueError, match="similarity"):
    m.match(np.zeros((4, 3), np.float32), [3])
  with pytest.raises(ValueError, match="num_valid_columns"):
    m.match(np.zeros((1, 4, 3), np.float32), [[3]])
  with pytest.raises(ValueError, match="match_results"):
    matcher.Match(tf.zeros([3], tf.int32))
