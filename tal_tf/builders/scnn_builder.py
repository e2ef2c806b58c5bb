"""Builds S-CNN (`model.scnn`) and registers it as meta-architecture "scnn"."""

from tal_tf.builders import anchor_generator_builder
from tal_tf.builders import matcher_builder
from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES
from tal_tf.core import target_assigner
from tal_tf.meta_architectures import scnn_meta_arch
from tal_tf.models import scnn_window_network
from tal_tf.protos import anchor_generator_pb2
from tal_tf.protos import matcher_pb2
from tal_tf.protos import scnn_pb2

# S-CNN Sec. 3.2 (the S_CNN_PROPOSAL matcher preset): positive above 0.7, background below
# 0.3; a ground truth with no window above 0.7 forces its best window if above 0.5, without
# taking over a window already positive for another ground truth.
_DEFAULT_MATCHER = matcher_pb2.Matcher(argmax_matcher=matcher_pb2.ArgMaxMatcher(
    matched_threshold=0.7, unmatched_threshold=0.3, force_match_for_each_groundtruth=True,
    force_match_min_tiou=0.5, force_match_max_tiou=0.7,
    force_match_overrides_positives=False))

_SCORING = {
    scnn_pb2.Scnn.LOCALIZATION: scnn_meta_arch.LOCALIZATION,
    scnn_pb2.Scnn.CLASSIFICATION: scnn_meta_arch.CLASSIFICATION,
}


def _check(condition, field, value, expected):
  if not condition:
    raise ValueError(f"model.scnn.{field}: {value!r} is invalid; expected {expected}")


@META_ARCHITECTURES.register("scnn")
def build_scnn(config):
  """Scnn proto -> ScnnMetaArch."""
  _check(config.num_classes >= 1, "num_classes", config.num_classes, "an integer >= 1")
  _check(len(config.streams) >= 1, "streams", list(config.streams), "at least one stream")
  anchor_config = config.anchor_generator
  if not anchor_config.WhichOneof("anchor_generator_oneof"):
    anchor_config = anchor_generator_pb2.AnchorGenerator(
        sliding_window_anchor_generator=anchor_generator_pb2.SlidingWindowAnchorGenerator())
  _check(anchor_config.WhichOneof("anchor_generator_oneof") == "sliding_window_anchor_generator",
         "anchor_generator", anchor_config.WhichOneof("anchor_generator_oneof"),
         "sliding_window_anchor_generator")
  anchors = anchor_generator_builder.build(anchor_config)
  assigner = target_assigner.TargetAssigner(
      matcher_builder.build(config.matcher, _DEFAULT_MATCHER), None)
  _check(config.fc6_units >= 1 and config.fc7_units >= 1, "fc6_units/fc7_units",
         (config.fc6_units, config.fc7_units), "positive integers")
  _check(0.0 <= config.dropout_rate < 1.0, "dropout_rate", config.dropout_rate, "[0, 1)")
  _check(config.overlap_alpha > 0, "overlap_alpha", config.overlap_alpha, "> 0")
  _check(0.0 <= config.proposal_score_threshold <= 1.0, "proposal_score_threshold",
         config.proposal_score_threshold, "[0, 1]")
  _check(0.0 <= config.nms_iou_threshold <= 1.0, "nms_iou_threshold",
         config.nms_iou_threshold, "[0, 1]")
  _check(config.max_detections >= 1, "max_detections", config.max_detections, ">= 1")
  _check(config.max_proposals >= 1, "max_proposals", config.max_proposals, ">= 1")
  fc_units = (config.fc6_units, config.fc7_units)
  pretrained = None
  subsets = {}
  if config.backbone == scnn_pb2.Scnn.FEATURES:

    def network_builder(name, num_outputs):
      return scnn_window_network.WindowClassifier(
          num_outputs=num_outputs, fc_units=fc_units, num_samples=config.num_samples,
          dropout_rate=config.dropout_rate, name=f"scnn_{name}")
  else:
    from tal_tf.models import c3d  # pylint: disable=g-import-not-at-top
    c3d_config = config.c3d

    def network_builder(name, num_outputs):
      return c3d.C3dWindowClassifier(
          num_outputs=num_outputs, fc_units=fc_units, num_frames=config.num_samples,
          width_multiplier=c3d_config.width_multiplier, crop_size=c3d_config.crop_size,
          dropout_rate=config.dropout_rate, name=f"scnn_{name}")

    subsets = dict(max_training_windows_per_video=c3d_config.max_training_windows_per_video,
                   inference_chunk=c3d_config.inference_chunk)
    if c3d_config.pretrained_weights_path:
      path = c3d_config.pretrained_weights_path
      pretrained = lambda network: c3d.load_c3d_weights(network.c3d, path)

  return scnn_meta_arch.ScnnMetaArch(
      num_classes=config.num_classes,
      stream_names=tuple(config.streams),
      anchor_generator=anchors,
      target_assigner=assigner,
      network_builder=network_builder,
      use_proposal_network=config.use_proposal_network,
      initialize_localization_from_classification=(
          config.initialize_localization_from_classification),
      scoring_network=_SCORING[config.scoring_network],
      proposal_score_threshold=config.proposal_score_threshold,
      nms_iou_threshold=config.nms_iou_threshold,
      per_class_nms=config.per_class_nms,
      evaluation_nms_offset=config.evaluation_nms_offset,
      max_detections=config.max_detections,
      max_proposals=config.max_proposals,
      overlap_alpha=config.overlap_alpha,
      overlap_weight=config.overlap_weight,
      proposal_background_ratio=config.proposal_background_ratio,
      classification_background_ratio=(config.classification_background_ratio
                                       if config.HasField("classification_background_ratio")
                                       else None),
      use_length_prior=config.use_length_prior,
      length_prior_smoothing=config.length_prior_smoothing,
      trimmed_tolerance=config.trimmed_tolerance_steps,
      pretrained_initializer=pretrained,
      **subsets)
