"""The interface every tal_tf meta-architecture implements.

Like the Object Detection API's `DetectionModel`, but ground truth is passed to `loss`
explicitly (no `provide_groundtruth` state), and every method takes and returns batched,
padded tensors with valid lengths so batches of more than one video work everywhere:

  predictions = model.predict(features, num_steps, training)
  losses      = model.loss(predictions, groundtruth)          # dict of scalars, incl. total
  detections  = model.postprocess(predictions, num_steps, feature_fps)

`features` is a dict stream name -> float32 [B, T, D_stream]; `num_steps` is int32 [B].
"""

import abc

import tf_keras


class TemporalDetectionModel(tf_keras.Model, metaclass=abc.ABCMeta):
  """Base class of meta-architectures (TAL-Net, and later S-CNN, WTAL, ETP)."""

  @property
  @abc.abstractmethod
  def num_classes(self):
    """Number of action classes (label-map ids 1..num_classes)."""

  @property
  @abc.abstractmethod
  def stream_names(self):
    """Names of the feature streams the model reads, in order."""

  @abc.abstractmethod
  def predict(self, features, num_steps, training=False):
    """Raw network outputs (a dict of tensors) for a padded batch."""

  @abc.abstractmethod
  def loss(self, predictions, groundtruth):
    """Dict of scalar losses; key 'total_loss' is what the optimizer minimizes."""

  @abc.abstractmethod
  def postprocess(self, predictions, num_steps, feature_fps):
    """Detections dict (DetectionFields keys), segments in seconds."""

  def get_config(self):
    """A description for Keras serialization; models are rebuilt from pipeline configs."""
    return {"name": self.name, "num_classes": self.num_classes,
            "stream_names": list(self.stream_names)}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    raise NotImplementedError(
        "tal_tf models are built from a pipeline config (tal_tf.builders.model_builder."
        "build), not from a Keras config")

  def call(self, inputs, training=False):
    """Keras entry point: inputs = {'features': dict, 'num_steps': [B]} -> predictions."""
    return self.predict(inputs["features"], inputs["num_steps"], training=training)
