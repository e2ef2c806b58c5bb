"""Algorithm 1 (ETP) in TF vs a plain numpy/Python transcription, and hand-made cases."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import actionness_grouping as ag


def np_conn_component(curve, n, threshold, min_length, max_length, iterations=None):
  """Literal ConnComponent: sets of step indices, grown, merged pairwise, moved."""
  cset = [{i} for i in range(n) if curve[i] >= threshold]
  pset = []
  it = 0
  while len(cset) > 1 and (iterations is None or it < iterations):
    it += 1
    cset = [set(range(max(min(c) - 1, 0), min(max(c) + 1, n - 1) + 1)) for c in cset]
    merged = True
    while merged:  # merge intersecting pairs until none intersect
      merged = False
      for a in range(len(cset)):
        for b in range(a + 1, len(cset)):
          if cset[a] & cset[b]:
            union = cset[a] | cset[b]
            cset = [c for k, c in enumerate(cset) if k not in (a, b)] + [union]
            merged = True
            break
        if merged:
          break
    keep = []
    for c in cset:
      if min_length < len(c) < max_length:
        pset.append((min(c), max(c)))
      else:
        keep.append(c)
    cset = keep
  return pset


def np_smooth(curve, n, sigma, truncate=3.0):
  out = np.zeros_like(curve)
  if sigma <= 0:
    out[:n] = curve[:n]
    return out
  r = max(int(math.ceil(truncate * sigma)), 1)
  for i in range(n):
    num = den = 0.0
    for k in range(-r, r + 1):
      if 0 <= i + k < n:
        w = math.exp(-k * k / (2 * sigma * sigma))
        num += w * curve[i + k]
        den += w
    out[i] = num / den
  return out


def np_candidates(scores, n, thresholds, min_length, max_length, sigma, iterations=None):
  """Union over thresholds, raw/smoothed and the K+1 curves: {(start, end_exclusive): score}."""
  k = scores.shape[1]
  curves = [scores[:, j] for j in range(k)] + [scores.mean(axis=1)]
  out = {}
  for th in thresholds:
    for j, curve in enumerate(curves):
      versions = [curve] + ([np_smooth(curve, n, sigma)] if sigma > 0 else [])
      for version in versions:
        for p, q in np_conn_component(version, n, th, min_length, max_length, iterations):
          out.setdefault((p, q + 1), []).append(float(np.mean(curve[p:q + 1])))
  return out


def np_nms(cands, iou_threshold, max_out):
  items = []
  for seg, scores in cands.items():
    for s in scores:
      items.append((s, seg))
  items.sort(key=lambda x: -x[0])
  kept = []
  for s, seg in items:
    ok = True
    for _, kseg in kept:
      inter = max(0, min(seg[1], kseg[1]) - max(seg[0], kseg[0]))
      union = (seg[1] - seg[0]) + (kseg[1] - kseg[0]) - inter
      if inter / union > iou_threshold:
        ok = False
        break
    if ok:
      kept.append((s, seg))
    if len(kept) == max_out:
      break
  return kept


def _tf_components(curve, n, threshold, min_length, max_length, iterations=0):
  f, s, e = ag.connected_components(curve[None].astype(np.float32), [n], threshold,
                                    min_length, max_length, iterations)
  f, s, e = f.numpy()[0], s.numpy()[0], e.numpy()[0]
  return sorted((int(a), int(b)) for a, b in zip(s[f], e[f]))


def test_hand_made_components():
  #          0    1    2    3    4    5    6    7    8    9   10   11
  curve = np.array([0., .9, .9, .9, 0., 0., .8, 0., .7, 0., 0., 0.])
  # Iteration 1: {1},{2},{3} -> {0..4}; {6} -> {5..7}, {8} -> {7..9} merge -> {5..9}.
  # min 3 < 5 < max 7: both moved (sizes 5 and 5).
  assert _tf_components(curve, 12, 0.5, 3, 7) == [(0, 4), (5, 9)]
  # With max 5 neither moves at iteration 1; iteration 2: {0..5} and {4..10} intersect ->
  # one component {0..10} -> too long, alone -> stop: nothing.
  assert _tf_components(curve, 12, 0.5, 3, 5) == []
  # A single seed never enters the loop (|CSet| = 1).
  assert _tf_components(np.array([0., 1., 0., 0.]), 4, 0.5, 0, 5) == []
  # Growth stops at the edges: seeds {0},{1} -> {0..2}, size 3.
  assert _tf_components(np.array([1., 1., 0., 0., 0.]), 5, 0.5, 2, 4) == [(0, 2)]
  # Padded steps are no seeds: only steps < 3 are read.
  assert _tf_components(np.array([1., 0., 1., 1., 1.]), 3, 0.5, 0, 10) == [(0, 2)]
  # Adjacent but disjoint grown components do not merge: {1} -> {0..2}, {4} -> {3..5}.
  assert _tf_components(np.array([0., 1., 0., 0., 1., 0.]), 6, 0.5, 2, 4) == [(0, 2), (3, 5)]


@pytest.mark.parametrize("seed", range(6))
def test_components_match_numpy(seed):
  rng = np.random.default_rng(seed)
  n_curves, t = 7, 40
  curves = rng.random((n_curves, t)).astype(np.float32)
  lengths = rng.integers(0, t + 1, n_curves)
  lengths[0] = t
  threshold = float(rng.choice([0.4, 0.6, 0.8]))
  min_length, max_length = int(rng.integers(0, 6)), int(rng.integers(7, 20))
  iterations = int(rng.choice([0, 0, 3]))
  f, s, e = ag.connected_components(curves, lengths, threshold, min_length, max_length,
                                    iterations)
  f, s, e = f.numpy(), s.numpy(), e.numpy()
  for i in range(n_curves):
    got = sorted((int(a), int(b)) for a, b in zip(s[i][f[i]], e[i][f[i]]))
    want = sorted(np_conn_component(curves[i], int(lengths[i]), threshold, min_length,
                                    max_length, iterations or None))
    assert got == want


def test_smoothing_matches_numpy():
  rng = np.random.default_rng(3)
  curves = rng.random((2, 3, 25)).astype(np.float32)
  num_steps = np.array([25, 11])
  got = ag.gaussian_smooth(curves, num_steps, 1.5).numpy()
  for b in range(2):
    for c in range(3):
      np.testing.assert_allclose(got[b, c], np_smooth(curves[b, c], num_steps[b], 1.5),
                                 atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_proposals_match_numpy(seed):
  rng = np.random.default_rng(100 + seed)
  batch, t, k = 3, 30, 3
  # Blocky curves (actions) plus noise give components of many sizes.
  scores = rng.random((batch, t, k)) * 0.6
  for b in range(batch):
    for _ in range(3):
      c, a = rng.integers(k), rng.integers(t)
      scores[b, a:a + rng.integers(2, 10), c] += 0.5
  scores = scores.astype(np.float32)
  num_steps = np.array([t, 17, 0])
  thresholds = (0.5, 0.7)
  segs, sc, num = ag.actionness_proposals(
      scores, num_steps, thresholds=thresholds, min_length=1, max_length=12,
      smoothing_sigma=1.0, nms_iou_threshold=0.6, max_proposals=200)
  segs, sc, num = segs.numpy(), sc.numpy(), num.numpy()
  for b in range(batch):
    n = int(num_steps[b])
    cands = np_candidates(scores[b], n, thresholds, 1, 12, 1.0)
    kept = np_nms(cands, 0.6, 200)
    got = {(int(round(s0)), int(round(s1))) for s0, s1 in segs[b, :num[b]]}
    assert got == {seg for _, seg in kept}
    assert num[b] == len(kept)
    np.testing.assert_allclose(sorted(sc[b, :num[b]]), sorted(s for s, _ in kept),
                               atol=1e-5)
  assert num[2] == 0


def test_candidate_sets_match_numpy_without_nms():
  """With NMS disabled (threshold 1) the output is the whole candidate set."""
  rng = np.random.default_rng(7)
  scores = rng.random((1, 24, 2)).astype(np.float32)
  segs, _, num = ag.actionness_proposals(scores, [24], thresholds=(0.45,), min_length=0,
                                         max_length=9, smoothing_sigma=2.0,
                                         nms_iou_threshold=1.0, max_proposals=1000)
  got = sorted((int(a), int(b)) for a, b in segs.numpy()[0, :num.numpy()[0]])
  cands = np_candidates(scores[0], 24, (0.45,), 0, 9, 2.0)
  want = sorted(seg for seg, s in cands.items() for _ in s)
  assert got == want and len(got) > 3


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="min_length"):
    ag.actionness_proposals(np.zeros([1, 4, 2]), [4], min_length=5, max_length=5)
  with pytest.raises(ValueError, match="thresholds"):
    ag.actionness_proposals(np.zeros([1, 4, 2]), [4], thresholds=())


def test_graph_mode_dynamic_shapes():
  fn = tf.function(lambda s, n: ag.actionness_proposals(s, n, max_proposals=5),
                   input_signature=[tf.TensorSpec([None, None, 2]), tf.TensorSpec([None],
                                                                                 tf.int32)])
  segs, _, num = fn(tf.zeros([2, 0, 2]), tf.zeros([2], tf.int32))
  assert segs.shape == (2, 5, 2) and list(num.numpy()) == [0, 0]
  curve = np.zeros([1, 10, 2], np.float32)
  curve[0, 2:6, 0] = 1.0
  segs, _, num = fn(curve, tf.constant([10]))
  assert num.numpy()[0] >= 1
