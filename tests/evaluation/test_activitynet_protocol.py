"""ActivityNet detection / proposal protocol vs an independent loop reference + hand cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tal_tf.evaluation import activitynet_protocol as anet

TOL = 1e-9


# --------------------------------------------------------------------------------------------
# Reference, written from the protocol's text in plain Python loops (no numpy in the logic).
# --------------------------------------------------------------------------------------------
def ref_tiou(pred, gt):
  """tIoU of two (start, end) pairs; union written as gt length + pred length - inter."""
  inter = max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0]))
  union = (gt[1] - gt[0]) + (pred[1] - pred[0]) - inter
  return inter / union if union > 0 else 0.0


def ref_average_precision(gts, preds, thr):
  """gts: list of (video, s, e); preds: list of (video, s, e, score)."""
  if not gts or not preds:
    return 0.0
  ranked = sorted(range(len(preds)), key=lambda i: -preds[i][3])   # Python sort is stable
  taken = set()
  flags = []
  for i in ranked:
    video, s, e, _ = preds[i]
    walk = []
    for j, (gv, gs, ge) in enumerate(gts):
      if gv == video:
        walk.append((ref_tiou((s, e), (gs, ge)), j))
    walk.sort(key=lambda x: (-x[0], x[1]))
    result = False
    for iou, j in walk:
      if iou < thr:
        break
      if j in taken:
        continue
      taken.add(j)
      result = True
      break
    flags.append(result)
  precision, recall = [], []
  tp = fp = 0
  for f in flags:
    if f:
      tp += 1
    else:
      fp += 1
    precision.append(tp / (tp + fp))
    recall.append(tp / len(gts))
  # Each recall step contributes (step width) x (best precision at this recall or later).
  ap, previous = 0.0, 0.0
  for k in range(len(recall)):
    if recall[k] != previous:
      ap += (recall[k] - previous) * max(precision[k:])
      previous = recall[k]
  return ap


def ref_mean_ap(gt_by_video, results_by_video, thresholds):
  classes = sorted({l for v in gt_by_video.values() for l in v["labels"]})
  ids = {}
  for v in list(gt_by_video) + list(results_by_video):
    ids.setdefault(v, len(ids))
  out = []
  for thr in thresholds:
    row = []
    for c in classes:
      gts = [(ids[v], s, e) for v, d in gt_by_video.items()
             for (s, e), l in zip(d["segments"], d["labels"]) if l == c]
      preds = [(ids[v], s, e, sc) for v, d in results_by_video.items()
               for (s, e), l, sc in zip(d["segments"], d["labels"], d["scores"]) if l == c]
      row.append(ref_average_precision(gts, preds, thr))
    out.append(row)
  return classes, out


def ref_average_recall(gts, props, thresholds, max_avg):
  """Loop version of ActivityNet's average_recall_vs_avg_nr_proposals."""
  videos = []
  for g in gts:
    if g[0] not in videos:
      videos.append(g[0])
  ratio = max_avg * float(len(videos)) / len(props)
  per_video = []   # (gt segments, tiou rows, number of columns)
  total = 0
  for v in videos:
    vg = [(s, e) for (gv, s, e) in gts if gv == v]
    vp = [p for p in props if p[0] == v]
    if not vp:
      per_video.append((vg, [[0.0] for _ in vg], 1))
      continue
    vp = sorted(vp, key=lambda p: -p[3])
    keep = min(int(len(vp) * ratio), len(vp))
    total += keep
    rows = [[ref_tiou((p[1], p[2]), g) for p in vp[:keep]] for g in vg]
    per_video.append((vg, rows, keep))
  if total == 0:
    # Every list truncated to nothing (the original divides by zero): zero recall, by choice.
    return ([[0.0] * 100 for _ in thresholds], [0.0] * 100,
            [k / 100.0 * max_avg for k in range(1, 101)])
  fractions = [k / 100.0 * (max_avg * float(len(videos)) / total) for k in range(1, 101)]
  num_gt = len(gts)
  recall = []
  for thr in thresholds:
    row = []
    for f in fractions:
      found = 0
      for _, tious, cols in per_video:
        n = min(int(cols * f), cols)
        for r in tious:
          if any(x >= thr for x in r[:n]):
            found += 1
      row.append(found / num_gt)
    recall.append(row)
  average = [sum(recall[t][j] for t in range(len(thresholds))) / len(thresholds)
             for j in range(100)]
  per_video_avg = [f * (float(total) / len(videos)) for f in fractions]
  return recall, average, per_video_avg


