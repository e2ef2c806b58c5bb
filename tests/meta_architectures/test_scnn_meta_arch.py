"""S-CNN meta-architecture: phases, losses, phase hand-off, length prior and Sec. 3.3 inference
against numpy references."""
import functools
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.builders import train_phase_builder
from tal_tf.core.standard_fields import DetectionFields as DF
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch
from tal_tf.protos import model_pb2
from tal_tf.utils import config_util
from tests.core.test_window_labeling import np_label

K = 3
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = """
scnn {
  num_classes: 3 streams: "rgb" streams: "flow" fc6_units: 8 fc7_units: 8 dropout_rate: 0.0
  anchor_generator { sliding_window_anchor_generator {
    window_lengths: [16, 32, 64] overlap: 0.5 frames_per_step: 8 } }
  max_detections: 6 max_proposals: 5
  %s
}"""


def build(extra=""):
  return model_builder.build(text_format.Parse(BASE % extra, model_pb2.Model()))


def features(t=20, b=2, seed=0):
  g = tf.random.Generator.from_seed(seed)
  return {"rgb": g.normal([b, t, 3]), "flow": g.normal([b, t, 2])}


def groundtruth():
  return {InputFields.segments: tf.constant([[[2., 6.], [10., 18.]], [[0., 12.], [0., 0.]]]),
          InputFields.labels: tf.constant([[1, 2], [3, 0]]),
          InputFields.num_segments: tf.constant([2, 1])}


NUM_STEPS = tf.constant([20, 12])


def test_phases_variables_and_ablations():
  model = build()
  assert model.training_phases == ("proposal", "classification", "localization")
  model.create_variables({"rgb": 3, "flow": 2})
  for phase in model.training_phases:
    names = [v.name for v in model.phase_variables(phase)]
    assert len(names) == 6 and all(n.startswith(f"scnn_{phase}/") for n in names)
  assert build("use_proposal_network: false").training_phases == (
      "classification", "localization")
  assert build("initialize_localization_from_classification: false").training_phases == (
      "proposal", "localization")
  assert build("scoring_network: CLASSIFICATION").training_phases == (
      "proposal", "classification")
  with pytest.raises(ValueError, match="num_classes"):
    model_builder.build(text_format.Parse('scnn { streams: "rgb" }', model_pb2.Model()))


def np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_losses_match_numpy_on_every_labelled_window():
  # Background ratios large enough that every background is sampled: deterministic.
  model = build("proposal_background_ratio: 1000 classification_background_ratio: 1000 "
                "overlap_alpha: 0.5 overlap_weight: 2.0")
  feats = features()
  gt = groundtruth()
  for phase in model.training_phases:
    pred = model.predict(feats, NUM_STEPS, training=True, phase=phase)
    losses = model.loss(pred, gt, phase)
    windows = pred["windows"].numpy()
    logits = pred[f"{phase}_logits"].numpy()
    terms = []
    for b in range(2):
      g = int(gt[InputFields.num_segments][b])
      labels, v = np_label(windows[b, :-1], int(NUM_STEPS[b]),
                           gt[InputFields.segments][b, :g].numpy(),
                           gt[InputFields.labels][b, :g].numpy())
      for n in np.where(labels >= 0)[0]:
        k = int(labels[n] > 0) if phase == "proposal" else int(labels[n])
        p = np_softmax(logits[b, n])
        term = -np.log(p[k])
        if phase == "localization" and k > 0:
          term += 2.0 * 0.5 * (p[k] ** 2 / v[n] ** 0.5 - 1.0)
        terms.append(term)
    assert len(terms) > 5
    np.testing.assert_allclose(losses["total_loss"].numpy(), np.mean(terms), rtol=1e-5)
    assert losses[f"{phase}_num_windows"].numpy() == len(terms)


