"""Kernel-1 ("1x1") convolution that reduces a feature stream to a fixed channel count.

TAL-Net (Sec. 4, implementation details) reduces each 1024-d I3D stream to 256 channels with a
kernel-size-1 convolution before the Segment Proposal Network, and again after SoI pooling.
A kernel-1 convolution over time is the same map as a dense layer on the last axis, so the
layer is written as one; that also makes it rank-agnostic ([B, T, D] streams and
[B, P, bins, D] pooled features alike).
"""
import tensorflow as tf
import tf_keras

_ACTIVATIONS = ("relu", None)


def _check_positive_int(name, value):
  """Raises ValueError unless `value` is a positive int (bools rejected)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


class FeatureReducer(tf_keras.layers.Layer):
  """Kernel-1 conv + activation: features [..., D] -> [..., filters], e.g. [B, T, 256]."""

  def __init__(self, filters=256, activation="relu", kernel_initializer="glorot_uniform",
               kernel_regularizer=None, **kwargs):
    super().__init__(**kwargs)
    _check_positive_int("FeatureReducer filters", filters)
    if activation not in _ACTIVATIONS:
      raise ValueError(
          f"FeatureReducer activation must be one of {_ACTIVATIONS}, got {activation!r}")
    self.filters = filters
    # ReLU by default (the paper does not name the activation of the reduction layer): the
    # reduced features feed max pooling and zero-padded 'same' convolutions in the SPN, and
    # with non-negative features a zero pad means "no evidence" rather than an arbitrary value;
    # a ReLU after every conv is also the Faster R-CNN convention TAL-Net follows.
    # `activation=None` gives a purely linear projection.
    self.activation = activation
    self.kernel_initializer = tf_keras.initializers.get(kernel_initializer)
    self.kernel_regularizer = tf_keras.regularizers.get(kernel_regularizer)
    self._projection = tf_keras.layers.Dense(
        filters, activation=activation, kernel_initializer=self.kernel_initializer,
        kernel_regularizer=self.kernel_regularizer, name="conv1x1")

  def build(self, input_shape):
    """Checks the channel dim is static (the kernel's size depends on it) and builds."""
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank is None or input_shape.rank < 2 or input_shape[-1] is None:
      raise ValueError(
          f"FeatureReducer expects features [..., D] with rank >= 2 and a static channel "
          f"dimension D, got shape {input_shape}")
    with tf.name_scope(self._projection.name):  # readable weight names
      self._projection.build(input_shape)
    super().build(input_shape)

  def call(self, features):
    """Projects features [..., D] to [..., filters] (ReLU unless activation=None)."""
    return self._projection(features)

  def get_config(self):
    """Constructor arguments (Keras serialization)."""
    config = super().get_config()
    config.update({
        "filters": self.filters,
        "activation": self.activation,
        "kernel_initializer": tf_keras.initializers.serialize(self.kernel_initializer),
        "kernel_regularizer": tf_keras.regularizers.serialize(self.kernel_regularizer)
                              if self.kernel_regularizer is not None else None,
    })
    return config
