"""Evaluation figures: uint8 RGB images of sane shape, with the drawn content visible."""

import glob
import os

import numpy as np
import pytest

from tal_tf.evaluation import activitynet_protocol as anet
from tal_tf.evaluation import visualization as vis

BAR_BLUE = np.array([31, 119, 180])       # matplotlib 'tab:blue' == tab20 colour 0


def count_color(image, rgb, tol=12):
  return int(np.sum(np.all(np.abs(image.astype(int) - rgb) <= tol, axis=-1)))


def assert_rgb_image(image):
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert image.shape[0] > 50 and image.shape[1] > 50
  assert image.std() > 5           # not a blank canvas


def test_per_class_ap_bars_scale_with_ap():
  low = vis.plot_per_class_ap(["a", "b"], [0.1, 0.1])
  high = vis.plot_per_class_ap(["a", "b"], [0.9, 0.9])
  assert_rgb_image(low)
  assert low.shape == high.shape
  assert count_color(high, BAR_BLUE) > 4 * count_color(low, BAR_BLUE) > 0
  with pytest.raises(ValueError, match="ap"):
    vis.plot_per_class_ap(["a", "b"], [0.5])


def test_recall_curve_image():
  x = np.arange(1, 101, dtype=float)
  y = np.minimum(1.0, x / 50)
  image = vis.plot_recall_vs_num_proposals(x, y, recall=np.stack([y, y * 0.5]),
                                           tiou_thresholds=[0.5, 0.9])
  assert_rgb_image(image)
  assert count_color(image, np.array([214, 39, 40])) > 100     # the red average-recall line


def test_detection_timelines_draw_gt_and_detections():
  gt = {"v1": {"segments": np.array([[5.0, 20.0]]), "labels": np.array(["Jump"], object),
               "duration": 60.0},
        "v2": {"segments": np.array([[0.0, 10.0], [30.0, 50.0]]),
               "labels": np.array(["Jump", "Run"], object)}}
  res = {"v1": {"segments": np.array([[4.0, 21.0], [40.0, 45.0]]),
                "labels": np.array(["Jump", "Run"], object), "scores": np.array([0.9, 0.3])},
         "v2": {"segments": np.array([[31.0, 49.0]]), "labels": np.array(["Run"], object),
                "scores": np.array([0.8])}}
  image = vis.plot_detection_timelines(gt, res, ["v1", "v2"], top_k=5,
                                       class_names=["Jump", "Run"])
  assert_rgb_image(image)
  assert count_color(image, BAR_BLUE) > 200                      # 'Jump' bars (tab20 #0)
  assert count_color(image, np.array([174, 199, 232])) > 200     # 'Run' bars (tab20 #1)
  one = vis.plot_detection_timelines(gt, res, ["v1"])
  assert one.shape[0] < image.shape[0]                           # one panel per video


def test_evaluation_images_and_tensorboard_summaries(tmp_path):
  gt = {"v": {"segments": np.array([[0.0, 10.0]]), "labels": np.array(["Jump"], object)}}
  res = {"v": {"segments": np.array([[0.0, 9.0]]), "labels": np.array(["Jump"], object),
               "scores": np.array([0.9])}}
  metrics = {"detection": anet.mean_average_precision(gt, res, [0.5, 0.7]),
             "proposals": anet.average_recall_metrics(gt, res)}
  images = vis.evaluation_images(metrics, gt, res, ["v"])
  assert sorted(images) == ["detection_timelines", "per_class_ap", "recall_vs_num_proposals"]
  for image in images.values():
    assert_rgb_image(image)

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writer = tf.summary.create_file_writer(str(tmp_path))
  with writer.as_default():
    vis.write_image_summaries(images, step=3)
  writer.flush()
  files = glob.glob(os.path.join(str(tmp_path), "events.out.tfevents.*"))
  assert files
  tags = set()
  for event in tf.compat.v1.train.summary_iterator(files[0]):
    for value in event.summary.value:
      tags.add(value.tag)
      assert event.step == 3
  assert {"eval/per_class_ap", "eval/detection_timelines"} <= tags
