"""TAL-Net options: cross-boundary anchors, proposals-only (number_of_stages: 1)."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tal_tf.builders import model_builder
from tal_tf.core.standard_fields import InputFields
from tal_tf.utils import config_util

# Scales 1 and 4, no context; the first-stage mini-batch (256) takes every eligible anchor of
# these tiny videos, so the first-stage loss is deterministic.
TINY = """
model {
  tal_net {
    num_classes: 2
    streams: "rgb"
    feature_reduction_dim: 4
    num_filters: 4
    anchor_generator { multiscale_anchor_generator { scales: [1, 4] } }
    spn_context: false
    first_stage_nms { iou_threshold: 0.99 max_total: 12 }
    second_stage_nms { iou_threshold: 0.5 max_per_class: 5 max_total: 5 }
    %s
  }
}
"""
DROP = "cross_boundary_anchors: DROP_IN_TRAINING_CLIP_AT_INFERENCE"

# Videos of 6 and 3 steps padded to 6; anchor row t*2 + k, scale 1 (k=0) or 4 (k=1).
NUM_STEPS = (6, 3)
# By hand: a scale-4 anchor at t is [t - 1.5, t + 2.5], inside [0, n] for 2 <= t <= n - 2.5:
# t in {2, 3} for n = 6, none for n = 3. Scale-1 anchors [t, t + 1] are always inside.
CROSSING = {0: [(0, 1), (1, 1), (4, 1), (5, 1)], 1: [(0, 1), (1, 1), (2, 1)]}


@pytest.fixture(scope="module")
def embedded_records(tmp_path_factory):
  """Tiny synthetic THUMOS'14-style records (the training tests' data)."""
  from tests.training import test_training  # pylint: disable=g-import-not-at-top
  return test_training.data.__wrapped__(tmp_path_factory)


def build(extra="", seed=0):
  tf_keras.utils.set_random_seed(seed)
  return model_builder.build(config_util.parse_pipeline_text(TINY % extra).model)


def inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, 6, 3)).astype(np.float32)
  x[1, 3:] = 0.0
  return {"rgb": tf.constant(x)}, tf.constant(NUM_STEPS, tf.int32)


def groundtruth():
  # Chosen so that every crossing anchor is a negative (tIoU < 0.3), i.e. trained when kept.
  return {InputFields.segments: tf.constant([[[4.5, 5.0]], [[0.0, 1.0]]]),
          InputFields.labels: tf.constant([[1], [2]], tf.int32),
          InputFields.num_segments: tf.constant([1, 1], tf.int32)}


def expected_valid(drop):
  valid = np.zeros((2, 12), bool)
  for b, n in enumerate(NUM_STEPS):
    valid[b, :2 * n] = True
    if drop:
      for t, k in CROSSING[b]:
        valid[b, 2 * t + k] = False
  return valid


@pytest.mark.parametrize("drop", [False, True])
def test_training_drops_exactly_the_crossing_anchors(drop):
  model = build(DROP if drop else "")
  feats, num_steps = inputs()
  preds = model.predict(feats, num_steps, training=True)
  np.testing.assert_array_equal(preds["anchor_valid"].numpy(), expected_valid(drop))
  # At inference nothing is dropped (the crossing anchors are clipped instead).
  preds_eval = model.predict(feats, num_steps, training=False)
  np.testing.assert_array_equal(preds_eval["anchor_valid"].numpy(), expected_valid(False))


@pytest.mark.parametrize("drop", [False, True])
def test_first_stage_loss_ignores_exactly_the_dropped_anchors(drop):
  model = build(DROP if drop else "")
  feats, num_steps = inputs()
  preds = model.predict(feats, num_steps, training=True)
  base = float(model.loss(preds, groundtruth())["first_stage_classification_loss"])

  def loss_with_logit_changed(b, row):
    logits = preds["objectness_logits"].numpy()
    logits[b, row] += [3.0, -3.0]
    changed = dict(preds, objectness_logits=tf.constant(logits))
    return float(model.loss(changed, groundtruth())["first_stage_classification_loss"])

  for b in range(2):
    for t, k in CROSSING[b]:
      moved = loss_with_logit_changed(b, 2 * t + k) != base
      assert moved == (not drop), (b, t, k)
    # A scale-1 anchor inside the video always counts: [0, 1] (negative / positive).
    assert loss_with_logit_changed(b, 0) != base


def _proposals(model, encodings, scores, training):
  """Runs anchor selection + decoding + NMS on hand-set SPN outputs; returns video 0's."""
  # pylint: disable=protected-access
  num_steps = tf.constant(NUM_STEPS)
  anchors = model.anchors(6)
  valid, decode_anchors = model._anchors_for_videos(anchors, num_steps, num_steps * 2,
                                                    training)
  logits = np.stack([np.zeros_like(scores), scores], axis=-1).astype(np.float32)
  segments, _, num = model._proposals(decode_anchors, tf.constant(logits),
                                      tf.constant(encodings, tf.float32), num_steps, valid)
  # pylint: enable=protected-access
  return segments.numpy()[0, :int(num[0])]


