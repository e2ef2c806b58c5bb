"""Tests of the TAL-Net classifier head that follows SoI pooling."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tal_tf  # noqa: F401  (sets Keras 2)
from tal_tf.models.tal_net_classifier import SoiClassifierHead


def _np_head(head, pooled):
  """Loop reference: relu(1x1 reduce) -> flatten bin-major -> relu(FC) -> (logits, boxes)."""
  w_r, b_r = head.reducer.weights[0].numpy(), head.reducer.weights[1].numpy()
  w_h, b_h = head.hidden.kernel.numpy(), head.hidden.bias.numpy()
  w_c, b_c = head.class_layer.kernel.numpy(), head.class_layer.bias.numpy()
  w_b, b_b = head.box_layer.kernel.numpy(), head.box_layer.bias.numpy()
  batch, num_props, num_bins, _ = pooled.shape
  reduce_dim = w_r.shape[1]
  logits = np.zeros((batch, num_props, head.num_classes + 1))
  boxes = np.zeros((batch, num_props, head.num_classes, head.code_size))
  for b in range(batch):
    for p in range(num_props):
      flat = np.zeros(num_bins * reduce_dim)
      for i in range(num_bins):
        for r in range(reduce_dim):
          flat[i * reduce_dim + r] = max(0.0, pooled[b, p, i] @ w_r[:, r] + b_r[r])
      hidden = np.maximum(flat @ w_h + b_h, 0.0)
      logits[b, p] = hidden @ w_c + b_c
      raw = hidden @ w_b + b_b
      for c in range(head.num_classes):
        for j in range(head.code_size):
          boxes[b, p, c, j] = raw[c * head.code_size + j]
  return logits, boxes


def test_matches_numpy_reference():
  head = SoiClassifierHead(num_classes=3, fc_units=8, reduce_filters=4)
  rng = np.random.default_rng(0)
  pooled = rng.normal(size=(2, 5, 7, 6)).astype(np.float32)
  logits, boxes = head(tf.constant(pooled))
  ref_logits, ref_boxes = _np_head(head, pooled)
  assert logits.shape == (2, 5, 4) and boxes.shape == (2, 5, 3, 2)
  np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=1e-4, atol=1e-5)


def test_layer_sizes_follow_the_paper_defaults():
  head = SoiClassifierHead(num_classes=20)
  head.build([None, None, 7, 1024])  # weights exist after build, before any call
  assert head.reducer.weights[0].shape == (1024, 256)   # 1x1 reduce to 256
  assert head.hidden.kernel.shape == (7 * 256, 256)     # one FC layer of 256
  assert head.class_layer.kernel.shape == (256, 21)     # 20 actions + background
  assert head.box_layer.kernel.shape == (256, 40)       # class-specific (tc, tl)


def test_box_encodings_are_class_specific_constructed_case():
  # Zero weights; the box bias is 10 c + j so entry [.., c, j] must read 10 c + j.
  head = SoiClassifierHead(num_classes=3, fc_units=2, reduce_filters=2)
  head.build([None, None, 3, 2])
  for var in head.weights:
    var.assign(tf.zeros_like(var))
  head.box_layer.bias.assign([10.0 * c + j for c in range(3) for j in range(2)])
  head.class_layer.bias.assign([0.0, 1.0, 2.0, 3.0])
  logits, boxes = head(tf.ones([1, 2, 3, 2]))
  for p in range(2):
    np.testing.assert_allclose(logits.numpy()[0, p], [0, 1, 2, 3])
    for c in range(3):
      np.testing.assert_allclose(boxes.numpy()[0, p, c], [10 * c, 10 * c + 1])


def test_without_reduction():
  head = SoiClassifierHead(num_classes=2, fc_units=4, reduce_filters=None)
  logits, boxes = head(tf.zeros([1, 3, 5, 6]))
  assert head.reducer is None
  assert head.hidden.kernel.shape == (5 * 6, 4)
  assert logits.shape == (1, 3, 3) and boxes.shape == (1, 3, 2, 2)


def test_dynamic_batch_and_proposals_in_tf_function():
  head = SoiClassifierHead(num_classes=4, fc_units=8, reduce_filters=4)
  head.build([None, None, 5, 3])  # weights first: creating variables inside forces a retrace
  fn = tf.function(head, input_signature=[tf.TensorSpec([None, None, 5, 3], tf.float32)])
  for batch, props in [(1, 1), (2, 7), (3, 0)]:
    pooled = tf.random.uniform([batch, props, 5, 3])
    logits, boxes = fn(pooled)
    assert logits.shape == (batch, props, 5) and boxes.shape == (batch, props, 4, 2)
    np.testing.assert_allclose(logits.numpy(), head(pooled)[0].numpy(), rtol=1e-5, atol=1e-6)
  assert fn.experimental_get_tracing_count() == 1


def test_dropout_only_in_training():
  head = SoiClassifierHead(num_classes=2, fc_units=64, reduce_filters=8, dropout_rate=0.5)
  pooled = tf.random.uniform([2, 4, 3, 5], 0.5, 1.0, seed=1)
  eval_a, _ = head(pooled, training=False)
  eval_b, _ = head(pooled, training=False)
  train, _ = head(pooled, training=True)
  np.testing.assert_allclose(eval_a.numpy(), eval_b.numpy())
  assert np.abs(train.numpy() - eval_a.numpy()).max() > 1e-4


def test_gradients_reach_every_weight():
  head = SoiClassifierHead(num_classes=3, fc_units=8, reduce_filters=4)
  pooled = tf.random.uniform([2, 5, 7, 6], 0.1, 1.0, seed=2)
  with tf.GradientTape() as tape:
    logits, boxes = head(pooled, training=True)
    loss = tf.reduce_sum(tf.square(logits)) + tf.reduce_sum(tf.square(boxes))
  grads = tape.gradient(loss, head.trainable_variables)
  assert len(grads) == 8
  for var, grad in zip(head.trainable_variables, grads):
    assert grad is not None and np.abs(grad.numpy()).sum() > 0, var.name


def test_saved_model_round_trip(tmp_path):
  head = SoiClassifierHead(num_classes=2, fc_units=4, reduce_filters=3)
  module = tf.Module()
  module.head = head
  module.serve = tf.function(lambda x: head(x),
                             input_signature=[tf.TensorSpec([None, None, 4, 5], tf.float32)])
  module.serve(tf.zeros([1, 1, 4, 5]))
  tf.saved_model.save(module, str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path))
  pooled = tf.random.uniform([3, 6, 4, 5])
  for got, want in zip(loaded.serve(pooled), head(pooled)):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_config_round_trip():
  head = SoiClassifierHead(num_classes=5, fc_units=16, reduce_filters=8, dropout_rate=0.25,
                           kernel_regularizer=tf_keras.regularizers.L2(1e-3))
  config = head.get_config()
  json.dumps(config)
  clone = SoiClassifierHead.from_config(config)
  assert clone.get_config() == config
  logits, boxes = clone(tf.zeros([1, 2, 3, 4]))
  assert logits.shape == (1, 2, 6) and boxes.shape == (1, 2, 5, 2)
  assert len(clone.losses) == 4  # L2 on reduce, fc, class and box kernels


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=2, fc_units=0), "fc_units"),
    (dict(num_classes=2, reduce_filters=-1), "reduce_filters"),
    (dict(num_classes=2, dropout_rate=1.0), "dropout_rate"),
    (dict(num_classes=2, code_size=0), "code_size"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SoiClassifierHead(**kwargs)


def test_bad_input_shape_raises():
  head = SoiClassifierHead(num_classes=2, fc_units=4, reduce_filters=2)
  with pytest.raises(ValueError, match="proposals, bins"):
    head(tf.zeros([2, 3, 4]))
