"""Builds WTAL (`model.wtal`) and registers it as meta-architecture "wtal"."""

from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES
from tal_tf.meta_architectures import wtal_meta_arch
from tal_tf.models import class_activation_network
from tal_tf.protos import wtal_pb2

_CLASSIFICATION_LOSSES = {
    wtal_pb2.Wtal.BALANCED_BCE: "balanced_bce",
    wtal_pb2.Wtal.BCE: "bce",
    wtal_pb2.Wtal.SOFTMAX_MIL: "softmax_mil",
}
_METRIC_LOSSES = {
    wtal_pb2.Wtal.TRIPLET: "triplet",
    wtal_pb2.Wtal.CONTRASTIVE: "contrastive",
    wtal_pb2.Wtal.NO_METRIC_LOSS: "none",
}
_DISTANCES = {
    wtal_pb2.Wtal.CLASS_SPECIFIC: "class_specific",
    wtal_pb2.Wtal.COSINE: "cosine",
    wtal_pb2.Wtal.EUCLIDEAN: "euclidean",
    wtal_pb2.Wtal.LEARNED: "learned",
}


def _check(condition, field, value, expected):
  if not condition:
    raise ValueError(f"model.wtal.{field}: got {value!r}; expected {expected}")


@META_ARCHITECTURES.register("wtal")
def build_wtal(config):
  """Wtal proto -> WtalMetaArch."""
  _check(config.num_classes >= 1, "num_classes", config.num_classes, ">= 1")
  _check(len(config.streams) >= 1, "streams", list(config.streams), "at least one stream")
  _check(config.embedding_dim >= 0, "embedding_dim", config.embedding_dim,
         ">= 0 (0 = input width)")
  _check(0.0 <= config.dropout_rate < 1.0, "dropout_rate", config.dropout_rate, "in [0, 1)")
  _check(config.kappa >= 0.0, "kappa", config.kappa, ">= 0 (0 = no clipping)")
  _check(config.block_size >= 0, "block_size", config.block_size, ">= 0 (0 = no blocks)")
  _check(config.top_k >= 1, "top_k", config.top_k, ">= 1")
  _check(config.margin >= 0.0, "margin", config.margin, ">= 0")
  _check(config.metric_loss_weight >= 0.0, "metric_loss_weight", config.metric_loss_weight,
         ">= 0")
  _check(config.learned_metric_rank >= 0, "learned_metric_rank", config.learned_metric_rank,
         ">= 0 (0 = full rank)")
  _check(0.0 <= config.step_score_threshold <= 1.0, "step_score_threshold",
         config.step_score_threshold, "in [0, 1]")
  _check(config.max_detections >= 1, "max_detections", config.max_detections, ">= 1")
  _check(0.0 <= config.nms_iou_threshold <= 1.0, "nms_iou_threshold",
         config.nms_iou_threshold, "in [0, 1] (0 = no NMS)")
  network = class_activation_network.ClassActivationNetwork(
      num_classes=config.num_classes, embedding_dim=config.embedding_dim or None,
      dropout_rate=config.dropout_rate, kappa=config.kappa or None,
      name="class_activation_network")
  distance = _DISTANCES[config.distance]
  learned_metric = None
  if distance == "learned":
    learned_metric = class_activation_network.LearnedClassMetric(
        num_classes=config.num_classes, rank=config.learned_metric_rank or None,
        name="learned_class_metric")
  return wtal_meta_arch.WtalMetaArch(
      num_classes=config.num_classes,
      stream_names=tuple(config.streams),
      network=network,
      block_size=config.block_size,
      top_k=config.top_k,
      classification_loss=_CLASSIFICATION_LOSSES[config.classification_loss],
      metric_loss=_METRIC_LOSSES[config.metric_loss],
      metric_loss_weight=config.metric_loss_weight,
      margin=config.margin,
      distance=distance,
      learned_metric=learned_metric,
      step_score_threshold=config.step_score_threshold,
      video_score_weight=config.video_score_weight,
      video_score_threshold=config.video_score_threshold,
      localize_top_class=config.localize_top_class,
      max_detections=config.max_detections,
      nms_iou_threshold=config.nms_iou_threshold or None)
