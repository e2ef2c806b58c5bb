"""Weakly supervised temporal action localization with deep metric learning (WTAL).

Islam et al., "Weakly Supervised Temporal Action Localization Using Deep Metric Learning",
WACV 2020. Trained from video-level labels only (`input_fields` = video_labels):

  features (streams concatenated) -> embedding u (FC + ReLU + dropout)
    -> clipped class activations s = phi_kappa(W_f u + b)                       (Eq. 1)
    -> P(c | B_i) = sigmoid(top-k mean of s^c in block B_i), l_w = 60, k = 10   (Eq. 4)
    -> P(c | V) = 1 - prod_i (1 - P(c | B_i))                                    (Eq. 2-3)
  loss = balanced BCE(P(c | V), y) + lambda * class-specific metric loss       (Eq. 5-12)

Inference (Sec. 3.5): y_i^c = sigmoid(s_i^c); for each localized class, steps with y < 0.5
are dropped and connected components are instances scored max y + gamma * P(c | V).
See `tal_tf.core.video_scores` (block layout, remainder, short videos) and
`tal_tf.core.activation_localization` (which classes are localized) for the choices the
paper leaves open.

Training videos longer than 300 steps are cut by the input pipeline to a random contiguous
window of 300 steps (`train_input_reader.max_steps`), with the video's labels kept. The paper
says "sample 300 segments randomly"; a contiguous window is used (as W-TALC, which the paper
follows, does) because blocks are sets of consecutive segments: an unordered subsample would
put steps minutes apart into one block and break the temporal structure the top-k pooling
and the localization rely on.
"""

import tensorflow as tf

from tal_tf.core import activation_localization
from tal_tf.core import losses as losses_lib
from tal_tf.core import video_scores
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch

# Model-specific optional outputs of postprocess.
VIDEO_CLASS_SCORES = "video_class_scores"  # [B, C] P(c | V)
STEP_CLASS_SCORES = "step_class_scores"    # [B, T, C] y = sigmoid(s), 0 on padding

CLASSIFICATION_LOSSES = ("balanced_bce", "bce", "softmax_mil")
METRIC_LOSSES = ("triplet", "contrastive", "none")


