"""A toy meta-architecture defined outside tal_tf: proof that the contract is enough.

A per-step classifier over the concatenated streams, no proposals, two training phases
("embed": embedding + classifier, "head": the classifier alone). Each valid step whose best
class beats background becomes a one-step detection. Registered as "toy_step_classifier";
configs use `model { external { module: "tests.contract.toy_model"
name: "toy_step_classifier" params { key: "num_classes" value: "20" } ... } }`.
"""

import tensorflow as tf
import tf_keras

from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES
from tal_tf.core import losses as losses_lib
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch


class ToyStepClassifier(meta_arch.TemporalDetectionModel):
  """Per-step (C+1)-way classifier; steps become one-step detections."""

  def __init__(self, num_classes, stream_names, hidden=8, max_detections=20):
    super().__init__(name="toy_step_classifier")
    self._num_classes = int(num_classes)
    self._streams = tuple(stream_names)
    self._max_detections = int(max_detections)
    self.embed = tf_keras.layers.Dense(hidden, activation="relu", name="embed")
    self.head = tf_keras.layers.Dense(self._num_classes + 1, name="head")

  @property
  def num_classes(self):
    return self._num_classes

  @property
  def stream_names(self):
    return self._streams

  @property
  def max_detections(self):
    return self._max_detections

  @property
  def training_phases(self):
    return ("embed", "head")

  def phase_variables(self, phase):
    if phase == "head":
      return list(self.head.trainable_variables)
    return list(self.embed.trainable_variables) + list(self.head.trainable_variables)

  def predict(self, features, num_steps, training=False, phase=None):
    x = tf.concat([tf.convert_to_tensor(features[s], tf.float32) for s in self._streams], -1)
    return {"logits": self.head(self.embed(x)), "num_steps": tf.cast(num_steps, tf.int32)}

  def loss(self, predictions, groundtruth, phase=None):
    logits = predictions["logits"]
    t = tf.shape(logits)[1]
    steps = tf.cast(tf.range(t), tf.float32)[tf.newaxis, :, tf.newaxis] + 0.5  # [1, T, 1]
    seg = tf.cast(groundtruth[InputFields.segments], tf.float32)  # [B, G, 2]
    g = tf.shape(seg)[1]
    valid_gt = tf.sequence_mask(groundtruth[InputFields.num_segments], g)  # [B, G]
    inside = ((steps >= seg[:, tf.newaxis, :, 0]) & (steps < seg[:, tf.newaxis, :, 1]) &
              valid_gt[:, tf.newaxis, :])  # [B, T, G]
    labels = tf.cast(groundtruth[InputFields.labels], tf.int32)
    # A step inside several segments takes the largest label (deterministic).
    # (max over G = 0 segments is INT_MIN: floor it at background.)
    target = tf.maximum(tf.reduce_max(tf.where(inside, labels[:, tf.newaxis, :], 0), axis=-1), 0)
    weights = tf.cast(tf.sequence_mask(predictions["num_steps"], t), tf.float32)
    per_step = losses_lib.weighted_softmax_cross_entropy(logits, target, weights)
    loss = tf.reduce_sum(per_step) / tf.maximum(tf.reduce_sum(weights), 1.0)
    return {f"{phase}_classification_loss": loss, "total_loss": loss}

  def postprocess(self, predictions, num_steps, feature_fps):
    probs = tf.nn.softmax(predictions["logits"])  # [B, T, C+1]
    t = tf.shape(probs)[1]
    best = tf.argmax(probs[..., 1:], axis=-1, output_type=tf.int32) + 1
    score = tf.reduce_max(probs[..., 1:], axis=-1)
    keep = (tf.sequence_mask(num_steps, t) & (score > probs[..., 0]))
    score = tf.where(keep, score, -1.0)
    k = tf.minimum(self._max_detections, t)
    top, index = tf.math.top_k(score, k=k)
    valid = top >= 0.0
    start = tf.cast(index, tf.float32)
    fps = tf.cast(feature_fps, tf.float32)[:, tf.newaxis, tf.newaxis]
    segments = tf.stack([start, start + 1.0], axis=-1) / fps
    n = self._max_detections
    pad = [[0, 0], [0, n - k]]
    # The detection count N is static (the contract): pad to max_detections.
    return {
        DetectionFields.detection_segments: tf.ensure_shape(tf.pad(
            tf.where(valid[..., tf.newaxis], segments, 0.0), pad + [[0, 0]]), [None, n, 2]),
        DetectionFields.detection_scores: tf.ensure_shape(
            tf.pad(tf.where(valid, top, 0.0), pad), [None, n]),
        DetectionFields.detection_classes: tf.ensure_shape(tf.pad(
            tf.where(valid, tf.gather(best, index, batch_dims=1), 0), pad), [None, n]),
        DetectionFields.num_detections: tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
    }


@META_ARCHITECTURES.register("toy_step_classifier")
def build_toy(num_classes, streams, hidden="8", max_detections="20"):
  """params (strings) -> ToyStepClassifier; streams comma-separated."""
  return ToyStepClassifier(int(num_classes), streams.split(","), hidden=int(hidden),
                           max_detections=int(max_detections))
