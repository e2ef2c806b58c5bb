"""TAL-Net meta-architecture: shapes, losses, batching, variants, and that it learns."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tal_tf.builders import model_builder
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.utils import config_util

SMALL = """
model {
  tal_net {
    num_classes: 3
    streams: "rgb"
    streams: "flow"
    fusion: %(fusion)s
    feature_reduction_dim: 16
    num_filters: 16
    anchor_generator { multiscale_anchor_generator { scales: [1, 2, 4, 8] } }
    spn_variant: %(variant)s
    spn_context: %(context)s
    first_stage_nms { iou_threshold: 0.7 max_total: 40 }
    second_stage_nms { iou_threshold: 0.5 max_per_class: 10 max_total: 20 }
  }
}
"""


def build(fusion="LATE", variant="MULTI_DILATED", seed=0):
  # Seeds Python, numpy and TF: tf_keras' unseeded initializers draw from Python's random.
  tf_keras.utils.set_random_seed(seed)
  # Tab. 1's baselines have no context; context doubles the multi-dilated towers (Tab. 2).
  context = "true" if variant == "MULTI_DILATED" else "false"
  config = config_util.parse_pipeline_text(
      SMALL % dict(fusion=fusion, variant=variant, context=context))
  return model_builder.build(config.model)


def features(batch, steps, seed=0):
  rng = np.random.default_rng(seed)
  return {"rgb": tf.constant(rng.normal(size=(batch, steps, 6)), tf.float32),
          "flow": tf.constant(rng.normal(size=(batch, steps, 5)), tf.float32)}


def groundtruth():
  return {
      InputFields.segments: tf.constant([[[4.0, 10.0], [20.0, 22.0]], [[1.0, 9.0], [0.0, 0.0]]]),
      InputFields.labels: tf.constant([[1, 3], [2, 0]], tf.int32),
      InputFields.num_segments: tf.constant([2, 1], tf.int32),
  }


@pytest.mark.parametrize("fusion", ["LATE", "EARLY"])
@pytest.mark.parametrize("variant", ["MULTI_DILATED", "MULTI_TCONV", "SINGLE_TCONV", "SINGLE"])
def test_predict_loss_postprocess_shapes(fusion, variant):
  model = build(fusion, variant)
  num_steps = tf.constant([30, 17], tf.int32)
  preds = model.predict(features(2, 30), num_steps, training=True)
  n = 30 * 4
  assert preds["objectness_logits"].shape == (2, n, 2)
  assert preds["anchor_box_encodings"].shape == (2, n, 2)
  assert preds["class_logits"].shape == (2, 40, 4)
  assert preds["refined_box_encodings"].shape == (2, 40, 3, 2)
  np.testing.assert_array_equal(preds["num_valid_anchors"].numpy(), [120, 68])
  props = preds["proposal_segments"].numpy()
  nprop = preds["num_proposals"].numpy()
  # Proposals lie inside their own video (padding never leaks in).
  for b, length in enumerate([30, 17]):
    assert 0 < nprop[b] <= 40
    assert props[b, :nprop[b]].min() >= 0.0 and props[b, :nprop[b]].max() <= length
  losses = model.loss(preds, groundtruth())
  for name, value in losses.items():
    assert np.isfinite(value.numpy()), name
  np.testing.assert_allclose(
      losses["total_loss"].numpy(),
      sum(v.numpy() for k, v in losses.items() if k != "total_loss"), rtol=1e-6)
  dets = model.postprocess(preds, num_steps, tf.constant([2.0, 0.5]))
  assert dets[DetectionFields.detection_segments].shape == (2, 20, 2)
  classes = dets[DetectionFields.detection_classes].numpy()
  num = dets[DetectionFields.num_detections].numpy()
  for b in range(2):
    assert set(classes[b, :num[b]]).issubset({1, 2, 3})
    assert (classes[b, num[b]:] == 0).all()
  # Seconds: video 1 is 17 steps at 0.5 steps/s = 34 s long.
  segs = dets[DetectionFields.detection_segments].numpy()
  assert segs[1, :num[1]].max() <= 34.0 + 1e-4
  assert segs[0, :num[0]].max() <= 15.0 + 1e-4


def test_late_fusion_has_one_branch_per_stream_and_early_one():
  late, early = build("LATE"), build("EARLY")
  late.predict(features(1, 12), tf.constant([12]))
  early.predict(features(1, 12), tf.constant([12]))
  late_names = {v.name.split("/")[0] for v in late.trainable_variables}
  early_names = {v.name.split("/")[0] for v in early.trainable_variables}
  assert any(n.startswith("rgb_") for n in late_names)
  assert any(n.startswith("flow_") for n in late_names)
  assert all(n.startswith("rgb_flow_") for n in early_names), early_names
  # Early fusion's reducer sees the concatenated 6 + 5 channels.
  kernels = [v for v in early.trainable_variables if "reducer" in v.name and "kernel" in v.name]
  assert kernels[0].shape[-2] == 11


def test_every_trainable_variable_gets_a_gradient():
  model = build()
  with tf.GradientTape() as tape:
    preds = model.predict(features(2, 30), tf.constant([30, 17]), training=True)
    total = model.loss(preds, groundtruth())["total_loss"]
  grads = tape.gradient(total, model.trainable_variables)
  assert all(g is not None for g in grads)
  zero = [v.name for v, g in zip(model.trainable_variables, grads) if not np.any(g.numpy())]
  # Only per-scale SPN regression heads may get no gradient (no positive anchor of that scale
  # in this tiny batch); every reducer, tower and classifier weight must learn.
  assert all("spn" in name for name in zero), zero
  assert len(zero) <= 8, zero


def test_batch_detections_equal_single_video_detections():
  model = build()
  feats = features(2, 30, seed=3)
  num_steps = tf.constant([30, 21], tf.int32)
  fps = tf.constant([1.0, 1.0])
  batch = model.postprocess(model.predict(feats, num_steps), num_steps, fps)
  for b in range(2):
    t = int(num_steps[b])
    single_feats = {k: v[b:b + 1, :t] for k, v in feats.items()}
    single = model.postprocess(model.predict(single_feats, num_steps[b:b + 1]),
                               num_steps[b:b + 1], fps[b:b + 1])
    n = int(single[DetectionFields.num_detections][0])
    assert int(batch[DetectionFields.num_detections][b]) == n
    for key in (DetectionFields.detection_segments, DetectionFields.detection_scores,
                DetectionFields.detection_classes):
      np.testing.assert_allclose(batch[key][b, :n].numpy(), single[key][0, :n].numpy(),
                                 rtol=1e-4, atol=1e-4, err_msg=key)


def test_empty_video_gives_no_detections():
  model = build()
  feats = {"rgb": tf.zeros([2, 0, 6]), "flow": tf.zeros([2, 0, 5])}
  num_steps = tf.constant([0, 0])
  preds = model.predict(feats, num_steps)
  dets = model.postprocess(preds, num_steps, tf.constant([1.0, 1.0]))
  np.testing.assert_array_equal(preds["num_proposals"].numpy(), [0, 0])
  np.testing.assert_array_equal(dets[DetectionFields.num_detections].numpy(), [0, 0])


def test_missing_stream_is_named():
  model = build()
  with pytest.raises(KeyError, match="flow"):
    model.predict({"rgb": tf.zeros([1, 8, 6])}, tf.constant([8]))


def test_overfits_one_video_and_localizes_its_action():
  """A few hundred Adam steps on one video: the top detection must match the ground truth."""
  model = build(seed=1)
  steps = 40
  rng = np.random.default_rng(0)
  rgb = rng.normal(scale=0.1, size=(1, steps, 6)).astype(np.float32)
  flow = rng.normal(scale=0.1, size=(1, steps, 5)).astype(np.float32)
  rgb[0, 12:20] += np.array([2.0, -1.0, 1.5, 0.0, 1.0, -2.0], np.float32)  # class 2 pattern
  flow[0, 12:20] += 1.5
  feats = {"rgb": tf.constant(rgb), "flow": tf.constant(flow)}
  num_steps = tf.constant([steps])
  gt = {InputFields.segments: tf.constant([[[12.0, 20.0]]]),
        InputFields.labels: tf.constant([[2]], tf.int32),
        InputFields.num_segments: tf.constant([1], tf.int32)}
  optimizer = tf_keras.optimizers.Adam(3e-3)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      losses = model.loss(model.predict(feats, num_steps, training=True), gt)
    grads = tape.gradient(losses["total_loss"], model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return losses["total_loss"]

  first = float(step())
  for _ in range(250):
    last = float(step())
  assert last < 0.3 * first, (first, last)
  dets = model.postprocess(model.predict(feats, num_steps), num_steps, tf.constant([1.0]))
  top_segment = dets[DetectionFields.detection_segments][0, 0].numpy()
  assert int(dets[DetectionFields.detection_classes][0, 0]) == 2
  inter = max(0.0, min(top_segment[1], 20.0) - max(top_segment[0], 12.0))
  union = (top_segment[1] - top_segment[0]) + 8.0 - inter
  assert inter / union > 0.7, top_segment


def test_inference_fast_paths_give_the_training_paths_detections():
  """Inference runs dilated convs natively (training uses Keras' SpaceToBatch path) and pools
  all streams at once: same proposals and detections to float tolerance."""
  model = build()  # scales 1, 2, 4, 8 with context: dilations 2 and 5 occur
  feats = features(2, 30, seed=5)
  num_steps = tf.constant([30, 19], tf.int32)
  fps = tf.constant([1.0, 2.0])
  fast = model.predict(feats, num_steps, training=False)
  slow = model.predict(feats, num_steps, training=True)
  np.testing.assert_allclose(fast["objectness_logits"].numpy(),
                             slow["objectness_logits"].numpy(), rtol=1e-5, atol=1e-5)
  fast_dets = model.postprocess(fast, num_steps, fps)
  slow_dets = model.postprocess(slow, num_steps, fps)
  for key in (DetectionFields.num_detections, DetectionFields.detection_classes,
              DetectionFields.num_proposals):
    np.testing.assert_array_equal(fast_dets[key].numpy(), slow_dets[key].numpy(), err_msg=key)
  for key in (DetectionFields.detection_segments, DetectionFields.detection_scores,
              DetectionFields.proposal_segments, DetectionFields.proposal_scores):
    np.testing.assert_allclose(fast_dets[key].numpy(), slow_dets[key].numpy(), rtol=1e-4,
                               atol=1e-4, err_msg=key)


def test_one_pooling_over_all_streams_equals_pooling_each_stream():
  from tal_tf.core import soi_pooling  # pylint: disable=g-import-not-at-top
  model = build()
  feats = features(2, 30, seed=6)
  num_steps = tf.constant([30, 19], tf.int32)
  preds = model.predict(feats, num_steps)
  maps = [feats["rgb"], feats["flow"]]
  # pylint: disable=protected-access
  logits, boxes = model._classify(maps, preds["proposal_segments"], num_steps, False)
  ref_logits, ref_boxes = [], []
  for head, m in zip(model._heads, maps):
    pooled = soi_pooling.soi_pooling(m, preds["proposal_segments"], num_steps, num_bins=7,
                                     context_fraction=0.5)
    cls, enc = head(pooled)
    ref_logits.append(cls.numpy())
    ref_boxes.append(enc.numpy())
  # pylint: enable=protected-access
  np.testing.assert_allclose(logits.numpy(), np.mean(ref_logits, axis=0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(boxes.numpy(), np.mean(ref_boxes, axis=0), rtol=1e-6, atol=1e-6)


def test_only_existing_proposal_slots_are_classified():
  """Slots past every video's num_proposals are skipped (zeros); the others are unchanged."""
  model = build()
  feats = features(2, 12, seed=7)
  num_steps = tf.constant([12, 5], tf.int32)
  preds = model.predict(feats, num_steps)
  used = int(max(preds["num_proposals"].numpy()))
  assert used < 40  # max_total: short videos leave padded slots
  maps = [feats["rgb"], feats["flow"]]
  # pylint: disable=protected-access
  full_logits, full_boxes = model._classify(maps, preds["proposal_segments"], num_steps, False)
  # pylint: enable=protected-access
  assert preds["class_logits"].shape == full_logits.shape
  np.testing.assert_allclose(preds["class_logits"].numpy()[:, :used],
                             full_logits.numpy()[:, :used], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(preds["refined_box_encodings"].numpy()[:, :used],
                             full_boxes.numpy()[:, :used], rtol=1e-5, atol=1e-6)
  assert not preds["class_logits"].numpy()[:, used:].any()
