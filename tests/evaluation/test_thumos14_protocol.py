"""THUMOS14-toolkit protocol: hand-worked cases (incl. Ambiguous) and a loop reference."""

import numpy as np
import pytest

from tal_tf.evaluation import activitynet_protocol as anet
from tal_tf.evaluation import thumos14_protocol as th


def ap_one(gt, pred, thr, amb=None):
  return th.thumos14_average_precision(np.array(gt, float).reshape(-1, 3),
                                       np.array(pred, float).reshape(-1, 4), [thr],
                                       None if amb is None else np.array(amb, float))[0]


# ------------------------------------------------------------------------------ hand-worked
def test_gt_driven_matching_takes_best_overlap_not_best_score():
  # gt [0,10]; d1 [0,6] score .9 (overlap .6), d2 [0,10] score .5 (overlap 1).
  # The gt takes d2 (largest overlap): ranked d1 FP, d2 TP -> precision 1/2 at the TP;
  # AP = (1/2) / 1 gt = 0.5. (ActivityNet rules would make d1 the TP: AP 1.)
  gt = [[0, 0, 10]]
  pred = [[0, 0, 6, 0.9], [0, 0, 10, 0.5]]
  assert ap_one(gt, pred, 0.5) == pytest.approx(0.5)
  assert anet.average_precision_detection(np.array(gt, float), np.array(pred, float),
                                          [0.5])[0] == pytest.approx(1.0)


def test_overlap_must_strictly_exceed_threshold():
  # Overlap exactly 0.5: no match at 0.5 (strict >), a match at 0.49.
  gt, pred = [[0, 0, 10]], [[0, 0, 5, 1.0]]
  assert ap_one(gt, pred, 0.5) == 0.0
  assert ap_one(gt, pred, 0.49) == pytest.approx(1.0)


def test_unmatched_detection_on_ambiguous_segment_is_removed():
  gt = [[0, 0, 10]]
  amb = [[0, 20, 30]]
  pred = [[0, 21, 25, 0.9],   # unmatched, overlaps Ambiguous -> removed
          [0, 0, 10, 0.8],    # TP
          [0, 40, 50, 0.7]]   # FP
  # With Ambiguous: ranked TP (precision 1), FP -> AP = 1 / 1 = 1.
  assert ap_one(gt, pred, 0.5, amb) == pytest.approx(1.0)
  # Without: FP, TP (precision 1/2), FP -> AP = 0.5.
  assert ap_one(gt, pred, 0.5) == pytest.approx(0.5)


def test_matched_detection_overlapping_ambiguous_stays_true_positive():
  # The toolkit removes only would-be false positives: matching happens first.
  gt = [[0, 0, 10]]
  amb = [[0, 8, 12]]
  pred = [[0, 9, 11, 0.95],   # unmatched (overlap with gt 1/11), touches Ambiguous -> removed
          [0, 0, 10, 0.9]]    # matched, also overlaps Ambiguous -> still TP
  assert ap_one(gt, pred, 0.5, amb) == pytest.approx(1.0)


def test_touching_ambiguous_segment_does_not_count_as_overlap():
  gt = [[0, 0, 10]]
  amb = [[0, 20, 30]]
  pred = [[0, 30, 35, 0.9], [0, 0, 10, 0.8]]   # d1 only touches the Ambiguous end -> FP
  assert ap_one(gt, pred, 0.5, amb) == pytest.approx(0.5)


def test_ambiguous_of_another_video_has_no_effect():
  gt = [[0, 0, 10]]
  amb = [[1, 20, 30]]
  pred = [[0, 21, 25, 0.9], [0, 0, 10, 0.8]]
  assert ap_one(gt, pred, 0.5, amb) == pytest.approx(0.5)


def test_ground_truth_order_decides_and_is_not_revisited():
  # g1 [0,10], g2 [2,12]; d1 [1,11] (overlap 9/11 with both), d2 [0,4] (g1: .4, g2: 2/12).
  # g1 (listed first) takes d1; g2's only free detection d2 has 1/6 < .3 -> unmatched.
  # Ranked d1 TP (precision 1), d2 FP -> AP = 1 / 2 gts = 0.5.
  gt = [[0, 0, 10], [0, 2, 12]]
  pred = [[0, 1, 11, 0.9], [0, 0, 4, 0.8]]
  assert ap_one(gt, pred, 0.3) == pytest.approx(0.5)


def test_overlap_uses_hull_as_union():
  a = np.array([[0.0, 10.0], [0.0, 1.0]])
  b = np.array([[5.0, 15.0], [2.0, 3.0]])
  # [0,10] vs [5,15]: 5 / hull 15; [0,10] vs [2,3]: 1 / 10; [0,1] is disjoint from both.
  np.testing.assert_allclose(th.thumos14_overlap_matrix(a, b), [[1 / 3, 0.1], [0, 0]])


def test_no_detections_gives_zero():
  assert ap_one([[0, 0, 10]], np.zeros((0, 4)), 0.5) == 0.0


