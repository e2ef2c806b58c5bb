"""Tests for the WTAL meta-architecture: contract, padding invariance, full loss vs numpy."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.core.standard_fields import DetectionFields as DF
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import wtal_meta_arch
from tal_tf.protos import model_pb2
from tests.core.test_losses import np_class_metric_loss
from tests.core.test_video_scores import np_video_probability

CONFIG = """
wtal {
  num_classes: 3 streams: "rgb" streams: "flow" block_size: 4 top_k: 2 kappa: 1.5
  dropout_rate: 0.5 %s
}"""


def build(extra=""):
  # Unseeded Keras initializers draw from Python's random: seed everything.
  tf_keras.utils.set_random_seed(3)
  return model_builder.build(text_format.Merge(CONFIG % extra, model_pb2.Model()))


def inputs(rng, lengths, dims=(3, 2)):
  length = max(lengths) + 2
  features = {name: rng.normal(size=[len(lengths), length, d]).astype(np.float32)
              for name, d in zip(("rgb", "flow"), dims)}
  for b, n in enumerate(lengths):  # Garbage padding must not matter.
    for value in features.values():
      value[b, n:] = 50.0
  return features, np.array(lengths, np.int32)


def test_contract_declarations():
  model = build()
  assert isinstance(model, wtal_meta_arch.WtalMetaArch)
  assert model.input_fields == (InputFields.video_labels,)
  assert model.stream_names == ("rgb", "flow")
  assert model.num_classes == 3
  assert not model.has_proposals
  assert model.output_fields[-2:] == ("video_class_scores", "step_class_scores")


def test_batched_equals_single_and_empty_video():
  model = build()
  rng = np.random.default_rng(0)
  features, lengths = inputs(rng, [9, 3, 0, 6])
  fps = np.array([1.0, 2.0, 1.0, 0.5], np.float32)
  predictions = model.predict(features, lengths)
  detections = model.postprocess(predictions, lengths, fps)
  for b, n in enumerate(lengths):
    single_features = {k: v[b:b + 1, :n] for k, v in features.items()}
    single = model.predict(single_features, lengths[b:b + 1])
    np.testing.assert_allclose(predictions["class_activations"].numpy()[b, :n],
                               single["class_activations"].numpy()[0], rtol=1e-5, atol=1e-6)
    single_detections = model.postprocess(single, lengths[b:b + 1], fps[b:b + 1])
    for key in (DF.detection_segments, DF.detection_scores, DF.detection_classes,
                DF.num_detections, "video_class_scores"):
      np.testing.assert_allclose(detections[key].numpy()[b], single_detections[key].numpy()[0],
                                 rtol=1e-5, atol=1e-6, err_msg=f"{key} video {b}")
    np.testing.assert_allclose(detections["step_class_scores"].numpy()[b, :n],
                               single_detections["step_class_scores"].numpy()[0], rtol=1e-5)
    assert not detections["step_class_scores"].numpy()[b, n:].any()
  assert detections[DF.num_detections].numpy()[2] == 0
  assert not detections["video_class_scores"].numpy()[2].any()
  assert detections[DF.num_detections].numpy()[0] > 0
  # T = 0 for the whole batch.
  empty = model.postprocess(model.predict({k: v[:, :0] for k, v in features.items()},
                                          np.zeros([4], np.int32)),
                            np.zeros([4], np.int32), fps)
  assert empty[DF.num_detections].numpy().tolist() == [0, 0, 0, 0]


def np_model_outputs(model, features, lengths):
  """u and clipped s from the model's weights, in numpy (no dropout)."""
  net = model.network
  x = np.concatenate([features["rgb"], features["flow"]], axis=-1).astype(np.float64)
  u = np.maximum(x @ net.embedding.kernel.numpy() + net.embedding.bias.numpy(), 0.0)
  s = np.clip(u @ net.classifier.kernel.numpy() + net.classifier.bias.numpy(), -1.5, 1.5)
  return u, s


def np_balanced_bce(p, y):
  pos = (y * np.log(p)).sum() / max(y.sum(), 1)
  neg = ((1 - y) * np.log(1 - p)).sum() / max((1 - y).sum(), 1)
  return -(pos + neg)


@pytest.mark.parametrize("metric", ["TRIPLET", "CONTRASTIVE", "NO_METRIC_LOSS"])
def test_full_loss_matches_numpy_on_a_hand_made_batch(metric):
  model = build(f"metric_loss: {metric} margin: 3.0 metric_loss_weight: 0.5")
  rng = np.random.default_rng(1)
  features, lengths = inputs(rng, [11, 7, 3, 9])
  labels = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 1]], np.float32)
  predictions = model.predict(features, lengths, training=False)
  losses = model.loss(predictions, {InputFields.video_labels: labels})
  u, s = np_model_outputs(model, features, lengths)
  bce = np.mean([np_balanced_bce(np_video_probability(s[b], n, 4, 2), labels[b])
                 for b, n in enumerate(lengths)])
  np.testing.assert_allclose(losses["classification_loss"].numpy(), bce, rtol=1e-5)
  if metric == "NO_METRIC_LOSS":
    expected_metric = 0.0
  else:
    expected_metric = 0.5 * np_class_metric_loss(
        u, s, lengths, labels, model.network.classifier_kernel.numpy().astype(np.float64),
        3.0, metric.lower())
    assert expected_metric > 0
  np.testing.assert_allclose(losses["metric_loss"].numpy(), expected_metric, rtol=1e-4)
  np.testing.assert_allclose(losses["total_loss"].numpy(), bce + expected_metric, rtol=1e-5)


