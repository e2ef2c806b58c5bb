"""Tests for the WTAL embedding + clipped classifier (Eq. 1) and the learned class metric."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tal_tf.models import class_activation_network as can


def np_forward(layer, x, kappa):
  """u = relu(x W_e + b_e); s = phi_kappa(u W_f + b) with the layer's weights (no dropout)."""
  u = np.maximum(x @ layer.embedding.kernel.numpy() + layer.embedding.bias.numpy(), 0.0)
  s = u @ layer.classifier.kernel.numpy() + layer.classifier.bias.numpy()
  return u, (s if kappa is None else np.clip(s, -kappa, kappa))


@pytest.mark.parametrize("kappa", [0.5, None])
def test_forward_matches_numpy_and_clips(kappa):
  tf.random.set_seed(1)
  layer = can.ClassActivationNetwork(num_classes=3, kappa=kappa,
                                     kernel_initializer=tf_keras.initializers.RandomNormal(
                                         stddev=2.0, seed=1))
  x = np.random.default_rng(0).normal(size=[2, 5, 4]).astype(np.float32)
  u, s = layer(x, training=False)
  assert u.shape == (2, 5, 4)  # Embedding width = input width by default (the paper's).
  assert layer.classifier_kernel.shape == (4, 3)
  expected_u, expected_s = np_forward(layer, x, kappa)
  np.testing.assert_allclose(u.numpy(), expected_u, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s.numpy(), expected_s, rtol=1e-5, atol=1e-6)
  if kappa is not None:
    assert np.abs(s.numpy()).max() == pytest.approx(kappa)  # Some values were clipped.
  else:
    assert np.abs(s.numpy()).max() > 0.5
  # Dropout only in training.
  u_train, _ = layer(x, training=True)
  assert not np.allclose(u_train.numpy(), u.numpy())


def test_clip_activations_and_config():
  np.testing.assert_allclose(can.clip_activations([-5.0, -1.0, 3.0, 7.0], 4.0).numpy(),
                             [-4.0, -1.0, 3.0, 4.0])
  layer = can.ClassActivationNetwork(num_classes=2, embedding_dim=6, dropout_rate=0.0,
                                     kappa=2.0)
  u, s = layer(tf.zeros([1, 3, 4]))
  assert u.shape == (1, 3, 6) and s.shape == (1, 3, 2)
  config = layer.get_config()
  assert config["embedding_dim"] == 6 and config["kappa"] == 2.0
  with pytest.raises(ValueError, match="kappa"):
    can.ClassActivationNetwork(num_classes=2, kappa=0.0)
  with pytest.raises(ValueError, match="dropout_rate"):
    can.ClassActivationNetwork(num_classes=2, dropout_rate=1.0)


def test_learned_metric_starts_as_identity():
  metric = can.LearnedClassMetric(num_classes=3)
  factors = metric(tf.zeros([1, 2, 4])).numpy()
  assert factors.shape == (3, 4, 4)
  for c in range(3):
    np.testing.assert_array_equal(factors[c], np.eye(4))
  low_rank = can.LearnedClassMetric(num_classes=2, rank=2)
  assert low_rank(tf.zeros([1, 2, 5])).shape == (2, 2, 5)