@pytest.mark.parametrize("drop", [False, True])
def test_crossing_anchor_becomes_a_proposal_only_when_kept(drop):
  model = build(DROP if drop else "")
  scores = np.full((2, 12), -5.0)
  scores[0, 2 * 0 + 1] = 5.0  # scale-4 anchor at t = 0: [-1.5, 2.5], crosses the start
  encodings = np.zeros((2, 12, 2))
  top = _proposals(model, encodings, scores, training=True)[0]
  if drop:
    assert not np.allclose(top, [0.0, 2.5])
  else:
    np.testing.assert_allclose(top, [0.0, 2.5])  # decoded, then clipped to the video


@pytest.mark.parametrize("drop,expected", [(False, [0.0, 4.9]), (True, [0.0, 4.0])])
def test_inference_clips_the_anchor_before_decoding(drop, expected):
  # Scale-4 anchor at t = 0, [-1.5, 2.5]; codes (tc, tl) = (1, 5 log 2): c = ca + 0.1 la,
  # l = 2 la. Unclipped (ca, la) = (0.5, 4): [-3.1, 4.9] -> clipped after decoding
  # [0, 4.9]. Clipped first (ca, la) = (1.25, 2.5): [-1, 4] -> [0, 4].
  model = build(DROP if drop else "")
  scores = np.full((2, 12), -5.0)
  scores[0, 1] = 5.0
  encodings = np.zeros((2, 12, 2))
  encodings[0, 1] = [1.0, 5.0 * np.log(2.0)]
  top = _proposals(model, encodings, scores, training=False)[0]
  np.testing.assert_allclose(top, expected, atol=1e-5)
  # An anchor inside the video decodes the same in both modes: scale 4 at t = 2, [0.5, 4.5].
  scores[0, 1], scores[0, 5], encodings[0, 5] = -5.0, 5.0, encodings[0, 1]
  top = _proposals(model, encodings, scores, training=False)[0]
  np.testing.assert_allclose(top, [0.0, 6.0], atol=1e-5)  # c 2.9, l 8: [-1.1, 6.9] clipped


def test_default_keeps_crossing_anchors_everywhere():
  model = build()
  feats, num_steps = inputs()
  for training in (False, True):
    preds = model.predict(feats, num_steps, training=training)
    np.testing.assert_array_equal(preds["anchor_valid"].numpy(), expected_valid(False))