# --------------------------------------------------------------------------------------------
# Random problems on a coarse grid: tIoU ties, exact threshold hits, score ties, videos without
# ground truth, classes without predictions, unknown predicted classes.
# --------------------------------------------------------------------------------------------
def random_problem(rng, num_videos=4, num_classes=3):
  classes = [f"c{i}" for i in range(num_classes)]
  gt, res = {}, {}
  for v in range(num_videos):
    n = int(rng.integers(0, 6))
    s = rng.integers(0, 10, n).astype(float)
    e = s + rng.integers(0, 6, n)
    gt[f"v{v}"] = {"segments": np.stack([s, e], 1) if n else np.zeros((0, 2)),
                   "labels": np.array([classes[i] for i in rng.integers(0, num_classes, n)],
                                      object)}
  for v in range(num_videos + 2):                 # two videos have no ground truth
    n = int(rng.integers(0, 12))
    s = rng.integers(0, 10, n).astype(float)
    e = s + rng.integers(0, 6, n)
    labels = [classes[i] if i < num_classes else "unknown"
              for i in rng.integers(0, num_classes + 1, n)]
    res[f"v{v}"] = {"segments": np.stack([s, e], 1) if n else np.zeros((0, 2)),
                    "labels": np.array(labels, object),
                    "scores": rng.choice([0.1, 0.5, 0.9], n)}    # many ties
  return gt, res


THRESHOLDS = np.array([0.1, 0.3, 0.5, 0.6, 0.75, 1.0])


def test_mean_ap_matches_reference_on_random_problems():
  rng = np.random.default_rng(1234)
  for _ in range(150):
    gt, res = random_problem(rng, int(rng.integers(1, 5)), int(rng.integers(1, 4)))
    got = anet.mean_average_precision(gt, res, THRESHOLDS)
    classes, want = ref_mean_ap(gt, res, THRESHOLDS)
    assert got["class_names"] == classes
    np.testing.assert_allclose(got["ap"], np.array(want).reshape(len(THRESHOLDS), -1),
                               atol=TOL, rtol=0)
    if classes:
      np.testing.assert_allclose(got["mAP"], np.mean(want, axis=1), atol=TOL, rtol=0)


def test_average_precision_matches_reference_on_continuous_segments():
  rng = np.random.default_rng(7)
  for _ in range(60):
    g = int(rng.integers(1, 15))
    p = int(rng.integers(1, 80))
    gs = rng.uniform(0, 50, g)
    gts = np.stack([rng.integers(0, 3, g), gs, gs + rng.uniform(0.1, 10, g)], 1)
    ps = rng.uniform(0, 50, p)
    preds = np.stack([rng.integers(0, 4, p), ps, ps + rng.uniform(0.1, 10, p),
                      rng.uniform(size=p)], 1)
    thr = np.linspace(0.1, 0.9, 9)
    got = anet.average_precision_detection(gts, preds, thr)
    want = [ref_average_precision([tuple(r) for r in gts], [tuple(r) for r in preds], t)
            for t in thr]
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_average_precision_property(data):
  g = data.draw(st.integers(0, 6))
  p = data.draw(st.integers(0, 10))
  seg = st.tuples(st.integers(0, 2), st.integers(0, 8), st.integers(0, 4))
  gts = [(v, float(s), float(s + d)) for v, s, d in data.draw(st.lists(seg, min_size=g,
                                                                       max_size=g))]
  preds = [(v, float(s), float(s + d), float(sc)) for (v, s, d), sc in zip(
      data.draw(st.lists(seg, min_size=p, max_size=p)),
      data.draw(st.lists(st.sampled_from([0.2, 0.4, 0.4, 0.8]), min_size=p, max_size=p)))]
  thr = np.array([0.2, 0.5, 0.7])
  got = anet.average_precision_detection(np.array(gts).reshape(-1, 3),
                                         np.array(preds).reshape(-1, 4), thr)
  want = [ref_average_precision(gts, preds, t) for t in thr]
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  assert np.all(got >= 0) and np.all(got <= 1 + TOL)


