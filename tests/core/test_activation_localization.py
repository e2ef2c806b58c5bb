"""Tests for tal_tf.core.activation_localization against a loop-based numpy reference."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import activation_localization
from tal_tf.core.standard_fields import DetectionFields as DF


def np_localize(step_scores, num_steps, video_scores, fps, threshold=0.5, gamma=0.7,
                video_threshold=0.5, top_class=True):
  """Sec. 3.5 with loops: list per video of (score, class id, start_s, end_s)."""
  out = []
  for b in range(len(num_steps)):
    n = num_steps[b]
    classes = [c for c in range(step_scores.shape[2]) if video_scores[b, c] >= video_threshold]
    if top_class and n > 0:
      classes = sorted(set(classes) | {int(np.argmax(video_scores[b]))})
    found = []
    for c in classes:
      t = 0
      while t < n:
        if step_scores[b, t, c] >= threshold:
          start = t
          while t < n and step_scores[b, t, c] >= threshold:
            t += 1
          q = step_scores[b, start:t, c].max() + gamma * video_scores[b, c]
          found.append((q, c + 1, start / fps[b], t / fps[b]))
        else:
          t += 1
    # Decreasing score; ties: lower class, then earlier start (the op's documented order).
    found.sort(key=lambda d: (-d[0], d[1], d[2]))
    out.append(found)
  return out


def check(detections, expected, max_detections):
  for b, found in enumerate(expected):
    found = found[:max_detections]
    n = int(detections[DF.num_detections][b])
    assert n == len(found), (b, n, found)
    np.testing.assert_allclose(detections[DF.detection_scores][b, :n], [d[0] for d in found],
                               rtol=1e-6)
    np.testing.assert_array_equal(detections[DF.detection_classes][b, :n],
                                  [d[1] for d in found])
    np.testing.assert_allclose(detections[DF.detection_segments][b, :n],
                               np.array([d[2:] for d in found]).reshape(-1, 2), rtol=1e-6)
    # Padding is zero.
    assert not detections[DF.detection_classes][b, n:].any()
    assert not detections[DF.detection_scores][b, n:].any()
    assert not detections[DF.detection_segments][b, n:].any()


def run(step_scores, num_steps, video_scores, fps, **kwargs):
  out = activation_localization.localize_by_thresholding(
      step_scores, num_steps, video_scores, fps, **kwargs)
  return {k: v.numpy() for k, v in out.items()}


def test_hand_made_curves():
  # Video 0 (8 steps, 2 classes): class 1 has runs at both edges and one in the middle;
  # class 2 is not localized (video score 0.3 < 0.5 and not the top class).
  # Video 1 (5 valid steps + 3 padded steps that are above threshold and must be ignored).
  y = np.zeros([2, 8, 2], np.float32)
  y[0, :, 0] = [0.9, 0.6, 0.1, 0.5, 0.7, 0.2, 0.3, 0.8]
  y[0, :, 1] = [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
  y[1, :, 0] = [0.2, 0.2, 0.2, 0.2, 0.2, 0.9, 0.9, 0.9]
  y[1, :, 1] = [0.6, 0.4, 0.55, 0.55, 0.7, 0.9, 0.9, 0.9]
  video = np.array([[0.9, 0.3], [0.2, 0.4]], np.float32)
  fps = np.array([2.0, 1.0], np.float32)
  out = run(y, [8, 5], video, fps)
  # By hand: video 0 class 1 runs [0, 2), [3, 5), [7, 8) with max 0.9, 0.7, 0.8 + 0.63.
  assert out[DF.num_detections].tolist() == [3, 2]
  np.testing.assert_allclose(out[DF.detection_scores][0, :3], [1.53, 1.43, 1.33], rtol=1e-6)
  np.testing.assert_allclose(out[DF.detection_segments][0, :3],
                             [[0.0, 1.0], [3.5, 4.0], [1.5, 2.5]])
  # Video 1: no class reaches 0.5, the top class (2) is localized: [0, 1) and [2, 5);
  # the padded 0.9 steps do not extend the run.
  np.testing.assert_allclose(out[DF.detection_segments][1, :2], [[2.0, 5.0], [0.0, 1.0]])
  np.testing.assert_allclose(out[DF.detection_scores][1, :2], [0.7 + 0.28, 0.6 + 0.28],
                             rtol=1e-6)
  assert out[DF.detection_classes][1, :2].tolist() == [2, 2]
  check(out, np_localize(y, [8, 5], video, fps), 100)
  # Without the top-class rule video 1 has nothing.
  out = run(y, [8, 5], video, fps, localize_top_class=False)
  assert out[DF.num_detections].tolist() == [3, 0]


@pytest.mark.parametrize("max_detections", [3, 50])
def test_random_curves_match_numpy(max_detections):
  rng = np.random.default_rng(max_detections)
  lengths = [17, 0, 9, 1, 17]
  y = rng.uniform(size=[5, 20, 4]).astype(np.float32)
  video = rng.uniform(size=[5, 4]).astype(np.float32)
  fps = rng.uniform(0.5, 3.0, size=[5]).astype(np.float32)
  out = run(y, lengths, video, fps, max_detections=max_detections)
  check(out, np_localize(y, lengths, video, fps), max_detections)
  assert out[DF.detection_segments].shape == (5, max_detections, 2)
  kwargs = dict(step_threshold=0.3, video_score_weight=0.2, video_score_threshold=0.1)
  out = run(y, lengths, video, fps, max_detections=max_detections, **kwargs)
  check(out, np_localize(y, lengths, video, fps, 0.3, 0.2, 0.1), max_detections)


def test_batched_equals_single_and_empty_input_in_tf_function():
  @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.float32),
                                tf.TensorSpec([None], tf.int32),
                                tf.TensorSpec([None, None], tf.float32),
                                tf.TensorSpec([None], tf.float32)])
  def localize(y, n, video, fps):
    return activation_localization.localize_by_thresholding(y, n, video, fps,
                                                            max_detections=10)

  rng = np.random.default_rng(7)
  y = rng.uniform(size=[3, 12, 3]).astype(np.float32)
  video = rng.uniform(size=[3, 3]).astype(np.float32)
  fps = np.array([1.0, 2.0, 4.0], np.float32)
  lengths = np.array([12, 4, 7], np.int32)
  batched = localize(y, lengths, video, fps)
  for b in range(3):
    single = localize(y[b:b + 1, :lengths[b]], lengths[b:b + 1], video[b:b + 1],
                      fps[b:b + 1])
    for key in batched:
      np.testing.assert_array_equal(batched[key].numpy()[b], single[key].numpy()[0])
  empty = localize(np.zeros([2, 0, 3], np.float32), np.zeros([2], np.int32),
                   np.zeros([2, 3], np.float32), np.ones([2], np.float32))
  assert empty[DF.num_detections].numpy().tolist() == [0, 0]
  assert empty[DF.detection_segments].shape == (2, 10, 2)


def test_optional_nms():
  # The components of one class are disjoint (tIoU 0): per-class NMS keeps all of them, and
  # overlapping instances of different classes are never suppressed.
  y = np.zeros([1, 6, 2], np.float32)
  y[0, :, 0] = [0.9, 0.9, 0.1, 0.8, 0.1, 0.1]
  y[0, :, 1] = [0.7, 0.7, 0.7, 0.1, 0.1, 0.1]
  video = np.array([[0.9, 0.8]], np.float32)
  plain = run(y, [6], video, [1.0])
  nms = run(y, [6], video, [1.0], nms_iou_threshold=0.5)
  for key in plain:
    np.testing.assert_allclose(nms[key], plain[key], rtol=1e-6)
  assert plain[DF.num_detections].tolist() == [3]
