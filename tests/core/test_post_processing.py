"""Tests for tal_tf.core.post_processing against hand-worked cases and a numpy greedy NMS."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import post_processing


# ---------------------------------------------------------------- numpy references


def np_tiou(a, b):
  """Temporal IoU of two (start, end) segments."""
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - inter
  return inter / union if union > 0 else 0.0


def np_greedy_nms(segments, scores, iou_threshold, max_output, score_threshold=-np.inf,
                  sigma=0.0):
  """Greedy (soft-)NMS, one box at a time: returns kept indices and their final scores."""
  current = [float(s) for s in scores]
  candidates = [i for i in range(len(scores)) if current[i] > score_threshold]
  kept, kept_scores = [], []
  while candidates and len(kept) < max_output:
    best = candidates[0]
    for i in candidates:  # Highest score, ties to the lower index.
      if current[i] > current[best] or (current[i] == current[best] and i < best):
        best = i
    kept.append(best)
    kept_scores.append(current[best])
    candidates.remove(best)
    survivors = []
    for j in candidates:
      iou = np_tiou(segments[best], segments[j])
      if iou > iou_threshold:
        continue
      if sigma > 0:
        current[j] *= math.exp(-iou * iou / sigma)
      if current[j] > score_threshold:
        survivors.append(j)
    candidates = survivors
  return kept, kept_scores


def np_multiclass_nms(segments, scores, num_valid, score_threshold, iou_threshold,
                      max_per_class, max_total, sigma=0.0):
  """Per-class greedy NMS then a stable sort by score; returns lists per field."""
  num_classes = scores.shape[1]
  found = []
  for c in range(num_classes):
    class_segments = segments[:num_valid, c] if segments.ndim == 3 else segments[:num_valid]
    kept, kept_scores = np_greedy_nms(class_segments, scores[:num_valid, c], iou_threshold,
                                      max_per_class, score_threshold, sigma)
    found += [(s, c, class_segments[i]) for i, s in zip(kept, kept_scores)]
  found.sort(key=lambda item: -item[0])  # Stable: class order, then NMS order.
  return found[:max_total]


def random_segments(rng, shape, video_length=50.0):
  """Random segments (start <= end) of the given leading shape."""
  start = rng.uniform(0, video_length, size=shape)
  length = rng.uniform(0.5, 15.0, size=shape)
  return np.stack([start, start + length], axis=-1).astype(np.float32)


def far_from_threshold(segments, iou_threshold, margin=1e-4):
  """True when no pairwise tIoU is within `margin` of the threshold (float32-safe)."""
  flat = segments.reshape(-1, 2)
  for i in range(len(flat)):
    for j in range(i + 1, len(flat)):
      if abs(np_tiou(flat[i], flat[j]) - iou_threshold) < margin:
        return False
  return True


# ---------------------------------------------------------------- nms_1d / soft_nms_1d


def test_segment_box_iou_is_temporal_iou():
  segments = np.array([[0.0, 4.0], [1.0, 5.0], [3.5, 10.0]], np.float32)
  boxes = post_processing.segments_to_boxes(segments).numpy()
  np.testing.assert_array_equal(boxes[1], [0.0, 1.0, 1.0, 5.0])
  # Suppression at threshold t removes exactly the segments whose tIoU exceeds t.
  for threshold in (0.1, 0.3, 0.59, 0.61):
    indices, count = post_processing.nms_1d(segments[:2], np.array([0.9, 0.8], np.float32),
                                            threshold, 5)
    expected = [0] if np_tiou(segments[0], segments[1]) > threshold else [0, 1]
    assert list(indices.numpy()[:count.numpy()]) == expected


def test_nms_1d_hand_worked():
  segments = np.array([[0, 10], [1, 11], [20, 30], [2, 9], [21, 29]], np.float32)
  scores = np.array([0.9, 0.8, 0.7, 0.95, 0.6], np.float32)
  indices, count = post_processing.nms_1d(segments, scores, iou_threshold=0.5,
                                          max_output_size=4)
  # 3 ([2, 9], 0.95) goes first and removes 0 (tIoU 7/10) and 1 (tIoU 7/10);
  # 2 ([20, 30], 0.7) is next and removes 4 (tIoU 8/10). Padding is index 0.
  assert count.numpy() == 2
  np.testing.assert_array_equal(indices.numpy(), [3, 2, 0, 0])


def test_nms_1d_threshold_is_strict_and_score_threshold_strict():
  segments = np.array([[0, 4], [0, 2], [10, 12]], np.float32)
  scores = np.array([0.9, 0.8, 0.5], np.float32)
  # tIoU([0, 4], [0, 2]) = 2/4 = 0.5 exactly: at threshold 0.5 it survives.
  indices, count = post_processing.nms_1d(segments, scores, 0.5, 3)
  np.testing.assert_array_equal(indices.numpy()[:count.numpy()], [0, 1, 2])
  indices, count = post_processing.nms_1d(segments, scores, 0.49, 3)
  np.testing.assert_array_equal(indices.numpy()[:count.numpy()], [0, 2])
  # Score 0.5 is not strictly above 0.5, so segment 2 is no candidate.
  indices, count = post_processing.nms_1d(segments, scores, 0.49, 3, score_threshold=0.5)
  np.testing.assert_array_equal(indices.numpy()[:count.numpy()], [0])
  # max_output_size caps the count.
  indices, count = post_processing.nms_1d(segments, scores, 1.0, 2)
  np.testing.assert_array_equal(indices.numpy(), [0, 1])


def test_nms_1d_matches_numpy_on_random_cases():
  rng = np.random.default_rng(0)
  checked = 0
  for _ in range(30):
    n = int(rng.integers(1, 25))
    segments = random_segments(rng, (n,))
    scores = rng.uniform(size=n).astype(np.float32)
    threshold = float(rng.choice([0.3, 0.5, 0.7]))
    if not far_from_threshold(segments, threshold):
      continue
    expected, _ = np_greedy_nms(segments, scores, threshold, 10, score_threshold=0.2)
    indices, count = post_processing.nms_1d(segments, scores, threshold, 10,
                                            score_threshold=0.2)
    assert list(indices.numpy()[:count.numpy()]) == expected
    checked += 1
  assert checked > 20


def test_soft_nms_1d_hand_worked():
  segments = np.array([[0, 10], [5, 15], [40, 50]], np.float32)
  scores = np.array([0.9, 0.8, 0.3], np.float32)
  indices, new_scores, count = post_processing.soft_nms_1d(segments, scores, sigma=0.5,
                                                           max_output_size=3)
  # tIoU([0, 10], [5, 15]) = 5/15; Gaussian decay exp(-(1/3)^2 / 0.5) ~ 0.8007 keeps
  # segment 1 above segment 2; segment 2 does not overlap anything.
  assert count.numpy() == 3
  np.testing.assert_array_equal(indices.numpy(), [0, 1, 2])
  np.testing.assert_allclose(new_scores.numpy(),
                             [0.9, 0.8 * math.exp(-(1 / 3) ** 2 / 0.5), 0.3], rtol=1e-6)
  # A decayed score at or below score_threshold drops the segment.
  indices, new_scores, count = post_processing.soft_nms_1d(
      segments, scores, sigma=0.5, max_output_size=3, score_threshold=0.65)
  np.testing.assert_array_equal(indices.numpy()[:count.numpy()], [0])


def test_soft_nms_1d_matches_numpy_on_random_cases():
  rng = np.random.default_rng(1)
  for _ in range(15):
    n = int(rng.integers(1, 20))
    segments = random_segments(rng, (n,), video_length=30.0)
    scores = rng.uniform(size=n).astype(np.float32)
    sigma = float(rng.choice([0.3, 0.5, 1.0]))
    expected, expected_scores = np_greedy_nms(segments, scores, 1.0, 8,
                                              score_threshold=0.05, sigma=sigma)
    indices, new_scores, count = post_processing.soft_nms_1d(
        segments, scores, sigma=sigma, max_output_size=8, score_threshold=0.05)
    count = count.numpy()
    assert list(indices.numpy()[:count]) == expected
    np.testing.assert_allclose(new_scores.numpy()[:count], expected_scores, rtol=1e-5)
    assert np.all(new_scores.numpy()[count:] == 0)


def test_empty_input():
  indices, count = post_processing.nms_1d(np.zeros([0, 2], np.float32),
                                          np.zeros([0], np.float32), 0.5, 3)
  assert count.numpy() == 0 and indices.shape == (3,)


def test_bad_arguments_raise():
  segments = np.zeros([3, 2], np.float32)
  scores = np.zeros([3], np.float32)
  with pytest.raises(ValueError, match="iou_threshold"):
    post_processing.nms_1d(segments, scores, 1.5, 3)
  with pytest.raises(ValueError, match="max_output_size"):
    post_processing.nms_1d(segments, scores, 0.5, -1)
  with pytest.raises(ValueError, match="segments"):
    post_processing.nms_1d(np.zeros([3, 3], np.float32), scores, 0.5, 3)
  with pytest.raises(ValueError, match="sigma"):
    post_processing.soft_nms_1d(segments, scores, -1.0, 3)
  with pytest.raises(ValueError, match="scores"):
    post_processing.batch_multiclass_nms(np.zeros([1, 3, 2]), np.zeros([1, 3]), [3],
                                         0.0, 0.5, 2, 2)


# ---------------------------------------------------------------- batched


def test_batch_class_agnostic_nms_hand_worked_and_padding():
  segments = np.array([[[0, 10], [1, 11], [20, 30], [2, 9]],
                       [[0, 10], [1, 11], [5, 6], [50, 60]]], np.float32)
  scores = np.array([[0.9, 0.8, 0.7, 0.95],
                     [0.6, 0.9, 0.99, 0.99]], np.float32)
  out_segments, out_scores, indices, count = post_processing.batch_class_agnostic_nms(
      segments, scores, num_valid=[4, 2], iou_threshold=0.5, max_output=3)
  # Video 0: 3 (0.95) removes 0 and 1 (tIoU 7/10 each), then 2 is kept.
  # Video 1: only entries 0 and 1 are valid (2 and 3, though top-scored, are padding);
  # 1 (0.9) removes 0 (tIoU 9/11).
  np.testing.assert_array_equal(count.numpy(), [2, 1])
  np.testing.assert_array_equal(indices.numpy(), [[3, 2, 0], [1, 0, 0]])
  np.testing.assert_allclose(out_scores.numpy(), [[0.95, 0.7, 0], [0.9, 0, 0]])
  np.testing.assert_allclose(out_segments.numpy(),
                             [[[2, 9], [20, 30], [0, 0]], [[1, 11], [0, 0], [0, 0]]])


def test_batch_multiclass_nms_hand_worked():
  segments = np.array([[[0, 10], [1, 10], [30, 40]]], np.float32)  # Shared [B, N, 2].
  scores = np.array([[[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]]], np.float32)
  out = post_processing.batch_multiclass_nms(segments, scores, [3], score_threshold=0.15,
                                             iou_threshold=0.5, max_per_class=5,
                                             max_total=3)
  # Class 0: candidates 0 (0.9), 1 (0.8), 2 (0.2); 0 removes 1 (tIoU 9/10) -> 0, 2.
  # Class 1: entry 0 (0.1) is under the score threshold; 1 (0.7) and 2 (0.6) do not
  # overlap -> 1, 2. Merged by score: 0.9 (c0), 0.7 (c1), 0.6 (c1); 0.2 (c0) is cut.
  np.testing.assert_allclose(out["detection_scores"].numpy(), [[0.9, 0.7, 0.6]])
  np.testing.assert_array_equal(out["detection_classes"].numpy(), [[0, 1, 1]])
  np.testing.assert_allclose(out["detection_segments"].numpy(),
                             [[[0, 10], [1, 10], [30, 40]]])
  np.testing.assert_array_equal(out["num_detections"].numpy(), [3])

  # With room for more, padded entries are zeros.
  out = post_processing.batch_multiclass_nms(segments, scores, [3], 0.15, 0.5, 5, 6)
  np.testing.assert_allclose(out["detection_scores"].numpy(), [[0.9, 0.7, 0.6, 0.2, 0, 0]])
  np.testing.assert_array_equal(out["detection_classes"].numpy(), [[0, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(out["num_detections"].numpy(), [4])
  np.testing.assert_array_equal(out["detection_segments"].numpy()[0, 4:], 0)


def _check_against_numpy(out, segments, scores, num_valid, **kwargs):
  """Compares batch_multiclass_nms output with the numpy reference, item by item."""
  for b in range(scores.shape[0]):
    expected = np_multiclass_nms(segments[b], scores[b], num_valid[b], **kwargs)
    count = int(out["num_detections"][b])
    assert count == len(expected)
    np.testing.assert_allclose(out["detection_scores"][b, :count],
                               [e[0] for e in expected], rtol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"][b, :count],
                                  [e[1] for e in expected])
    np.testing.assert_allclose(out["detection_segments"][b, :count].reshape(-1, 2),
                               np.reshape([e[2] for e in expected], (-1, 2)))
    assert np.all(out["detection_scores"][b, count:] == 0)
    assert np.all(out["detection_segments"][b, count:] == 0)


def test_batch_multiclass_nms_random_tf_function_dynamic_shapes():
  rng = np.random.default_rng(2)
  nms = tf.function(
      lambda segs, sc, nv: post_processing.batch_multiclass_nms(
          segs, sc, nv, score_threshold=0.1, iou_threshold=0.45, max_per_class=4,
          max_total=7),
      input_signature=[tf.TensorSpec([None, None, None, 2], tf.float32),
                       tf.TensorSpec([None, None, None], tf.float32),
                       tf.TensorSpec([None], tf.int32)])
  checked = 0
  for n, num_valid in ((12, [12, 5, 0]), (7, [3, 7, 6]), (10, [10, 10, 1])):
    segments = random_segments(rng, (3, n, 3), video_length=40.0)  # Class-specific.
    if not all(far_from_threshold(segments[b, :, c], 0.45)
               for b in range(3) for c in range(3)):
      continue
    checked += 1
    scores = rng.uniform(size=(3, n, 3)).astype(np.float32)
    out = {k: v.numpy() for k, v in nms(segments, scores, np.array(num_valid)).items()}
    _check_against_numpy(out, segments, scores, num_valid, score_threshold=0.1,
                         iou_threshold=0.45, max_per_class=4, max_total=7)
    # Each video alone (and without its padding) gives the same rows.
    for b in range(3):
      alone = nms(segments[b:b + 1, :num_valid[b]], scores[b:b + 1, :num_valid[b]],
                  np.array(num_valid[b:b + 1]))
      for key in out:
        np.testing.assert_array_equal(alone[key].numpy()[0], out[key][b])
  assert checked >= 2


def test_batch_multiclass_soft_nms_random():
  rng = np.random.default_rng(3)
  segments = random_segments(rng, (2, 9), video_length=25.0)  # Shared [B, N, 2].
  scores = rng.uniform(size=(2, 9, 2)).astype(np.float32)
  out = post_processing.batch_multiclass_nms(segments, scores, [9, 6], score_threshold=0.05,
                                             iou_threshold=1.0, max_per_class=6,
                                             max_total=10, soft_nms_sigma=0.5)
  out = {k: v.numpy() for k, v in out.items()}
  _check_against_numpy(out, segments, scores, [9, 6], score_threshold=0.05,
                       iou_threshold=1.0, max_per_class=6, max_total=10, sigma=0.5)


def test_batch_multiclass_nms_in_saved_model(tmp_path):
  class Module(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None, None, 2], tf.float32),
                                  tf.TensorSpec([None, None, None], tf.float32),
                                  tf.TensorSpec([None], tf.int32)])
    def detect(self, segments, scores, num_valid):
      return post_processing.batch_multiclass_nms(segments, scores, num_valid, 0.1, 0.5,
                                                  3, 4)

  tf.saved_model.save(Module(), str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path))
  segments = np.array([[[0, 10], [1, 10], [30, 40]]], np.float32)
  scores = np.array([[[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]]], np.float32)
  out = loaded.detect(segments, scores, np.array([3], np.int32))
  # Same case as the hand-worked test with score threshold 0.1 (entry 0 of class 1 at
  # 0.1 is still out: the threshold is strict).
  np.testing.assert_allclose(out["detection_scores"].numpy(), [[0.9, 0.7, 0.6, 0.2]])


def test_batched_nms_with_no_entries():
  out = post_processing.batch_multiclass_nms(np.zeros([2, 0, 2], np.float32),
                                             np.zeros([2, 0, 3], np.float32), [0, 0],
                                             0.1, 0.5, 3, 4)
  np.testing.assert_array_equal(out["num_detections"].numpy(), [0, 0])
  np.testing.assert_array_equal(out["detection_segments"].numpy(), np.zeros([2, 4, 2]))
  segments, scores, indices, count = post_processing.batch_class_agnostic_nms(
      np.zeros([2, 0, 2], np.float32), np.zeros([2, 0], np.float32), [0, 0], 0.5, 3)
  np.testing.assert_array_equal(count.numpy(), [0, 0])
  assert segments.shape == (2, 3, 2) and indices.shape == (2, 3)


def test_batch_multiclass_nms_ties_and_no_threshold():
  # Hand-worked: 3 entries x 3 classes with equal scores across classes; threshold -inf keeps
  # every score (even 0 and negative ones); ties go to the lower class, then NMS order.
  segments = np.array([[[0.0, 4.0], [1.0, 4.0], [10.0, 12.0]]], np.float32)  # [1, 3, 2]
  scores = np.array([[[0.5, 0.5, -1.0], [0.9, 0.0, 0.9], [0.5, 0.5, 0.5]]], np.float32)
  out = post_processing.batch_multiclass_nms(
      segments, scores, [3], score_threshold=-float("inf"), iou_threshold=0.5,
      max_per_class=3, max_total=8)
  out = {k: v.numpy() for k, v in out.items()}
  # Class 0: 0.9 [1,4] suppresses [0,4] (tIoU 0.75); keeps 0.5 [10,12].
  # Class 1: 0.5 [0,4], 0.5 [10,12], then 0.0 [1,4] is suppressed by [0,4].
  # Class 2: 0.9 [1,4], 0.5 [10,12]; -1.0 [0,4] suppressed.
  expected = [(0.9, 0, [1, 4]), (0.9, 2, [1, 4]), (0.5, 0, [10, 12]), (0.5, 1, [0, 4]),
              (0.5, 1, [10, 12]), (0.5, 2, [10, 12])]
  assert int(out["num_detections"][0]) == len(expected)
  for i, (score, cls, seg) in enumerate(expected):
    assert out["detection_scores"][0, i] == pytest.approx(score)
    assert out["detection_classes"][0, i] == cls, (i, out["detection_classes"])
    np.testing.assert_allclose(out["detection_segments"][0, i], seg)
  assert (out["detection_scores"][0, len(expected):] == 0).all()
  assert (out["detection_classes"][0, len(expected):] == 0).all()