def test_gradients_reach_only_the_phase_network_and_default_sampling_counts():
  model = build()
  model.create_variables({"rgb": 3, "flow": 2})
  for phase in model.training_phases:
    with tf.GradientTape() as tape:
      pred = model.predict(features(), NUM_STEPS, training=True, phase=phase)
      loss = model.loss(pred, groundtruth(), phase)
    grads = tape.gradient(loss["total_loss"], model.trainable_variables)
    touched = {v.name.split("/")[0] for v, g in zip(model.trainable_variables, grads)
               if g is not None and np.any(g.numpy() != 0)}
    assert touched == {f"scnn_{phase}"}
  # Proposal phase: all positives + as many backgrounds.
  pred = model.predict(features(), NUM_STEPS, training=True, phase="proposal")
  labels = model.label_windows(pred["windows"], pred["sliding_valid"], groundtruth(),
                               NUM_STEPS)["labels"].numpy()
  num_pos = int((labels > 0).sum())
  assert num_pos >= 3
  assert model.loss(pred, groundtruth(), "proposal")["proposal_num_windows"] == 2 * num_pos


def test_localization_starts_from_classification_weights_exactly():
  model = build()
  model.create_variables({"rgb": 3, "flow": 2})
  cls = model.networks["classification"]
  loc = model.networks["localization"]
  assert not np.array_equal(cls.fc8.kernel.numpy(), loc.fc8.kernel.numpy())
  ctx = lambda fresh: meta_arch.TrainingContext(lambda *a: [], "/tmp", 0, fresh,
                                                stream_dims={"rgb": 3, "flow": 2})
  # Resuming inside the phase keeps the checkpointed localization weights.
  model.begin_phase("localization", ctx(False))
  assert not np.array_equal(cls.fc8.kernel.numpy(), loc.fc8.kernel.numpy())
  model.begin_phase("localization", ctx(True))
  for a, b in zip(cls.weights, loc.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # The copy is a copy: training the localization net leaves the classification net.
  loc.fc8.kernel.assign_add(tf.ones_like(loc.fc8.kernel))
  assert not np.array_equal(cls.fc8.kernel.numpy(), loc.fc8.kernel.numpy())
  # "w/o classification": no hand-off.
  other = build("initialize_localization_from_classification: false")
  other.create_variables({"rgb": 3, "flow": 2})
  before = other.networks["localization"].fc8.kernel.numpy().copy()
  other.begin_phase("localization", ctx(True))
  np.testing.assert_array_equal(other.networks["localization"].fc8.kernel.numpy(), before)


def test_length_prior_from_training_data_matches_numpy_and_is_saved(tmp_path):
  model = build("length_prior_smoothing: 0.5")
  gt = groundtruth()
  batch = dict(gt)
  batch[InputFields.features] = features()
  batch[InputFields.num_steps] = NUM_STEPS
  second = {InputFields.features: features(t=24, seed=3),
            InputFields.num_steps: tf.constant([24, 16]),
            InputFields.segments: tf.constant([[[4., 12.], [0., 0.]], [[0., 8.], [8., 16.]]]),
            InputFields.labels: tf.constant([[1, 0], [2, 2]]),
            InputFields.num_segments: tf.constant([1, 2])}
  batches = [batch, second]
  ctx = meta_arch.TrainingContext(lambda training, repeat: batches, str(tmp_path), 0, True,
                                  stream_dims={"rgb": 3, "flow": 2})
  model.begin_phase("proposal", ctx)
  # Reference: Sec. 3.2 labels of the sliding windows, counted per (class, length).
  lengths = np.array([2.0, 4.0, 8.0])
  counts = np.zeros((K, 3))
  for bt in batches:
    t = int(bt[InputFields.features]["rgb"].shape[1])
    sliding = model._anchor_generator.generate(t).numpy()
    for b in range(2):
      g = int(bt[InputFields.num_segments][b])
      labels, _ = np_label(sliding, int(bt[InputFields.num_steps][b]),
                           bt[InputFields.segments][b, :g].numpy(),
                           bt[InputFields.labels][b, :g].numpy())
      for n in np.where(labels[:-1] > 0)[0]:
        length = sliding[n, 1] - sliding[n, 0]
        counts[labels[n] - 1, int(np.argmin(abs(lengths - length)))] += 1
  assert counts.sum() >= 4
  smoothed = counts + 0.5
  np.testing.assert_allclose(model.length_prior.numpy(),
                             smoothed / smoothed.sum(1, keepdims=True), rtol=1e-6)
  assert bool(model.length_prior_computed.numpy())
  # Saved with the model: a fresh model restores it from a checkpoint.
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  fresh = build("length_prior_smoothing: 0.5")
  fresh.create_variables({"rgb": 3, "flow": 2})
  tf.train.Checkpoint(model=fresh).restore(path).expect_partial()
  np.testing.assert_array_equal(fresh.length_prior.numpy(), model.length_prior.numpy())
  assert bool(fresh.length_prior_computed.numpy())


def np_nms(segments, scores, iou):
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  kept = []
  for i in order:
    if all(tiou(segments[i], segments[j]) <= iou for j in kept):
      kept.append(i)
  return kept


def tiou(a, b):
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - inter
  return inter / union if union > 0 else 0.0


def np_postprocess(windows, valid, pro_logits, loc_logits, prior, lengths, fps, iou,
                   per_class, max_det, threshold=0.7):
  """Sec. 3.3 for one video: P_pro >= 0.7, argmax class != background, x prior, NMS."""
  p_pro = np_softmax(pro_logits)[:, 1]
  probs = np_softmax(loc_logits)
  cand = []
  for n in range(len(windows)):
    if not valid[n] or p_pro[n] < threshold:
      continue
    k = int(np.argmax(probs[n]))
    if k == 0:
      continue
    li = int(np.argmin(abs(lengths - (windows[n, 1] - windows[n, 0]))))
    cand.append((windows[n], probs[n, k] * prior[k - 1, li], k))
  dets = []
  groups = [[c for c in cand if c[2] == k] for k in range(1, K + 1)] if per_class else [cand]
  for group in groups:
    kept = np_nms([c[0] for c in group], [c[1] for c in group], iou)
    dets += [group[i] for i in kept]
  dets.sort(key=lambda d: -d[1])
  dets = dets[:max_det]
  props = sorted([(windows[n], p_pro[n]) for n in range(len(windows))
                  if valid[n] and p_pro[n] >= threshold], key=lambda p: -p[1])
  return ([(d[0] / fps, d[1], d[2]) for d in dets], props)


@pytest.mark.parametrize("extra,per_class,iou", [("", True, 0.4),
                                                 ("per_class_nms: false", False, 0.4),
                                                 ("nms_iou_threshold: 0.3", True, 0.3)])
def test_postprocess_matches_numpy_reference(extra, per_class, iou):
  model = build(extra)
  model.create_variables({"rgb": 3, "flow": 2})
  rng = np.random.default_rng(4)
  prior = rng.uniform(0.1, 1.0, size=(K, 3)).astype(np.float32)
  model.length_prior.assign(prior)
  num_steps = tf.constant([20, 9])
  pred = model.predict(features(), num_steps)
  width = pred["windows"].shape[1]
  # Logits drawn so that many windows pass 0.7 and several are background.
  pred["proposal_logits"] = tf.constant(rng.normal(0, 2, size=(2, width, 2)), tf.float32)
  pred["localization_logits"] = tf.constant(rng.normal(0, 2, size=(2, width, K + 1)),
                                            tf.float32)
  fps = np.array([2.0, 4.0], np.float32)
  out = {k: v.numpy() for k, v in model.postprocess(pred, num_steps, fps).items()}
  for b in range(2):
    dets, props = np_postprocess(pred["windows"].numpy()[b], pred["sliding_valid"].numpy()[b],
                                 pred["proposal_logits"].numpy()[b],
                                 pred["localization_logits"].numpy()[b], prior,
                                 np.array([2.0, 4.0, 8.0]), fps[b], iou, per_class, 6)
    n = out[DF.num_detections][b]
    assert n == len(dets) and n > 0
    np.testing.assert_allclose(out[DF.detection_segments][b, :n], [d[0] for d in dets],
                               rtol=1e-5)
    np.testing.assert_allclose(out[DF.detection_scores][b, :n], [d[1] for d in dets],
                               rtol=1e-5)
    np.testing.assert_array_equal(out[DF.detection_classes][b, :n], [d[2] for d in dets])
    assert (out[DF.detection_classes][b, n:] == 0).all()
    p = out[DF.num_proposals][b]
    assert p == min(len(props), 5)
    np.testing.assert_allclose(out[DF.proposal_scores][b, :p], [q[1] for q in props[:p]],
                               rtol=1e-5)


def test_evaluation_nms_thresholds_and_override():
  model = build()
  assert model.evaluation_nms_iou_thresholds([0.1, 0.5, 0.7]) == pytest.approx(
      {0.1: 0.0, 0.5: 0.4, 0.7: 0.6})
  # The contract hook the shared evaluator reads carries the same thresholds.
  hook = model.evaluation_postprocess_kwargs([0.1, 0.5, 0.7])
  assert sorted(hook) == [0.1, 0.5, 0.7]
  assert [hook[t]["nms_iou_threshold"] for t in (0.1, 0.5, 0.7)] == pytest.approx(
      [0.0, 0.4, 0.6])
  model.create_variables({"rgb": 3, "flow": 2})
  pred = model.predict(features(t=8), tf.constant([8, 8]))
  width = pred["windows"].shape[1]
  pred["proposal_logits"] = tf.constant(np.tile([0.0, 5.0], (2, width, 1)), tf.float32)
  pred["localization_logits"] = tf.constant(
      np.tile([0.0, 5.0, 0.0, 0.0], (2, width, 1)), tf.float32)
  # Equal scores: NMS at 0 keeps the 4 disjoint 2-step windows [0, 2] .. [6, 8]; at 0.9 all
  # 11 windows survive (cut to max_detections = 6).
  loose = model.postprocess(pred, tf.constant([8, 8]), [1.0, 1.0], nms_iou_threshold=0.9)
  strict = model.postprocess(pred, tf.constant([8, 8]), [1.0, 1.0], nms_iou_threshold=0.0)
  assert loose[DF.num_detections].numpy().tolist() == [6, 6]
  assert strict[DF.num_detections].numpy().tolist() == [4, 4]


def test_postprocess_batch_padding_empty_video_and_core_ops_only():
  model = build()
  model.create_variables({"rgb": 3, "flow": 2})

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3]), tf.TensorSpec([None, None, 2]),
                                tf.TensorSpec([None], tf.int32), tf.TensorSpec([None])])
  def serve(rgb, flow, num_steps, fps):
    pred = model.predict({"rgb": rgb, "flow": flow}, num_steps)
    return model.postprocess(pred, num_steps, fps)

  out = serve(tf.zeros([2, 0, 3]), tf.zeros([2, 0, 2]), tf.constant([0, 0]),
              tf.constant([1.0, 1.0]))
  assert out[DF.num_detections].numpy().tolist() == [0, 0]
  feats = features(t=30, b=2)
  both = serve(feats["rgb"], feats["flow"], tf.constant([30, 14]), tf.constant([2.0, 2.0]))
  alone = serve(feats["rgb"][1:, :14], feats["flow"][1:, :14], tf.constant([14]),
                tf.constant([2.0]))
  for key in (DF.detection_scores, DF.num_detections, DF.proposal_scores):
    np.testing.assert_allclose(both[key].numpy()[1:], alone[key].numpy(), rtol=1e-5)
  graph = serve.get_concrete_function().graph.as_graph_def()
  ops = {n.op for n in graph.node}
  for f in graph.library.function:
    ops |= {n.op for n in f.node_def}
  assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
  assert set(model.output_fields) == set(out)