# --------------------------------------------------------------------------------------------
# Hand-worked cases.
# --------------------------------------------------------------------------------------------
def test_hand_worked_three_gt_two_videos_plus_unannotated_video():
  gt = np.array([[0, 0, 10], [0, 20, 30], [1, 5, 8]], float)
  pred = np.array([[0, 0, 9, 0.9],     # tIoU 0.9 with gt0              -> TP
                   [0, 1, 10, 0.8],    # best gt0 (0.9) already taken   -> FP
                   [0, 21, 30, 0.7],   # tIoU 0.9 with gt1              -> TP
                   [2, 0, 1, 0.6],     # video 2 has no ground truth    -> FP
                   [1, 5, 8, 0.5]],    # exact match                    -> TP
                  float)
  # @0.5: flags T F T F T; precision 1, 1/2, 2/3, 1/2, 3/5; recall 1/3, 1/3, 2/3, 2/3, 1.
  # Monotone precision at the recall steps: 1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3 = 34/45.
  # @0.95: only the exact match (rank 5) -> precision 1/5 at recall 1/3 -> AP = 1/15.
  got = anet.average_precision_detection(gt, pred, [0.5, 0.95])
  np.testing.assert_allclose(got, [34 / 45, 1 / 15], atol=1e-12)


def test_score_ties_keep_input_order():
  gt = np.array([[0, 0, 10]], float)
  fp_first = np.array([[0, 20, 30, 0.5], [0, 0, 10, 0.5]], float)
  # Ranked FP, TP: precision 0, 1/2 at recall 0, 1 -> AP = 1/2.
  assert anet.average_precision_detection(gt, fp_first, [0.5])[0] == pytest.approx(0.5)
  # Ranked TP, FP -> AP = 1.
  assert anet.average_precision_detection(gt, fp_first[::-1], [0.5])[0] == pytest.approx(1.0)


def test_equal_tiou_walks_first_listed_ground_truth_first():
  # p1 [0,2] has tIoU 0.5 with both g_a [0,1] and g_b [1,2]; p2 [1,2] matches g_b exactly.
  preds = np.array([[0, 0, 2, 0.9], [0, 1, 2, 0.8]], float)
  gt_ab = np.array([[0, 0, 1], [0, 1, 2]], float)
  # g_a listed first: p1 takes g_a, p2 takes g_b -> AP 1.
  assert anet.average_precision_detection(gt_ab, preds, [0.5])[0] == pytest.approx(1.0)
  # g_b listed first: p1 takes g_b, p2 finds g_b taken and g_a at tIoU 0 -> TP, FP: AP 1/2.
  assert anet.average_precision_detection(gt_ab[::-1], preds, [0.5])[0] == pytest.approx(0.5)


def test_threshold_is_inclusive():
  gt = np.array([[0, 0, 10]], float)
  pred = np.array([[0, 0, 5, 1.0]], float)          # tIoU exactly 0.5
  np.testing.assert_allclose(anet.average_precision_detection(gt, pred, [0.5, 0.51]), [1, 0])


def test_prediction_skips_taken_gt_to_second_best():
  gt = np.array([[0, 0, 10], [0, 4, 12]], float)
  pred = np.array([[0, 0, 10, 0.9],    # takes gt0 (tIoU 1)
                   [0, 1, 10, 0.8]],   # gt0 0.9 taken -> gt1: inter 6 / union 11 -> TP at 0.5
                  float)
  np.testing.assert_allclose(anet.average_precision_detection(gt, pred, [0.5, 0.6]),
                             [1.0, 0.5])   # @0.6: 6/11 < 0.6 -> TP, FP -> recall 1/2 -> 1/2