class WtalMetaArch(meta_arch.TemporalDetectionModel):
  """Embedding + clipped class activations, block top-k noisy-OR video scores, metric loss."""

  def __init__(self,
               num_classes,
               stream_names,
               network,
               block_size=60,
               top_k=10,
               classification_loss="balanced_bce",
               metric_loss="triplet",
               metric_loss_weight=1.0,
               margin=3.0,
               distance="class_specific",
               learned_metric=None,
               step_score_threshold=0.5,
               video_score_weight=0.7,
               video_score_threshold=0.5,
               localize_top_class=True,
               max_detections=100,
               nms_iou_threshold=None,
               name="wtal"):
    """Builds the model.

    Args:
      num_classes: C (label ids 1..C).
      stream_names: feature streams, concatenated in this order (e.g. ("rgb", "flow")).
      network: ClassActivationNetwork (features -> embeddings, clipped activations).
      block_size: l_w of Eq. 4 (paper 60); <= 0 = one block per video (Tab. 4).
      top_k: k of Eq. 4 (paper 10).
      classification_loss: "balanced_bce" (Eq. 5-6, the paper's), "bce" or "softmax_mil"
        (Fig. 2).
      metric_loss: "triplet" (the paper's), "contrastive" or "none" (Tab. 3).
      metric_loss_weight: lambda of Eq. 12 (paper 1).
      margin: alpha of the metric losses (paper 3).
      distance: "class_specific" (Eq. 10-11), "cosine", "euclidean" or "learned" (Fig. 3).
      learned_metric: LearnedClassMetric layer, required for distance "learned".
      step_score_threshold, video_score_weight, video_score_threshold, localize_top_class,
      max_detections, nms_iou_threshold: inference (see activation_localization).
    """
    super().__init__(name=name)
    if num_classes < 1:
      raise ValueError(f"wtal: num_classes must be >= 1, got {num_classes}")
    if not stream_names:
      raise ValueError("wtal: at least one stream name is required")
    if classification_loss not in CLASSIFICATION_LOSSES:
      raise ValueError(f"wtal: classification_loss must be one of {CLASSIFICATION_LOSSES}, "
                       f"got {classification_loss!r}")
    if metric_loss not in METRIC_LOSSES:
      raise ValueError(f"wtal: metric_loss must be one of {METRIC_LOSSES}, got "
                       f"{metric_loss!r}")
    if distance not in losses_lib.METRIC_DISTANCES:
      raise ValueError(f"wtal: distance must be one of {losses_lib.METRIC_DISTANCES}, got "
                       f"{distance!r}")
    if distance == "learned" and learned_metric is None:
      raise ValueError("wtal: distance 'learned' needs a learned_metric layer")
    if int(top_k) < 1:
      raise ValueError(f"wtal: top_k must be >= 1, got {top_k}")
    self._num_classes = int(num_classes)
    self._stream_names = tuple(stream_names)
    self._network = network
    self._learned_metric = learned_metric if distance == "learned" else None
    self._block_size = int(block_size)
    self._top_k = int(top_k)
    self._classification_loss = classification_loss
    self._metric_loss = metric_loss
    self._metric_loss_weight = float(metric_loss_weight)
    self._margin = float(margin)
    self._distance = distance
    self._step_threshold = float(step_score_threshold)
    self._video_score_weight = float(video_score_weight)
    self._video_score_threshold = float(video_score_threshold)
    self._localize_top_class = bool(localize_top_class)
    self._max_detections = int(max_detections)
    self._nms_iou_threshold = None if nms_iou_threshold is None else float(nms_iou_threshold)

  # ------------------------------------------------------------------ what it is / reads
  @property
  def num_classes(self):
    return self._num_classes

  @property
  def stream_names(self):
    return self._stream_names

  @property
  def max_detections(self):
    return self._max_detections

  @property
  def input_fields(self):
    # Weak supervision: video-level labels only, never segments.
    return (InputFields.video_labels,)

  @property
  def optional_outputs(self):
    return (VIDEO_CLASS_SCORES, STEP_CLASS_SCORES)

  @property
  def window_merge(self):
    # Instances of overlapping windows are merged by per-class NMS at tIoU 0.5.
    return dict(nms_iou_threshold=(self._nms_iou_threshold
                                   if self._nms_iou_threshold is not None else 0.5),
                max_detections=self._max_detections,
                proposal_nms_iou_threshold=0.7, max_proposals=0)

  @property
  def network(self):
    return self._network

  # ------------------------------------------------------------------ forward
  def _features(self, features):
    missing = [s for s in self._stream_names if s not in features]
    if missing:
      raise KeyError(f"wtal: feature streams {missing} missing from the input; got "
                     f"{sorted(features)}")
    maps = [tf.convert_to_tensor(features[s], tf.float32) for s in self._stream_names]
    return maps[0] if len(maps) == 1 else tf.concat(maps, axis=-1)

  def predict(self, features, num_steps, training=False, phase=None):
    """Forward pass.

    Returns a dict with: embeddings [B, T, d] (u); class_activations [B, T, C] (clipped s);
    video_log_probabilities / video_log_complements [B, C] (log P(c|V), log(1 - P(c|V)));
    num_steps [B].
    """
    del phase
    num_steps = tf.cast(num_steps, tf.int32)
    inputs = self._features(features)
    embeddings, activations = self._network(inputs, training=training)
    if self._learned_metric is not None:
      self._learned_metric(embeddings)  # Creates the metric factors with the model.
    log_p, log_q = video_scores.video_class_log_probabilities(
        activations, num_steps, self._block_size, self._top_k)
    return {
        "embeddings": embeddings,
        "class_activations": activations,
        "video_log_probabilities": log_p,
        "video_log_complements": log_q,
        "num_steps": num_steps,
    }

  # ------------------------------------------------------------------ training
  def classification_loss(self, predictions, video_labels):
    """Mean over videos of the configured video-level classification loss; scalar."""
    log_p = predictions["video_log_probabilities"]
    log_q = predictions["video_log_complements"]
    if self._classification_loss == "balanced_bce":
      per_video = losses_lib.balanced_binary_cross_entropy_from_logs(log_p, log_q,
                                                                    video_labels)
    elif self._classification_loss == "bce":
      per_video = losses_lib.binary_cross_entropy_from_logs(log_p, log_q, video_labels)
    else:
      # Softmax over classes of the block-based video scores' log-odds: W-TALC's MIL loss
      # with the block processing kept, as in the paper's Fig. 2.
      per_video = losses_lib.softmax_mil_loss(log_p - log_q, video_labels)
    return tf.reduce_mean(per_video)

  def metric_loss(self, predictions, video_labels):
    """The class metric loss (Eq. 7-11) with the configured distance; scalar."""
    if self._metric_loss == "none":
      return tf.constant(0.0)
    factors = (self._learned_metric(predictions["embeddings"])
               if self._learned_metric is not None else None)
    return losses_lib.class_metric_loss(
        predictions["embeddings"], predictions["class_activations"],
        predictions["num_steps"], video_labels,
        classifier_kernel=self._network.classifier_kernel, margin=self._margin,
        loss_type=self._metric_loss, distance=self._distance, metric_factors=factors)

  def loss(self, predictions, groundtruth, phase=None):
    """L = L_classification + lambda * L_metric (Eq. 12) from video labels [B, C] only."""
    del phase
    if InputFields.video_labels not in groundtruth:
      raise KeyError(f"wtal: groundtruth lacks {InputFields.video_labels!r} (multi-hot "
                     f"video labels [B, {self._num_classes}]); got {sorted(groundtruth)}")
    labels = tf.cast(groundtruth[InputFields.video_labels], tf.float32)
    classification = self.classification_loss(predictions, labels)
    metric = self._metric_loss_weight * self.metric_loss(predictions, labels)
    return {
        "classification_loss": classification,
        "metric_loss": metric,
        "total_loss": classification + metric,
    }

  # ------------------------------------------------------------------ inference
  def postprocess(self, predictions, num_steps, feature_fps):
    """Detections by thresholding (Sec. 3.5) + video_class_scores [B, C] and
    step_class_scores [B, T, C]."""
    num_steps = tf.cast(num_steps, tf.int32)
    activations = predictions["class_activations"]
    valid = tf.sequence_mask(num_steps, tf.shape(activations)[1])[..., None]
    step_scores = tf.where(valid, tf.sigmoid(activations), tf.zeros_like(activations))
    video = tf.exp(predictions["video_log_probabilities"])
    # A video without steps has no blocks: its scores are 0, not exp(log(tiny)).
    video = tf.where((num_steps > 0)[:, None], video, tf.zeros_like(video))
    detections = activation_localization.localize_by_thresholding(
        step_scores, num_steps, video, feature_fps,
        step_threshold=self._step_threshold, video_score_weight=self._video_score_weight,
        video_score_threshold=self._video_score_threshold,
        localize_top_class=self._localize_top_class, max_detections=self._max_detections,
        nms_iou_threshold=self._nms_iou_threshold)
    detections[VIDEO_CLASS_SCORES] = video
    detections[STEP_CLASS_SCORES] = step_scores
    return detections
