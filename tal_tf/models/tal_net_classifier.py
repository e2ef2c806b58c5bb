"""TAL-Net's DNN classifier on SoI-pooled proposal features (Sec. 4.2, implementation details).

What sits after SoI pooling, per the paper: a kernel-size-1 convolution reducing the feature
dimension to 256 ("before the Segment Proposal Network and after the SoI pooling layer"), one
fully-connected layer (256 units, "the number of filters to 256 for all convolutional and
fully-connected layers ... in the DNN classifier"), then a final fully-connected layer that
classifies the action (C + 1 classes, 0 = background) and regresses the boundaries per class.
The final layer is written as two parallel dense layers (logits, box encodings), the same map
as one layer with C + 1 + 2C outputs split in two.
"""
import tensorflow as tf
import tf_keras

from tal_tf.models import layer_config
from tal_tf.models.feature_reducer import FeatureReducer


def _check_positive_int(name, value):
  """Raises ValueError unless `value` is a positive int (bools rejected)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _build_in_scope(layer, input_shape):
  """Builds a sublayer under its own name scope, so its weights get readable names."""
  with tf.name_scope(layer.name):
    layer.build(input_shape)


class SoiClassifierHead(tf_keras.layers.Layer):
  """Pooled [B, P, bins, C] -> (logits [B, P, num_classes+1], boxes [B, P, num_classes, 2]).

  Box encodings are class specific: entry [..., c, :] belongs to label-map id c + 1 (the
  background class 0 has no box).
  """

  def __init__(self, num_classes, fc_units=256, reduce_filters=256, dropout_rate=0.0,
               code_size=2, kernel_initializer="glorot_uniform", kernel_regularizer=None,
               **kwargs):
    super().__init__(**kwargs)
    _check_positive_int("SoiClassifierHead num_classes", num_classes)
    _check_positive_int("SoiClassifierHead fc_units", fc_units)
    if reduce_filters is not None:
      _check_positive_int("SoiClassifierHead reduce_filters", reduce_filters)
    _check_positive_int("SoiClassifierHead code_size", code_size)
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise ValueError(
          f"SoiClassifierHead dropout_rate must be a float in [0, 1), got {dropout_rate!r}")
    self.num_classes = num_classes
    self.fc_units = fc_units
    self.reduce_filters = reduce_filters
    # The paper mentions no dropout; 0 (off) by default, as in the Object Detection API's
    # Faster R-CNN box predictor. When on, it sits after the hidden FC layer.
    self.dropout_rate = float(dropout_rate)
    self.code_size = code_size
    # Kept serialized so every layer gets its own initializer instance.
    self._kernel_initializer = layer_config.serialize_initializer(kernel_initializer)
    self._kernel_regularizer = layer_config.serialize_regularizer(kernel_regularizer)

    # reduce_filters=None skips the reduction (e.g. when pooled features are already small).
    self.reducer = (FeatureReducer(reduce_filters, activation="relu",
                                   kernel_initializer=self._new_initializer(),
                                   kernel_regularizer=self._new_regularizer(), name="reduce")
                    if reduce_filters is not None else None)
    self.hidden = tf_keras.layers.Dense(
        fc_units, activation="relu", kernel_initializer=self._new_initializer(),
        kernel_regularizer=self._new_regularizer(), name="fc")
    self.dropout = tf_keras.layers.Dropout(self.dropout_rate, name="dropout")
    self.class_layer = tf_keras.layers.Dense(
        num_classes + 1, kernel_initializer=self._new_initializer(),
        kernel_regularizer=self._new_regularizer(), name="class_logits")
    self.box_layer = tf_keras.layers.Dense(
        num_classes * code_size, kernel_initializer=self._new_initializer(),
        kernel_regularizer=self._new_regularizer(), name="box_encodings")

  def _new_initializer(self):
    return tf_keras.initializers.get(self._kernel_initializer)

  def _new_regularizer(self):
    return tf_keras.regularizers.get(self._kernel_regularizer)

  def build(self, input_shape):
    """Checks pooled features are [B, P, bins, C] with static bins and C."""
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 4 or input_shape[2] is None or input_shape[3] is None:
      raise ValueError(f"SoiClassifierHead expects pooled features [batch, proposals, bins, "
                       f"channels] with static bins and channels, got shape {input_shape}")
    # Create every weight now (so checkpoints can restore before a first call).
    channels = input_shape[3]
    if self.reducer is not None:
      _build_in_scope(self.reducer, input_shape)
      channels = self.reduce_filters
    _build_in_scope(self.hidden, input_shape[:2].concatenate([input_shape[2] * channels]))
    hidden_shape = input_shape[:2].concatenate([self.fc_units])
    _build_in_scope(self.class_layer, hidden_shape)
    _build_in_scope(self.box_layer, hidden_shape)
    super().build(input_shape)

  def call(self, pooled_features, training=None):
    """Returns (class_logits [B, P, num_classes+1], box_encodings [B, P, num_classes, code])."""
    pooled_features = tf.convert_to_tensor(pooled_features)
    reduced = self.reducer(pooled_features) if self.reducer is not None else pooled_features
    num_bins, channels = reduced.shape[2], reduced.shape[3]
    dynamic = tf.shape(reduced)
    # Flatten bin-major: entry bin * channels + c, so the FC layer sees the temporal layout.
    flat = tf.reshape(reduced, tf.stack([dynamic[0], dynamic[1], num_bins * channels]))
    flat.set_shape([reduced.shape[0], reduced.shape[1], num_bins * channels])
    hidden = self.dropout(self.hidden(flat), training=training)
    class_logits = self.class_layer(hidden)
    boxes = self.box_layer(hidden)
    box_encodings = tf.reshape(
        boxes, tf.stack([dynamic[0], dynamic[1], self.num_classes, self.code_size]))
    box_encodings.set_shape([reduced.shape[0], reduced.shape[1], self.num_classes,
                             self.code_size])
    return class_logits, box_encodings

  def get_config(self):
    """Constructor arguments (Keras serialization)."""
    config = super().get_config()
    config.update({
        "num_classes": self.num_classes,
        "fc_units": self.fc_units,
        "reduce_filters": self.reduce_filters,
        "dropout_rate": self.dropout_rate,
        "code_size": self.code_size,
        # Re-serialized so the config holds plain dicts, not Keras' tracked wrappers.
        "kernel_initializer": layer_config.serialize_initializer(self._kernel_initializer),
        "kernel_regularizer": layer_config.serialize_regularizer(self._kernel_regularizer),
    })
    return config