def test_c3d_backbone_on_frames_trains_each_phase_and_detects():
  model = model_builder.build(text_format.Parse("""
    scnn { num_classes: 2 streams: "frames" backbone: C3D fc6_units: 8 fc7_units: 8
      dropout_rate: 0.0 c3d { width_multiplier: 0.0625 crop_size: 32 }
      anchor_generator { sliding_window_anchor_generator {
        window_lengths: [16, 32] overlap: 0.5 frames_per_step: 1 } } }""", model_pb2.Model()))
  frames = {"frames": tf.random.uniform([2, 40, 36, 40, 3], maxval=255.0, seed=1)}
  num_frames = tf.constant([40, 24])
  gt = {InputFields.segments: tf.constant([[[8., 24.]], [[0., 24.]]]),
        InputFields.labels: tf.constant([[1], [2]]),
        InputFields.num_segments: tf.constant([1, 1])}
  for phase in model.training_phases:
    with tf.GradientTape() as tape:
      pred = model.predict(frames, num_frames, training=True, phase=phase)
      loss = model.loss(pred, gt, phase)["total_loss"]
    grads = tape.gradient(loss, model.phase_variables(phase))
    assert all(g is not None for g in grads) and np.isfinite(loss.numpy())
  out = model.postprocess(model.predict(frames, num_frames), num_frames, [30.0, 30.0])
  assert out[DF.detection_segments].shape == (2, 200, 2)