def test_cross_video_score_ties_follow_sorted_video_names():
  # Video 'a' holds a TP, 'b' an FP, both score 0.5; dict order lists 'b' first.
  # The toolkit visits videos in sorted name order: TP, FP -> AP = (1/1) / 2 gts = 0.5
  # (with 'b' first it would be (1/2) / 2 = 0.25).
  gt = {"b": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["x"], object)},
        "a": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["x"], object)}}
  res = {"b": {"segments": np.array([[50.0, 60.0]]), "labels": np.array(["x"], object),
               "scores": np.array([0.5])},
         "a": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["x"], object),
               "scores": np.array([0.5])}}
  m = th.thumos14_mean_average_precision(gt, res, [0.5])
  np.testing.assert_allclose(m["ap"], [[0.5]])


def test_mean_ap_moves_ambiguous_labels_out_of_classes():
  gt = {"v": {"segments": np.array([[0.0, 10.0], [20.0, 30.0]]),
              "labels": np.array(["Jump", "Ambiguous"], object)}}
  res = {"v": {"segments": np.array([[21.0, 25.0], [0.0, 10.0]]),
               "labels": np.array(["Jump", "Jump"], object), "scores": np.array([0.9, 0.8])},
         "w": {"segments": np.array([[0.0, 1.0]]), "labels": np.array(["Run"], object),
               "scores": np.array([0.9])}}
  m = th.thumos14_mean_average_precision(gt, res, [0.5, 0.9])
  assert m["class_names"] == ["Jump"]
  np.testing.assert_allclose(m["ap"], [[1.0], [1.0]])
  assert m["num_ignored_predictions"] == 1 and m["num_ambiguous_segments"] == 1
  # The same segments passed explicitly give the same result.
  gt2 = {"v": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["Jump"], object)}}
  m2 = th.thumos14_mean_average_precision(gt2, res, [0.5, 0.9],
                                          ambiguous_by_video={"v": [[20.0, 30.0]]})
  np.testing.assert_allclose(m2["ap"], m["ap"])


# --------------------------------------------------------------------------- loop reference
def ref_overlap(a, b):
  inter = min(a[1], b[1]) - max(a[0], b[0])
  if inter <= 0:
    return 0.0
  return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def ref_thumos_ap(gts, preds, ambs, thr):
  """Loop transcription of the toolkit's per-class rules (videos in ascending index)."""
  if not preds or not gts:
    return 0.0
  videos = sorted({g[0] for g in gts} | {p[0] for p in preds})
  ranked_pool = []                       # (score, is_tp) in video order, then score order
  for v in videos:
    det = sorted([p for p in preds if p[0] == v], key=lambda p: -p[3])
    free = [True] * len(det)
    for g in [g for g in gts if g[0] == v]:
      best, best_ov = None, -1.0
      for i, d in enumerate(det):
        if free[i]:
          ov = ref_overlap((g[1], g[2]), (d[1], d[2]))
          if ov > best_ov:
            best, best_ov = i, ov
      if best is not None and best_ov > thr:
        free[best] = False
    for i, d in enumerate(det):
      near_amb = any(a[0] == v and min(a[2], d[2]) - max(a[1], d[1]) > 0 for a in ambs)
      if not free[i]:
        ranked_pool.append((d[3], True))
      elif not near_amb:
        ranked_pool.append((d[3], False))
  ranked_pool.sort(key=lambda x: -x[0])
  tp = fp = 0
  total = 0.0
  for _, is_tp in ranked_pool:
    if is_tp:
      tp += 1
      total += tp / (tp + fp)
    else:
      fp += 1
  return total / len(gts)


def test_matches_loop_reference_on_random_cases():
  rng = np.random.default_rng(2024)
  thresholds = np.array([0.1, 0.3, 0.5, 0.7])
  for _ in range(120):
    g, p, a = (int(rng.integers(0, 6)), int(rng.integers(0, 12)), int(rng.integers(0, 3)))
    def segs(n):
      s = rng.integers(0, 12, n).astype(float)
      return s, s + rng.integers(0, 6, n)
    gs, ge = segs(g)
    ps, pe = segs(p)
    as_, ae = segs(a)
    gts = [(float(v), s, e) for v, s, e in zip(rng.integers(0, 3, g), gs, ge)]
    preds = [(float(v), s, e, float(sc)) for v, s, e, sc in
             zip(rng.integers(0, 4, p), ps, pe, rng.choice([0.2, 0.6, 0.9], p))]
    ambs = [(float(v), s, e) for v, s, e in zip(rng.integers(0, 3, a), as_, ae)]
    got = th.thumos14_average_precision(np.array(gts).reshape(-1, 3),
                                        np.array(preds).reshape(-1, 4), thresholds,
                                        np.array(ambs).reshape(-1, 3))
    want = [ref_thumos_ap(gts, preds, ambs, t) for t in thresholds]
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)
