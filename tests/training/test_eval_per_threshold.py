"""Evaluation with per-threshold post-processing (the contract's evaluation_postprocess_kwargs).

A toy model reads its candidate detections from the features (one candidate per step:
start, end, score in seconds, class 1) and applies NMS at a threshold `postprocess` takes as
an argument; mAP@theta must come from the detections of that theta's NMS.
"""

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core.standard_fields import DetectionFields as DF
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch
from tal_tf.protos import eval_pb2
from tal_tf.training import eval_lib

# Candidates [start, end, score]: tIoU(A, B) = 9/11, tIoU(A, C) = 0.35, tIoU(B, C) = 2.5/11,
# D overlaps nothing.
CANDIDATES = np.array([[0.0, 10.0, 0.9],    # A
                       [1.0, 11.0, 0.8],    # B
                       [0.0, 3.5, 0.7],     # C
                       [20.0, 30.0, 0.6]],  # D
                      np.float32)
GROUNDTRUTH = np.array([[0.0, 10.0], [0.0, 4.5]])   # tIoU(C, g2) = 3.5 / 4.5
SERVING_NMS = 0.45


class NmsToy(meta_arch.TemporalDetectionModel):
  """Detections = NMS over the candidates in the features at `nms_iou_threshold`."""

  num_classes = 1
  stream_names = ("rgb",)
  max_detections = 4

  def predict(self, features, num_steps, training=False, phase=None):
    return {"candidates": features["rgb"]}

  def loss(self, predictions, groundtruth, phase=None):
    return {"total_loss": tf.constant(0.0)}

  def postprocess(self, predictions, num_steps, feature_fps, nms_iou_threshold=SERVING_NMS):
    cand = predictions["candidates"]
    n = self.max_detections

    def one(c):
      boxes = tf.stack([tf.zeros_like(c[:, 0]), c[:, 0], tf.ones_like(c[:, 0]), c[:, 1]], -1)
      keep = tf.image.non_max_suppression(boxes, c[:, 2], n, iou_threshold=nms_iou_threshold)
      k = tf.shape(keep)[0]
      pad = lambda x: tf.pad(x, [[0, n - k]] + [[0, 0]] * (len(x.shape) - 1))
      return (pad(tf.gather(c[:, :2], keep)), pad(tf.gather(c[:, 2], keep)),
              pad(tf.ones([k], tf.int32)), k)

    seg, score, cls, num = tf.map_fn(
        one, cand, fn_output_signature=(tf.float32, tf.float32, tf.int32, tf.int32))
    return {DF.detection_segments: seg, DF.detection_scores: score,
            DF.detection_classes: cls, DF.num_detections: num}


class PerThresholdToy(NmsToy):
  """The same model asking for NMS at theta - 0.1 when evaluated at theta (S-CNN's rule)."""

  def evaluation_postprocess_kwargs(self, tiou_thresholds):
    return {float(t): {"nms_iou_threshold": float(t) - 0.1} for t in tiou_thresholds}


def dataset():
  return [{
      InputFields.features: {"rgb": tf.constant(CANDIDATES[np.newaxis])},
      InputFields.num_steps: tf.constant([4]),
      InputFields.feature_fps: tf.constant([1.0]),
      InputFields.video_id: tf.constant([b"v1"]),
      InputFields.duration: tf.constant([60.0]),
      InputFields.num_segments: tf.constant([2]),
      InputFields.segments_seconds: tf.constant(GROUNDTRUTH[np.newaxis], tf.float32),
      InputFields.labels: tf.constant([[1, 1]]),
  }]


def numpy_nms(cands, iou_threshold):
  """Greedy NMS by score (drop when tIoU > threshold) -> kept rows."""
  order = np.argsort(-cands[:, 2], kind="stable")
  kept = []
  for i in order:
    if all(tiou(cands[i, :2], cands[j, :2]) <= iou_threshold for j in kept):
      kept.append(i)
  return cands[kept]


def tiou(a, b):
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def numpy_ap(dets, gts, theta):
  """ActivityNet AP of one class: greedy matching by score, interpolated precision."""
  used = np.zeros(len(gts), bool)
  tp = []
  for d in dets[np.argsort(-dets[:, 2], kind="stable")]:
    ious = np.array([tiou(d[:2], g) if not used[j] else -1 for j, g in enumerate(gts)])
    j = int(np.argmax(ious))
    hit = ious[j] >= theta
    used[j] |= hit
    tp.append(hit)
  tp = np.array(tp, float)
  rec = np.cumsum(tp) / len(gts)
  prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
  mprec = np.concatenate([[0], prec, [0]])
  mrec = np.concatenate([[0], rec, [1]])
  for i in range(len(mprec) - 2, -1, -1):
    mprec[i] = max(mprec[i], mprec[i + 1])
  idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
  return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def evaluate(model, per_threshold=True, thetas=(0.3, 0.5)):
  config = eval_pb2.EvalConfig(tiou_thresholds=list(thetas), num_visualizations=0,
                               per_threshold_postprocessing=per_threshold)
  metrics, collector, _, _ = eval_lib.evaluate_dataset(model, config, dataset(), {1: "jump"})
  return metrics["detection"], collector


def test_map_at_theta_uses_that_thetas_nms():
  detection, collector = evaluate(PerThresholdToy())
  # Hand case: NMS 0.2 (theta 0.3) keeps A, D (C suppressed by A at 0.35 > 0.2): A hits g1,
  # g2 missed -> AP 0.5. NMS 0.4 (theta 0.5) keeps A, C, D: A -> g1, C -> g2 (0.78) -> AP 1.
  np.testing.assert_allclose(detection["mAP"], [0.5, 1.0], atol=1e-6)
  for i, theta in enumerate((0.3, 0.5)):
    ref = numpy_ap(numpy_nms(CANDIDATES, theta - 0.1), GROUNDTRUTH, theta)
    assert detection["mAP"][i] == pytest.approx(ref, abs=1e-6)
    np.testing.assert_allclose(collector.results_per_threshold[theta]["v1"]["segments"],
                               numpy_nms(CANDIDATES, theta - 0.1)[:, :2])
  assert detection["average_mAP"] == pytest.approx(0.75)
  # The written / drawn detections are the serving ones (NMS 0.45: A, C, D).
  np.testing.assert_allclose(collector.results["v1"]["segments"],
                             numpy_nms(CANDIDATES, SERVING_NMS)[:, :2])


def test_switch_off_scores_every_theta_on_the_serving_nms():
  detection, collector = evaluate(PerThresholdToy(), per_threshold=False)
  refs = [numpy_ap(numpy_nms(CANDIDATES, SERVING_NMS), GROUNDTRUTH, t) for t in (0.3, 0.5)]
  np.testing.assert_allclose(detection["mAP"], refs, atol=1e-6)
  np.testing.assert_allclose(detection["mAP"], [1.0, 1.0], atol=1e-6)
  assert not collector.results_per_threshold


def test_default_hook_post_processes_once():
  model = NmsToy()
  assert model.evaluation_postprocess_kwargs([0.3, 0.5]) == {0.3: {}, 0.5: {}}
  detection, collector = evaluate(model, thetas=(0.3, 0.5, 0.7))
  assert not collector.results_per_threshold and not collector.variants
  refs = [numpy_ap(numpy_nms(CANDIDATES, SERVING_NMS), GROUNDTRUTH, t) for t in (0.3, 0.5, 0.7)]
  np.testing.assert_allclose(detection["mAP"], refs, atol=1e-6)