def test_mean_ap_classes_from_gt_and_class_without_predictions():
  gt = {"a": {"segments": np.array([[0.0, 10.0], [20.0, 30.0]]),
              "labels": np.array(["run", "jump"], object)}}
  res = {"a": {"segments": np.array([[0.0, 10.0], [0.0, 10.0]]),
               "labels": np.array(["run", "swim"], object),     # 'swim' not in gt: ignored
               "scores": np.array([0.9, 0.8])},
         "b": {"segments": np.array([[0.0, 10.0]]),              # video without gt: FP
               "labels": np.array(["run"], object), "scores": np.array([0.95])}}
  m = anet.mean_average_precision(gt, res, [0.5])
  assert m["class_names"] == ["jump", "run"]
  # jump: no predictions -> 0. run: ranked FP (video b), TP -> precision 1/2 at recall 1.
  np.testing.assert_allclose(m["ap"][0], [0.0, 0.5])
  np.testing.assert_allclose(m["mAP"], [0.25])
  assert m["num_ignored_predictions"] == 1
  assert m["average_mAP"] == pytest.approx(0.25)
  np.testing.assert_array_equal(m["num_ground_truth"], [1, 1])


def test_class_names_restrict_and_report_missing():
  gt = {"a": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["run"], object)}}
  res = {"a": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["run"], object),
               "scores": np.array([1.0])}}
  m = anet.mean_average_precision(gt, res, [0.5], class_names=["walk", "run"])
  assert m["class_names"] == ["run"]
  assert m["classes_without_ground_truth"] == ["walk"]
  np.testing.assert_allclose(m["mAP"], [1.0])


def test_empty_inputs():
  thr = [0.5, 0.7]
  np.testing.assert_array_equal(
      anet.average_precision_detection(np.zeros((0, 3)), np.zeros((0, 4)), thr), [0, 0])
  np.testing.assert_array_equal(
      anet.average_precision_detection(np.array([[0, 0, 1.0]]), np.zeros((0, 4)), thr), [0, 0])
  np.testing.assert_array_equal(
      anet.average_precision_detection(np.zeros((0, 3)), np.array([[0, 0, 1, 1.0]]), thr),
      [0, 0])
  m = anet.mean_average_precision({}, {}, thr)
  assert m["class_names"] == [] and m["ap"].shape == (2, 0)
  np.testing.assert_array_equal(m["mAP"], [0, 0])


def test_bad_inputs_raise_naming_the_argument():
  with pytest.raises(ValueError, match="predictions"):
    anet.average_precision_detection(np.zeros((1, 3)), np.zeros((2, 3)), [0.5])
  with pytest.raises(ValueError, match="predictions.*nan"):
    anet.average_precision_detection(np.zeros((1, 3)), np.array([[0, 0, 1, np.nan]]), [0.5])
  with pytest.raises(ValueError, match="tiou_thresholds"):
    anet.average_precision_detection(np.zeros((1, 3)), np.zeros((1, 4)), [1.5])


def test_vectorized_matching_handles_large_video():
  # One video with many gt and predictions: the event loop must agree with the reference.
  rng = np.random.default_rng(3)
  g, p = 40, 400
  gs = rng.uniform(0, 200, g)
  gts = np.stack([np.zeros(g), gs, gs + rng.uniform(1, 15, g)], 1)
  src = rng.integers(0, g, p)
  noisy = gts[src, 1:] + rng.normal(0, 1.5, (p, 2))
  noisy.sort(axis=1)
  preds = np.column_stack([np.zeros(p), noisy, np.round(rng.uniform(size=p), 2)])
  thr = np.array([0.3, 0.5, 0.7])
  got = anet.average_precision_detection(gts, preds, thr)
  want = [ref_average_precision([tuple(r) for r in gts], [tuple(r) for r in preds], t)
          for t in thr]
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


