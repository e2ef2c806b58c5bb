"""ETP meta-architecture: Eq. 4 targets, sampling/OHEM, loss weights, scoring, chain, cache."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import etp_meta_arch
from tal_tf.meta_architectures import meta_arch
from tal_tf.protos import model_pb2

SMALL = """etp { num_classes: 3 streams: "rgb" streams: "flow" actionness_hidden_units: 8
  refinement_hidden_units: 6 localization_hidden_units: 8 max_proposals: 12 max_units: 4
  max_length: 12 unit_length: 4 %s }"""


def build(extra=""):
  tf.random.set_seed(0)
  return model_builder.build(text_format.Parse(SMALL % extra, model_pb2.Model()))


def features(b=2, t=20, seed=0):
  rng = np.random.default_rng(seed)
  return {"rgb": tf.constant(rng.normal(size=(b, t, 4)), tf.float32),
          "flow": tf.constant(rng.normal(size=(b, t, 4)), tf.float32)}


GT = {InputFields.segments: tf.constant([[[2., 8.], [10., 15.]], [[3., 6.], [0., 0.]]]),
      InputFields.labels: tf.constant([[1, 2], [3, 0]]),
      InputFields.num_segments: tf.constant([2, 1])}


def test_phases_and_variables():
  model = build()
  assert model.training_phases == ("actionness", "refinement", "localization")
  assert build("use_refinement: false").training_phases == ("actionness", "localization")
  model.create_variables({"rgb": 4, "flow": 4})
  names = {p: {v.name for v in model.phase_variables(p)} for p in model.training_phases}
  assert all(names[p] for p in names)
  assert not (names["actionness"] & names["refinement"]) and not (
      names["refinement"] & names["localization"])
  assert all(n.startswith("actionness") for n in names["actionness"])
  with pytest.raises(ValueError, match="unknown"):
    model.phase_variables("train")


def test_each_phase_trains_its_network_only():
  # Seeded: whether an untrained network's proposals reach this hand-made ground truth
  # depends on the initial weights, which otherwise follow the tests run before this one.
  tf_keras.utils.set_random_seed(0)
  model = build()
  f, n = features(), tf.constant([20, 13])
  for phase in model.training_phases:
    with tf.GradientTape() as tape:
      loss = model.loss(model.predict(f, n, training=True, phase=phase), GT, phase)
    own = model.phase_variables(phase)
    grads = tape.gradient(loss["total_loss"], own)
    assert any(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads), phase
    others = [v for p in model.training_phases if p != phase
              for v in model.phase_variables(p)]
    with tf.GradientTape() as tape:
      loss = model.loss(model.predict(f, n, training=True, phase=phase), GT, phase)
    assert all(g is None for g in tape.gradient(loss["total_loss"], others)), phase


def test_step_targets_from_segments():
  model = build()
  targets = model.step_targets(6, tf.constant([[[1.0, 3.5], [3.0, 5.0]]]),
                               tf.constant([[2, 3]]), tf.constant([2])).numpy()[0]
  # centers 0.5..5.5: class 2 (column 1) on steps 1, 2 (3.5 is not in [1, 3.5)); class 3
  # on steps 3, 4.
  np.testing.assert_array_equal(targets[:, 1], [0, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(targets[:, 2], [0, 0, 0, 1, 1, 0])
  np.testing.assert_array_equal(targets[:, 0], 0)


def test_refinement_targets_eq4():
  model = build()  # d = 4, stride 2
  fitted = tf.constant([[[2., 10.], [0., 4.]]])
  gt = tf.constant([[[3.1, 8.9], [0.2, 6.8]]])
  got = model.refinement_targets(fitted, gt).numpy()[0]
  # gt snapped: [4, 8] (c 6, l 4) vs fitted c 6, l 8; [0, 6] (c 3, l 6) vs c 2, l 4.
  np.testing.assert_allclose(got, [[0.0, np.log(4 / 8)], [(3 - 2) / 4, np.log(6 / 4)]],
                             atol=1e-6)


def _rn_predictions(model, proposals, codes):
  from tal_tf.core import unit_ops
  fitted, _ = unit_ops.fit_to_grid(proposals, 4.0, 2.0)
  return {"an_proposals": proposals, "num_proposals": tf.constant([proposals.shape[1]]),
          "rn_fitted": fitted, "rn_codes": codes}


def test_refinement_loss_uses_positive_and_incomplete_only():
  model = build()
  gt = tf.constant([[[10., 20.]]])
  # tIoU: 1.0 (positive), 0.5 (incomplete), 0 (background), 0.2 (ignored).
  proposals = tf.constant([[[10., 20.], [10., 15.], [30., 40.], [18., 28.]]])
  pred = _rn_predictions(model, proposals, tf.zeros([1, 4, 2]))
  targets = model.refinement_targets(pred["rn_fitted"], tf.broadcast_to(gt, [1, 4, 2]))
  pred["rn_codes"] = targets
  assert float(model.refinement_loss(pred, gt, tf.constant([1]))) == pytest.approx(0.0)
  # Background / ignored codes do not count.
  pred["rn_codes"] = tf.tensor_scatter_nd_add(targets, [[0, 2, 0], [0, 3, 1]], [5.0, 5.0])
  assert float(model.refinement_loss(pred, gt, tf.constant([1]))) == pytest.approx(0.0)
  # An error of 0.5 on the incomplete one: smooth L1 0.125, N = N_pos + N_inc = 2.
  pred["rn_codes"] = tf.tensor_scatter_nd_add(targets, [[0, 1, 0]], [0.5])
  assert float(model.refinement_loss(pred, gt, tf.constant([1]))) == pytest.approx(0.0625)


def test_localization_sampling_ratios():
  model = build("max_positives: 5")
  b, n = 2, 200
  rng = np.random.default_rng(0)
  kind = rng.integers(0, 3, size=(b, n))
  kind[1, :] = np.where(np.arange(n) < 3, 0, kind[1])
  kind[1, 3:] = np.where(kind[1, 3:] == 0, 1, kind[1, 3:])  # video 1: 3 positives only
  pos, inc, bg = (tf.constant(kind == k) for k in range(3))
  sp, si, sb = (m.numpy() for m in model.sample_localization(pos, inc, bg, seed=[1, 2]))
  assert list(sp.sum(1)) == [5, 3]          # positives capped at max_positives
  assert list(sb.sum(1)) == [5, 3]          # positive : background = 1 : 1
  assert list(si.sum(1)) == [20, 12]        # positive : incomplete = 1 : 4
  assert not (sp & ~pos.numpy()).any() and not (si & ~inc.numpy()).any()
  assert not (sb & ~bg.numpy()).any()


def _ln_predictions(proposals, logits, completeness, codes):
  return {"ln_proposals": tf.constant(proposals, tf.float32),
          "num_proposals": tf.constant([len(proposals[0])]),
          "class_logits": tf.constant(logits, tf.float32),
          "completeness": tf.constant(completeness, tf.float32),
          "ln_codes": tf.constant(codes, tf.float32)}


def test_localization_losses_weights_and_ohem():
  model = build("max_positives: 1 completeness_weight: 0.5 localization_weight: 0.25")
  gt_segments, gt_labels, num_gt = (tf.constant([[[0., 10.]]]), tf.constant([[2]]),
                                    tf.constant([1]))
  # One positive (tIoU 1), four incompletes (tIoU 0.5..0.6), one background (no overlap).
  proposals = [[[0, 10], [0, 5], [0, 6], [5, 10], [4, 10], [30, 40]]]
  logits = np.zeros([1, 6, 4]); logits[0, 0, 2] = 2.0; logits[0, 5, 0] = 1.0
  completeness = [[0.5, -2.0, 0.0, 0.8, -0.5, 0.0]]
  codes = np.zeros([1, 6, 2]); codes[0, 0] = [0.5, 0.0]
  pred = _ln_predictions(proposals, logits, completeness, codes)
  cls, comp, loc = model.localization_losses(pred, gt_segments, gt_labels, num_gt,
                                             seed=[0, 1])
  # Classification: positive (class 2) and the background, each a softmax over 4 logits.
  ce_pos = -np.log(np.exp(2) / (np.exp(2) + 3))
  ce_bg = -np.log(np.e / (np.e + 3))
  assert float(cls) == pytest.approx((ce_pos + ce_bg) / 2, rel=1e-5)
  # Completeness: hinge of the positive (1 - 0.5) and of the hardest quarter (ceil(4/4) = 1)
  # of the incompletes, the one with s = 0.8 (hinge 1.8): (0.5 + 1.8) / 2.
  assert float(comp) == pytest.approx((0.5 + 1.8) / 2, rel=1e-5)
  # Localization: positive only, code error 0.5 -> 0.125 / N_pos.
  assert float(loc) == pytest.approx(0.125, rel=1e-5)
  out = model.loss({**pred, "num_steps": tf.constant([40])},
                   {InputFields.segments: gt_segments, InputFields.labels: gt_labels,
                    InputFields.num_segments: num_gt}, "localization")
  assert float(out["completeness_loss"]) == pytest.approx(0.5 * float(comp), rel=1e-5)
  assert float(out["localization_loss"]) == pytest.approx(0.25 * float(loc), rel=1e-5)
  assert float(out["total_loss"]) == pytest.approx(
      float(cls) + 0.5 * float(comp) + 0.25 * float(loc), rel=1e-5)


def test_default_loss_weights_are_the_papers():
  model = build()
  assert model._completeness_weight == pytest.approx(0.1)
  assert model._localization_weight == pytest.approx(0.1)
  assert model._nms_iou == pytest.approx(0.36)


def test_scoring_and_postprocess():
  model = build()
  logits = np.array([[[0.0, 1.0, 0.5, -1.0], [0.2, 0.1, 2.0, 0.0]]], np.float32)
  completeness = np.array([[0.3, -0.4]], np.float32)
  got = model.detection_scores(logits, completeness).numpy()
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(got, p[..., 1:] * np.exp(completeness)[..., None], rtol=1e-5)
  pred = _ln_predictions([[[0, 10], [20, 30]]], logits, completeness, np.zeros([1, 2, 2]))
  pred["proposal_scores"] = tf.constant([[0.9, 0.8]])
  dets = model.postprocess(pred, tf.constant([40]), tf.constant([2.0]))
  assert int(dets["num_detections"][0]) == 6  # 2 proposals x 3 classes, no overlap
  top = np.argsort(-got.reshape(-1))[0]
  assert int(dets["detection_classes"][0, 0]) == top % 3 + 1
  np.testing.assert_allclose(dets["detection_segments"][0, 0],
                             np.array([[0, 10], [20, 30]])[top // 3] / 2.0)
  across = build("per_class_nms: false")
  dets = across.postprocess(pred, tf.constant([40]), tf.constant([2.0]))
  assert int(dets["num_detections"][0]) == 2
  assert list(dets["detection_classes"].numpy()[0, :2]) == [2, 1] or list(
      dets["detection_classes"].numpy()[0, :2]) == [1, 2]
  np.testing.assert_allclose(sorted(dets["detection_scores"].numpy()[0, :2]),
                             sorted(got.max(-1)[0]), rtol=1e-5)


def _pattern(t, spans, k=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(scale=0.1, size=(t, 8)).astype(np.float32)
  for s, e in spans:
    x[s:e] += 2.0
  return x


def test_chain_is_batch_independent_and_handles_empty_videos():
  model = build("grouping_thresholds: 0.45 min_length: 1")
  a, b = _pattern(14, [(3, 9)]), _pattern(24, [(2, 6), (12, 20)], seed=1)
  single = model.predict({"rgb": a[None, :, :4], "flow": a[None, :, 4:]}, tf.constant([14]))
  batch_x = np.zeros([3, 24, 8], np.float32)
  batch_x[0, :14], batch_x[1] = a, b
  both = model.predict({"rgb": batch_x[..., :4], "flow": batch_x[..., 4:]},
                       tf.constant([14, 24, 0]))
  d1 = model.postprocess(single, tf.constant([14]), tf.constant([1.0]))
  d2 = model.postprocess(both, tf.constant([14, 24, 0]), tf.constant([1.0, 1.0, 1.0]))
  n = int(d1["num_detections"][0])
  assert int(d2["num_detections"][0]) == n and int(d2["num_detections"][2]) == 0
  np.testing.assert_allclose(d2["detection_scores"][0, :n], d1["detection_scores"][0, :n],
                             rtol=1e-4)
  np.testing.assert_allclose(d2["detection_segments"][0, :n],
                             d1["detection_segments"][0, :n], atol=1e-4)
  assert set(d2) == set(model.output_fields)
  empty = model.predict({"rgb": tf.zeros([2, 0, 4]), "flow": tf.zeros([2, 0, 4])},
                        tf.zeros([2], tf.int32))
  dets = model.postprocess(empty, tf.zeros([2], tf.int32), tf.ones([2]))
  assert list(dets["num_detections"].numpy()) == [0, 0]
  assert list(dets[DetectionFields.num_proposals].numpy()) == [0, 0]


def test_proposal_cache_preprocess_and_begin_phase(tmp_path):
  model = build()
  f = features(b=2, t=20)
  batch = {InputFields.features: f, InputFields.num_steps: tf.constant([20, 20]),
           InputFields.video_id: tf.constant([b"v1", b"v2"])}
  calls = []

  def dataset_fn(is_training, repeat):
    assert not is_training and not repeat
    calls.append(1)
    return tf.data.Dataset.from_tensors(batch)

  ctx = meta_arch.TrainingContext(dataset_fn, str(tmp_path), 0, True)
  model.begin_phase("refinement", ctx)
  path = os.path.join(tmp_path, "refinement_proposals.npz")
  assert os.path.exists(path) and calls == [1]
  assert os.listdir(tmp_path) == ["refinement_proposals.npz"]  # no temporaries left
  with np.load(path) as data:
    ids, cached, counts = list(data["ids"]), data["proposals"], data["counts"]
  want = model._phase_inputs(f, tf.constant([20, 20]), "refinement")
  np.testing.assert_allclose(cached, want[0].numpy())
  assert ids == [b"v1", b"v2"]
  # A resumed run loads the file instead of recomputing.
  model.begin_phase("refinement", meta_arch.TrainingContext(dataset_fn, str(tmp_path), 0,
                                                            False))
  assert calls == [1]
  # Window crops: proposals shift by the offset and are clipped to the window.
  model.set_proposal_cache([b"v1"], [[[2.0, 6.0], [10.0, 18.0]] + [[0, 0]] * 10], [2])
  crop = {InputFields.features: features(b=2, t=8),
          InputFields.num_steps: tf.constant([8, 8]),
          InputFields.video_id: tf.constant([b"v1", b"other"]),
          InputFields.window_offset: tf.constant([4, 0])}
  out = model.preprocess(crop)[InputFields.features]
  np.testing.assert_allclose(out[etp_meta_arch.CACHED_PROPOSALS][0, :2], [[0, 2], [6, 8]])
  assert list(out[etp_meta_arch.CACHED_NUM_PROPOSALS].numpy()) == [2, -1]
  # predict reads the cache (a video missing from it has no proposals).
  pre = model.preprocess(crop)
  pred = model.predict(pre[InputFields.features], pre[InputFields.num_steps], True,
                       "refinement")
  np.testing.assert_allclose(pred["an_proposals"][0, :2], [[0, 2], [6, 8]])
  assert list(pred["num_proposals"].numpy()) == [2, 0]
  model.begin_phase("actionness", ctx)
  assert model.preprocess(crop) is crop


def test_inference_refinement_switch():
  # Bypassing the RN at inference gives the LN AN's own proposals; the training phases keep
  # the configuration. A model configured without the RN cannot enable its untrained RN.
  tf_keras.utils.set_random_seed(0)   # the AN's random weights decide its proposals
  model = build("grouping_thresholds: [0.5]")
  x = _pattern(24, [(2, 6), (12, 20)], seed=1)
  feats, steps = {"rgb": x[None, :, :4], "flow": x[None, :, 4:]}, tf.constant([24])
  inputs, num_steps = model._inputs(feats, steps)  # pylint: disable=protected-access
  an_segments, _, an_num = model._an_proposals(feats, inputs, num_steps)  # pylint: disable=protected-access
  n = int(an_num[0])
  assert n > 0
  refined = model.predict(feats, steps)["ln_proposals"]
  model.set_inference_refinement(False)
  assert model.training_phases == ("actionness", "refinement", "localization")
  assert model.has_refinement and not model.use_refinement
  bypassed = model.predict(feats, steps)["ln_proposals"]
  np.testing.assert_allclose(bypassed[0, :n], an_segments[0, :n])
  assert not np.allclose(bypassed[0, :n], refined[0, :n])   # the grid moves some of them
  # With the RN on, the proposals are the RN's (fitted to the unit grid of 4 steps, stride 2).
  fitted, _ = etp_meta_arch.unit_ops.fit_to_grid(an_segments, 4.0, 2.0)
  codes = model.predict(feats, steps, phase="refinement")["rn_codes"]
  expected = model._clip(model._coder.decode(codes, fitted), num_steps)  # pylint: disable=protected-access
  np.testing.assert_allclose(refined[0, :n], expected[0, :n], atol=1e-5)
  model.set_inference_refinement(True)
  np.testing.assert_allclose(model.predict(feats, steps)["ln_proposals"], refined, atol=1e-6)

  plain = build("use_refinement: false")
  assert plain.training_phases == ("actionness", "localization") and not plain.has_refinement
  with pytest.raises(ValueError, match="use_refinement: false"):
    plain.set_inference_refinement(True)
  plain.set_inference_refinement(False)
