"""Tests of the kernel-1 feature reducer."""
import json

import numpy as np
import pytest
import tensorflow as tf

import tal_tf  # noqa: F401  (sets Keras 2)
from tal_tf.models.feature_reducer import FeatureReducer


def _np_reduce(x, kernel, bias, relu):
  """Loop reference of a kernel-1 conv over the last axis."""
  flat = x.reshape(-1, x.shape[-1])
  out = np.zeros((flat.shape[0], kernel.shape[1]))
  for i in range(flat.shape[0]):
    for o in range(kernel.shape[1]):
      value = bias[o] + sum(flat[i, d] * kernel[d, o] for d in range(flat.shape[1]))
      out[i, o] = max(value, 0.0) if relu else value
  return out.reshape(x.shape[:-1] + (kernel.shape[1],))


@pytest.mark.parametrize("activation", ["relu", None])
def test_matches_numpy_reference(activation):
  layer = FeatureReducer(filters=4, activation=activation)
  x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
  layer.build([None, None, 6])
  layer.weights[1].assign(np.linspace(-0.5, 0.5, 4).astype(np.float32))  # non-zero bias
  out = layer(tf.constant(x)).numpy()
  ref = _np_reduce(x, layer.weights[0].numpy(), layer.weights[1].numpy(), activation == "relu")
  assert out.shape == (2, 5, 4)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  if activation == "relu":
    assert (out >= 0).all() and (ref == 0).any()  # the ReLU really clipped something
  else:
    assert (out < 0).any()


def test_default_reduces_to_256_and_works_on_any_rank():
  layer = FeatureReducer()
  assert layer(tf.zeros([1, 3, 1024])).shape == (1, 3, 256)
  pooled = FeatureReducer(filters=8)(tf.zeros([2, 4, 7, 16]))  # [B, P, bins, C]
  assert pooled.shape == (2, 4, 7, 8)


def test_dynamic_shapes_in_tf_function():
  layer = FeatureReducer(filters=3)
  layer.build([None, None, 5])  # weights first: creating variables inside forces a retrace
  fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 5], tf.float32)])
  for batch, steps in [(1, 1), (4, 9)]:
    x = tf.random.uniform([batch, steps, 5])
    np.testing.assert_allclose(fn(x).numpy(), layer(x).numpy(), rtol=1e-6)
  assert fn.experimental_get_tracing_count() == 1


def test_config_round_trip():
  layer = FeatureReducer(filters=7, activation=None)
  config = layer.get_config()
  json.dumps(config)
  assert FeatureReducer.from_config(config).get_config() == config


@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=0), "filters"),
    (dict(filters=True), "filters"),
    (dict(activation="tanh"), "activation"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    FeatureReducer(**kwargs)


def test_unknown_channel_dim_raises():
  layer = FeatureReducer(filters=2)
  with pytest.raises(ValueError, match="static channel"):
    layer.build(tf.TensorShape([None, None, None]))
