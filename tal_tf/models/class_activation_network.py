"""Per-step embedding and clipped class activations of the weakly supervised model.

Islam et al. (WACV 2020), Sec. 3.2-3.3: the feature x_i of every step goes through a
fully-connected layer + ReLU + dropout (the embedding u_i, of the input's width by default),
then a linear classifier W_f u_i + b whose output is clipped to [-kappa, kappa]:
s_i = phi_kappa(W_f u_i + b) (Eq. 1). Steps are processed independently, so padded steps
never affect valid ones.
"""

import tensorflow as tf
import tf_keras

from tal_tf.models import layer_config


def _check_positive_int(name, value):
  """Raises ValueError unless `value` is a positive int (bools rejected)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def clip_activations(values, kappa):
  """phi_kappa of Eq. 1: values clipped to [-kappa, kappa]; kappa None = no clipping."""
  if kappa is None:
    return tf.identity(values)
  return tf.clip_by_value(values, -float(kappa), float(kappa))


class ClassActivationNetwork(tf_keras.layers.Layer):
  """features [B, T, D] -> (embeddings u [B, T, d], class activations s [B, T, C])."""

  def __init__(self, num_classes, embedding_dim=None, dropout_rate=0.7, kappa=4.0,
               kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
    """Args:
      num_classes: C.
      embedding_dim: d, width of the embedding; None = the input's width (the paper's).
      dropout_rate: dropout after the embedding's ReLU. The paper gives no rate; 0.7 is
        W-TALC's, whose embedding the paper follows.
      kappa: clipping threshold of Eq. 1 (paper: 4); None = no clipping (Tab. 5).
    """
    super().__init__(**kwargs)
    _check_positive_int("ClassActivationNetwork num_classes", num_classes)
    if embedding_dim is not None:
      _check_positive_int("ClassActivationNetwork embedding_dim", embedding_dim)
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise ValueError(f"ClassActivationNetwork dropout_rate must be in [0, 1), got "
                       f"{dropout_rate!r}")
    if kappa is not None and not float(kappa) > 0.0:
      raise ValueError(f"ClassActivationNetwork kappa must be > 0 or None, got {kappa!r}")
    self.num_classes = num_classes
    self.embedding_dim = embedding_dim
    self.dropout_rate = float(dropout_rate)
    self.kappa = None if kappa is None else float(kappa)
    self._kernel_initializer = layer_config.serialize_initializer(kernel_initializer)
    self._kernel_regularizer = layer_config.serialize_regularizer(kernel_regularizer)
    self.embedding = None  # Created in build(): its width may be the input's.
    self.dropout = tf_keras.layers.Dropout(self.dropout_rate, name="dropout")
    self.classifier = tf_keras.layers.Dense(
        num_classes, kernel_initializer=tf_keras.initializers.get(self._kernel_initializer),
        kernel_regularizer=tf_keras.regularizers.get(self._kernel_regularizer),
        name="classifier")

  def build(self, input_shape):
    input_dim = input_shape[-1]
    if input_dim is None:
      raise ValueError("ClassActivationNetwork: the feature dimension must be static")
    width = self.embedding_dim or int(input_dim)
    self.embedding = tf_keras.layers.Dense(
        width, activation="relu",
        kernel_initializer=tf_keras.initializers.get(self._kernel_initializer),
        kernel_regularizer=tf_keras.regularizers.get(self._kernel_regularizer),
        name="embedding")
    with tf.name_scope(self.embedding.name):
      self.embedding.build(input_shape)
    with tf.name_scope(self.classifier.name):
      self.classifier.build(tf.TensorShape(input_shape)[:-1].concatenate([width]))
    super().build(input_shape)

  @property
  def classifier_kernel(self):
    """W_f transposed, [d, C]: column c is the row W_f^c of Eq. 10."""
    return self.classifier.kernel

  def call(self, features, training=False):
    embeddings = self.dropout(self.embedding(features), training=training)
    activations = clip_activations(self.classifier(embeddings), self.kappa)
    return embeddings, activations

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, embedding_dim=self.embedding_dim,
                  dropout_rate=self.dropout_rate, kappa=self.kappa,
                  kernel_initializer=self._kernel_initializer,
                  kernel_regularizer=self._kernel_regularizer)
    return config


class LearnedClassMetric(tf_keras.layers.Layer):
  """The learnable per-class metric of the paper's Fig. 3 ("custom" distance).

  Holds factors L [C, r, d] with M_c = L_c^T L_c (positive semi-definite by construction),
  initialised to the identity (r = d), where the distance starts as the Euclidean one. Call
  with the embedding width d; returns the factors.
  """

  def __init__(self, num_classes, rank=None, **kwargs):
    super().__init__(**kwargs)
    _check_positive_int("LearnedClassMetric num_classes", num_classes)
    if rank is not None:
      _check_positive_int("LearnedClassMetric rank", rank)
    self.num_classes = num_classes
    self.rank = rank
    self.factors = None

  def build_for_dim(self, dim):
    """Creates the factors for embedding width `dim` (once)."""
    if self.factors is None:
      rank = self.rank or int(dim)

      def identity(shape, dtype=None):
        eye = tf.eye(shape[1], shape[2], dtype=dtype)
        return tf.tile(eye[None], [shape[0], 1, 1])

      with tf.name_scope(self.name):
        self.factors = self.add_weight(name="factors", shape=[self.num_classes, rank, int(dim)],
                                       initializer=identity, trainable=True)
      self.built = True
    return self.factors

  def call(self, embeddings):
    return self.build_for_dim(embeddings.shape[-1])

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, rank=self.rank)
    return config