@functools.lru_cache(maxsize=1)
def _embedded_model():
  return model_builder.build(config_util.load_pipeline_config(
      os.path.join(REPO, "configs", "scnn_embedded.config")).model)


@pytest.mark.parametrize("name", sorted(
    os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "scnn_ablations",
                                                        "*.config"))))
def test_every_ablation_override_applies_to_the_embedded_config(name):
  with open(os.path.join(REPO, "configs", "scnn_ablations", name)) as f:
    override = f.read()
  config = config_util.load_pipeline_config(
      os.path.join(REPO, "configs", "scnn_embedded.config"), override)
  model = model_builder.build(config.model)
  base = _embedded_model()
  specs, _ = train_phase_builder.build(config.train_config, model.training_phases)
  assert [s.name for s in specs] == list(model.training_phases)
  changed = [k for k in ("_use_proposal", "_init_loc_from_cls", "_scoring", "_alpha",
                         "_per_class_nms", "_use_length_prior")
             if getattr(model, k) != getattr(base, k)]
  assert len(changed) == 1, (name, changed)


def test_export_serves_and_carries_the_length_prior(tmp_path):
  from tal_tf.export import exporter_lib  # pylint: disable=g-import-not-at-top
  label_map = tmp_path / "label_map.pbtxt"
  label_map.write_text("".join(f'item {{ id: {i} name: "c{i}" }}\n' for i in range(1, 21)))
  config = config_util.load_pipeline_config(
      os.path.join(REPO, "configs", "scnn_embedded.config"),
      f'model {{ scnn {{ fc6_units: 8 fc7_units: 8 }} }} '
      f'train_input_reader {{ label_map_path: "{label_map}" }} '
      f'eval_input_reader {{ label_map_path: "{label_map}" }}')
  model = model_builder.build(config.model)
  model.create_variables({"rgb": 32, "flow": 32})
  model.length_prior.assign(tf.random.uniform(model.length_prior.shape, seed=2))
  checkpoint = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt" / "ckpt"))
  out = exporter_lib.export_saved_model(config, checkpoint, str(tmp_path / "export"))
  loaded = tf.saved_model.load(out)
  np.testing.assert_array_equal(loaded.model.length_prior.numpy(), model.length_prior.numpy())
  feats = features(t=50, b=2, seed=5)
  feats = {"rgb": tf.tile(feats["rgb"][..., :1], [1, 1, 32]),
           "flow": tf.tile(feats["flow"][..., :1], [1, 1, 32])}
  served = loaded.signatures["serving_default"](
      rgb=feats["rgb"], flow=feats["flow"], num_steps=tf.constant([50, 30]),
      feature_fps=tf.constant([2.0, 2.0]))
  pred = model.predict(feats, tf.constant([50, 30]))
  want = model.postprocess(pred, tf.constant([50, 30]), tf.constant([2.0, 2.0]))
  for key in (DF.num_detections, DF.detection_scores, DF.num_proposals):
    np.testing.assert_allclose(served[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("extra,want", [
    ("", ["scnn_proposal", "scnn_classification"]),
    ("initialize_localization_from_classification: false",
     ["scnn_proposal", "scnn_localization"])])
def test_pretrained_weights_initialize_the_paper_networks_when_fresh(extra, want):
  model = build(extra)
  model.create_variables({"rgb": 3, "flow": 2})
  loaded = []
  model._pretrained_initializer = lambda network: loaded.append(network.name)
  for fresh in (False, True):
    ctx = meta_arch.TrainingContext(lambda *a: [], "/tmp", 0, fresh,
                                    stream_dims={"rgb": 3, "flow": 2})
    for phase in model.training_phases:
      model.begin_phase(phase, ctx)
  assert loaded == want  # only when a phase starts fresh, never on resume
