"""Tests for the class activation curve image (ground truth shaded)."""
import numpy as np
import pytest

from tal_tf.core.standard_fields import InputFields
from tal_tf.evaluation import class_activation_plot as cap

NAMES = ["Jump", "Throw", "Swing"]


def _batch():
  return {
      InputFields.video_id: np.array([b"a", b"b", b"c"]),
      InputFields.num_steps: np.array([8, 4, 0]),
      InputFields.feature_fps: np.array([2.0, 1.0, 1.0], np.float32),
      InputFields.segments_seconds: np.array([[[1.0, 3.0], [0, 0]], [[0.0, 2.0], [2.0, 4.0]],
                                              [[0, 0], [0, 0]]], np.float32),
      InputFields.labels: np.array([[2, 0], [1, 3], [0, 0]]),
      InputFields.num_segments: np.array([1, 2, 0]),
  }


def _detections():
  scores = np.zeros([3, 8, 3], np.float32)
  scores[0, 2:6, 1] = 0.9
  scores[0, 4:8, 2] = 0.2
  scores[1, :4, 0] = 0.7
  return {cap.STEP_CLASS_SCORES: scores,
          cap.VIDEO_CLASS_SCORES: np.array([[0.1, 0.8, 0.3], [0.9, 0.2, 0.5], [0, 0, 0]])}


def test_videos_from_batch_trim_padding():
  videos = cap.activation_videos_from_batch(_batch(), _detections(),
                                            {1: "Jump", 2: "Throw", 3: "Swing"}, limit=2)
  assert [v["video_id"] for v in videos] == ["a", "b"]
  assert videos[0]["step_scores"].shape == (8, 3) and videos[1]["step_scores"].shape == (4, 3)
  assert videos[0]["labels"] == ["Throw"] and videos[1]["labels"] == ["Jump", "Swing"]
  np.testing.assert_allclose(videos[0]["segments"], [[1.0, 3.0]])
  with pytest.raises(KeyError, match="step_class_scores"):
    cap.activation_videos_from_batch(_batch(), {}, {}, limit=1)


def test_classes_to_draw_ground_truth_first():
  video = {"labels": ["Swing"], "video_scores": np.array([0.9, 0.1, 0.5]),
           "step_scores": np.zeros([3, 3])}
  assert cap.classes_to_draw(video, NAMES, max_classes=2) == [2, 0]
  assert cap.classes_to_draw(video, NAMES, max_classes=3) == [2, 0, 1]


def test_image_shades_ground_truth_in_the_class_colour():
  videos = cap.activation_videos_from_batch(_batch(), _detections(),
                                            {1: "Jump", 2: "Throw", 3: "Swing"}, limit=3)
  image = cap.plot_class_activation_curves(videos, NAMES)
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  # The shading of video "a"'s Throw segment: the class colour at alpha 0.25 over white.
  color = np.array(cap.curve_colors(NAMES)["Throw"][:3])
  shade = np.round(255 * (0.25 * color + 0.75)).astype(int)
  hits = np.all(np.abs(image.astype(int) - shade) <= 2, axis=-1)
  assert hits.sum() > 100
  # Without ground truth there is no such shading.
  for video in videos:
    video["segments"] = np.zeros([0, 2])
    video["labels"] = []
  plain = cap.plot_class_activation_curves(videos, NAMES)
  assert np.all(np.abs(plain.astype(int) - shade) <= 2, axis=-1).sum() < hits.sum() / 10