# --------------------------------------------------------------------------------------------
# AR@AN.
# --------------------------------------------------------------------------------------------
def test_average_recall_matches_reference_on_random_problems():
  rng = np.random.default_rng(99)
  thr = np.linspace(0.5, 1.0, 11)
  for case in range(40):
    nv = int(rng.integers(1, 6))
    gts, props = [], []
    for v in range(nv + 1):                      # last video: proposals only, no gt
      if v < nv:
        for _ in range(int(rng.integers(1, 5))):
          s = float(rng.integers(0, 20))
          gts.append((v, s, s + float(rng.integers(1, 8))))
      for _ in range(int(rng.integers(0 if v else 1, 30))):
        s = float(rng.integers(0, 20))
        props.append((v, s, s + float(rng.integers(1, 8)), float(rng.choice([0.2, 0.5, 0.7]))))
    max_avg = [100, 5, 3.5, 1][case % 4]
    got = anet.average_recall_vs_num_proposals(np.array(gts), np.array(props), thr,
                                               max_avg_nr_proposals=max_avg)
    recall, average, per_video = ref_average_recall(gts, props, thr, max_avg)
    np.testing.assert_allclose(got["recall"], recall, atol=TOL, rtol=0)
    np.testing.assert_allclose(got["average_recall"], average, atol=TOL, rtol=0)
    np.testing.assert_allclose(got["avg_nr_proposals"], per_video, atol=1e-9, rtol=1e-12)


def test_average_recall_at_an_reads_the_curve():
  rng = np.random.default_rng(5)
  gts, props = [], []
  for v in range(6):
    for _ in range(4):
      s = float(rng.uniform(0, 50))
      gts.append((v, s, s + float(rng.uniform(1, 10))))
    for _ in range(150):
      s = float(rng.uniform(0, 50))
      props.append((v, s, s + float(rng.uniform(1, 10)), float(rng.uniform())))
  thr = np.linspace(0.5, 1.0, 11)
  got = anet.average_recall_vs_num_proposals(np.array(gts), np.array(props), thr, 100,
                                             ar_at=(1, 5, 10, 50, 100, 200))
  _, average, _ = ref_average_recall(gts, props, thr, 100)
  for an in (1, 5, 10, 50, 100):
    assert got["ar_at_an"][an] == pytest.approx(average[an - 1], abs=1e-9)
  assert math.isnan(got["ar_at_an"][200])        # beyond the curve


def test_average_recall_hand_worked():
  # Video 0: gt [0,10]; proposals [50,60] (score 0.9) and [0,10] (score 0.1).
  # Video 1: gt [0,10], no proposals. max_avg = 1 -> ratio = 1 * 2 / 2 = 1, both kept.
  # Point k retrieves min(int(2 * k/100), 2) proposals of video 0: the exact match (2nd by
  # score) only at k = 100; video 1 never matches. Recall = 1/2 at k = 100, else 0.
  gts = np.array([[0, 0, 10], [1, 0, 10]], float)
  props = np.array([[0, 50, 60, 0.9], [0, 0, 10, 0.1]], float)
  got = anet.average_recall_vs_num_proposals(gts, props, [0.5, 1.0], max_avg_nr_proposals=1)
  expected = np.zeros(100)
  expected[-1] = 0.5
  np.testing.assert_allclose(got["recall"], [expected, expected])
  np.testing.assert_allclose(got["avg_nr_proposals"], np.arange(1, 101) / 100)
  assert got["ar_at_an"][1] == pytest.approx(0.5)


def test_average_recall_empty_proposals_is_zero():
  got = anet.average_recall_vs_num_proposals(np.array([[0, 0, 1.0]]), np.zeros((0, 4)))
  assert got["recall"].shape == (11, 100)
  assert np.all(got["recall"] == 0) and got["auc"] == 0


def test_average_recall_metrics_from_dicts_ignores_labels():
  gt = {"a": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["x"], object)}}
  res = {"a": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["y"], object),
               "scores": np.array([1.0])}}
  got = anet.average_recall_metrics(gt, res, [0.5], max_avg_nr_proposals=1)
  assert got["ar_at_an"][1] == pytest.approx(1.0)
  assert got["num_videos"] == 1 and got["num_proposals"] == 1