# ----------------------------------------------------------------------------- one stage
def test_one_stage_builds_no_classifier_and_returns_proposals_as_detections():
  model = build("number_of_stages: 1")
  two = build("")
  feats, num_steps = inputs()
  preds = model.predict(feats, num_steps, training=True)
  two.predict(feats, num_steps, training=True)
  assert "class_logits" not in preds and "refined_box_encodings" not in preds
  names = [v.name for v in model.trainable_variables]
  assert names and not any("classifier" in n for n in names), names
  assert any("classifier" in v.name for v in two.trainable_variables)
  # Same seed: the first stage is the same network with the same weights.
  assert len(names) == len([v for v in two.trainable_variables if "classifier" not in v.name])
  with tf.GradientTape() as tape:
    preds = model.predict(feats, num_steps, training=True)
    losses = model.loss(preds, groundtruth())
  assert sorted(losses) == ["first_stage_classification_loss", "first_stage_localization_loss",
                            "total_loss"]
  grads = tape.gradient(losses["total_loss"], model.trainable_variables)
  assert all(g is not None for g in grads)

  fps = tf.constant([2.0, 0.5])
  preds = model.predict(feats, num_steps)
  dets = model.postprocess(preds, num_steps, fps)
  num = preds["num_proposals"].numpy()
  assert (num > 0).all()
  np.testing.assert_array_equal(dets["num_detections"].numpy(), num)
  np.testing.assert_array_equal(dets["num_proposals"].numpy(), num)
  seconds = preds["proposal_segments"].numpy() / np.array([2.0, 0.5])[:, None, None]
  for key in ("detection_segments", "proposal_segments"):
    np.testing.assert_allclose(dets[key].numpy(), seconds, rtol=1e-6, err_msg=key)
  for key in ("detection_scores", "proposal_scores"):
    np.testing.assert_array_equal(dets[key].numpy(), preds["proposal_scores"].numpy())
  classes = dets["detection_classes"].numpy()
  for b in range(2):
    assert (classes[b, :num[b]] == 1).all() and (classes[b, num[b]:] == 0).all()
  assert model.max_detections == 12 and model.window_merge["max_detections"] == 12


def test_one_stage_number_is_checked():
  with pytest.raises(ValueError, match="number_of_stages"):
    build("number_of_stages: 3")


def test_one_stage_trains_evaluates_ar_and_exports(tmp_path, embedded_records):
  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import evaluator
  from tal_tf.export import exporter_lib
  from tal_tf.training import run_lib
  from tests.training import test_training
  # pylint: enable=g-import-not-at-top
  text = test_training.CONFIG % embedded_records
  text = text.replace("    num_classes: 20\n", "    num_classes: 20\n    number_of_stages: 1\n")
  text = text.replace("num_steps: 6", "num_steps: 3")
  config = config_util.parse_pipeline_text(text)
  assert config.model.tal_net.number_of_stages == 1
  model_dir = str(tmp_path / "run")
  metrics = run_lib.run(config, model_dir, "train_and_eval")
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-3")
  scalars = evaluator.scalar_metrics(metrics)
  assert {"AR@5", "AR@10"} <= set(scalars), sorted(scalars)
  assert 0.0 <= scalars["AR@5"] <= scalars["AR@10"] <= 1.0
  export_dir = exporter_lib.export_saved_model(config, model_dir, str(tmp_path / "export"))
  assert not exporter_lib.non_core_ops(exporter_lib.saved_model_op_types(export_dir))
  fn = tf.saved_model.load(export_dir).signatures["serving_default"]
  rng = np.random.default_rng(0)
  feats = {s: tf.constant(rng.normal(size=(2, 20, test_training.DIM)), tf.float32)
           for s in ("rgb", "flow")}
  out = fn(num_steps=tf.constant([20, 11]), feature_fps=tf.constant([1.0, 2.0]), **feats)
  num = out["num_detections"].numpy()
  np.testing.assert_array_equal(num, out["num_proposals"].numpy())
  assert (num > 0).all()
  for b in range(2):
    n = num[b]
    np.testing.assert_array_equal(out["detection_classes"].numpy()[b, :n], 1)
    np.testing.assert_allclose(out["detection_segments"].numpy()[b, :n],
                               out["proposal_segments"].numpy()[b, :n])
    np.testing.assert_allclose(out["detection_scores"].numpy()[b, :n],
                               out["proposal_scores"].numpy()[b, :n])