@pytest.mark.parametrize("extra", [
    "", "classification_loss: BCE", "classification_loss: SOFTMAX_MIL",
    "distance: COSINE", "distance: EUCLIDEAN", "distance: LEARNED learned_metric_rank: 2",
    "block_size: 0", "kappa: 0", "embedding_dim: 8 nms_iou_threshold: 0.5"])
def test_variants_train_every_variable(extra):
  model = build(extra)
  rng = np.random.default_rng(2)
  features, lengths = inputs(rng, [10, 6, 8])
  labels = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1]], np.float32)
  model.predict(features, lengths)  # Creates the variables.
  with tf.GradientTape() as tape:
    predictions = model.predict(features, lengths, training=True)
    total = model.loss(predictions, {InputFields.video_labels: labels})["total_loss"]
  variables = model.trainable_variables
  gradients = tape.gradient(total, variables)
  assert len(variables) == (5 if "LEARNED" in extra else 4)
  for variable, gradient in zip(variables, gradients):
    assert gradient is not None, variable.name
    assert np.all(np.isfinite(gradient.numpy())), variable.name
  detections = model.postprocess(model.predict(features, lengths), lengths,
                                 np.ones([3], np.float32))
  assert detections[DF.detection_segments].shape == (3, 100, 2)


def test_loss_decreases_on_a_toy_problem():
  # Class c is present where feature channel c is high: a few Adam steps must lower the loss.
  # No clipping here: with kappa = 1.5 a negative class keeps P(c|V) >= 1 - 0.82^3 over the
  # three blocks, which floors the loss near a quarter of its start.
  model = build("dropout_rate: 0.0 kappa: 0")
  rng = np.random.default_rng(4)
  lengths = np.array([12] * 6, np.int32)
  labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]],
                    np.float32)
  rgb = rng.normal(size=[6, 12, 3]).astype(np.float32) * 0.1
  for b in range(6):
    for c in np.flatnonzero(labels[b]):
      rgb[b, 2 + 3 * c:5 + 3 * c, c] += 3.0
  features = {"rgb": rgb, "flow": np.zeros([6, 12, 2], np.float32)}
  optimizer = tf_keras.optimizers.Adam(0.05)
  first = None
  for _ in range(40):
    with tf.GradientTape() as tape:
      total = model.loss(model.predict(features, lengths, training=True),
                         {InputFields.video_labels: labels})["classification_loss"]
    if first is None:
      first = float(total)
    grads = tape.gradient(total, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
  assert float(total) < 0.3 * first


def test_builder_errors_name_the_field():
  with pytest.raises(ValueError, match="model.wtal.top_k"):
    build("top_k: 0")
  with pytest.raises(ValueError, match="model.wtal.streams"):
    model_builder.build(text_format.Parse("wtal { num_classes: 2 }", model_pb2.Model()))
  with pytest.raises(KeyError, match="video_labels"):
    model = build()
    features, lengths = inputs(np.random.default_rng(0), [3])
    model.loss(model.predict(features, lengths), {})


def test_inference_graph_is_core_ops_and_saves(tmp_path):
  """predict + postprocess trace with dynamic B and T into core ops only and round-trip
  through a SavedModel."""
  model = build("nms_iou_threshold: 0.5")
  model.create_variables({"rgb": 3, "flow": 2})

  class Module(tf.Module):

    def __init__(self, inner):
      super().__init__()
      self.inner = inner

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32),
                                  tf.TensorSpec([None, None, 2], tf.float32),
                                  tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None], tf.float32)])
    def detect(self, rgb, flow, num_steps, fps):
      predictions = self.inner.predict({"rgb": rgb, "flow": flow}, num_steps)
      return self.inner.postprocess(predictions, num_steps, fps)

  module = Module(model)
  graph = module.detect.get_concrete_function().graph
  op_types = {op.type for op in graph.get_operations()}
  for function in graph.as_graph_def().library.function:
    op_types |= {node.op for node in function.node_def}
  assert not op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
  tf.saved_model.save(module, str(tmp_path / "saved"))
  loaded = tf.saved_model.load(str(tmp_path / "saved"))
  features, lengths = inputs(np.random.default_rng(5), [7, 4])
  fps = np.array([1.0, 2.0], np.float32)
  expected = module.detect(features["rgb"], features["flow"], lengths, fps)
  got = loaded.detect(features["rgb"], features["flow"], lengths, fps)
  assert set(got) == set(model.output_fields)
  for key in expected:
    np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), rtol=1e-6)
