"""Builds TAL-Net (`model.tal_net`) and registers it as meta-architecture "tal_net"."""

from tal_tf.builders import anchor_generator_builder
from tal_tf.builders import matcher_builder
from tal_tf.builders import sampler_builder
from tal_tf.builders import segment_coder_builder
from tal_tf.core import target_assigner
from tal_tf.meta_architectures import tal_net_meta_arch
from tal_tf.models import feature_reducer
from tal_tf.models import segment_proposal_network
from tal_tf.models import tal_net_classifier
from tal_tf.protos import anchor_generator_pb2
from tal_tf.protos import matcher_pb2
from tal_tf.protos import tal_net_pb2
from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES

_SPN_VARIANTS = {
    tal_net_pb2.TalNet.MULTI_DILATED: "multi_dilated",
    tal_net_pb2.TalNet.MULTI_TCONV: "multi_tconv",
    tal_net_pb2.TalNet.SINGLE_TCONV: "single_tconv",
    tal_net_pb2.TalNet.SINGLE: "single",
}

_SPN_TOWER_PLANS = {
    tal_net_pb2.TalNet.EXACT_SPAN: "exact",
    tal_net_pb2.TalNet.ODD_SPAN: "odd",
    tal_net_pb2.TalNet.PAPER_LITERAL: "paper",
}

_CROSS_BOUNDARY_ANCHORS = {
    tal_net_pb2.TalNet.KEEP: tal_net_meta_arch.CROSS_BOUNDARY_KEEP,
    tal_net_pb2.TalNet.DROP_IN_TRAINING_CLIP_AT_INFERENCE:
        tal_net_meta_arch.CROSS_BOUNDARY_DROP_AND_CLIP,
}

# TAL-Net supplementary Sec. 1: anchors positive above 0.7, negative below 0.3, each ground
# truth forced to a positive; proposals foreground above 0.5, background otherwise.
_DEFAULT_FIRST_MATCHER = matcher_pb2.Matcher(argmax_matcher=matcher_pb2.ArgMaxMatcher(
    matched_threshold=0.7, unmatched_threshold=0.3, force_match_for_each_groundtruth=True))
_DEFAULT_SECOND_MATCHER = matcher_pb2.Matcher(argmax_matcher=matcher_pb2.ArgMaxMatcher(
    matched_threshold=0.5, unmatched_threshold=0.5, force_match_for_each_groundtruth=False))


def _field_or_default(config, field, default):
  return getattr(config, field) if config.HasField(field) else default


@META_ARCHITECTURES.register("tal_net")
def build_tal_net(config):
  """TalNet proto -> TalNetMetaArch."""
  anchor_config = config.anchor_generator
  if not anchor_config.WhichOneof("anchor_generator_oneof"):
    anchor_config = anchor_generator_pb2.AnchorGenerator(
        multiscale_anchor_generator=anchor_generator_pb2.MultiscaleAnchorGenerator())
  anchors = anchor_generator_builder.build(anchor_config)
  bad = [s for s in anchors.scales if not float(s).is_integer()]
  if bad:
    raise ValueError(f"tal_net.anchor_generator: scales must be whole numbers of feature steps "
                     f"(each SPN tower's receptive field is built to equal its scale); got {bad}")
  scales = tuple(int(s) for s in anchors.scales)
  coder = segment_coder_builder.build(config.segment_coder)
  first_matcher = matcher_builder.build(config.first_stage_matcher, _DEFAULT_FIRST_MATCHER)
  second_matcher = matcher_builder.build(config.second_stage_matcher, _DEFAULT_SECOND_MATCHER)
  first_sampler = sampler_builder.build(config.first_stage_sampler)  # 256 @ 0.5 by default
  second_sampler = sampler_builder.build(
      config.second_stage_sampler if config.HasField("second_stage_sampler")
      else _second_sampler_default())
  variant = _SPN_VARIANTS[config.spn_variant]
  if (config.HasField("spn_tower_plan") and config.spn_tower_plan != tal_net_pb2.TalNet.EXACT_SPAN
      and variant != "multi_dilated"):
    raise ValueError(f"tal_net.spn_tower_plan: "
                     f"{tal_net_pb2.TalNet.SpnTowerPlan.Name(config.spn_tower_plan)} only applies "
                     f"to spn_variant MULTI_DILATED; got spn_variant "
                     f"{tal_net_pb2.TalNet.TowerVariant.Name(config.spn_variant)}")

  if config.number_of_stages not in (1, 2):
    raise ValueError(f"tal_net.number_of_stages: must be 1 (proposals only) or 2, got "
                     f"{config.number_of_stages}")

  def branch_builder(branch):
    safe = branch.replace("+", "_")
    reducer = feature_reducer.FeatureReducer(
        filters=config.feature_reduction_dim, name=f"{safe}_reducer")
    spn = segment_proposal_network.SegmentProposalNetwork(
        scales=scales, variant=variant, use_context=config.spn_context,
        filters=config.num_filters, rounding=_SPN_TOWER_PLANS[config.spn_tower_plan],
        name=f"{safe}_spn")
    if config.number_of_stages == 1:
      return reducer, spn, None
    head = tal_net_classifier.SoiClassifierHead(
        num_classes=config.num_classes, reduce_filters=config.feature_reduction_dim,
        fc_units=config.num_filters, dropout_rate=config.dropout_rate,
        name=f"{safe}_classifier")
    return reducer, spn, head

  first_nms = config.first_stage_nms
  second_nms = config.second_stage_nms
  return tal_net_meta_arch.TalNetMetaArch(
      num_classes=config.num_classes,
      stream_names=tuple(config.streams),
      fusion=("late" if config.fusion == tal_net_pb2.TalNet.LATE else "early"),
      anchor_generator=anchors,
      segment_coder=coder,
      branch_builder=branch_builder,
      first_stage_target_assigner=target_assigner.TargetAssigner(first_matcher, coder),
      first_stage_sampler=first_sampler,
      second_stage_target_assigner=target_assigner.TargetAssigner(second_matcher, coder),
      second_stage_sampler=second_sampler,
      first_stage_nms_iou_threshold=first_nms.iou_threshold,
      first_stage_max_proposals=_field_or_default(first_nms, "max_total", 300),
      soi_num_bins=config.soi_num_bins,
      soi_context_fraction=config.soi_context_fraction,
      second_stage_score_threshold=second_nms.score_threshold,
      second_stage_nms_iou_threshold=second_nms.iou_threshold,
      second_stage_max_per_class=second_nms.max_per_class,
      second_stage_max_total=second_nms.max_total,
      second_stage_soft_nms_sigma=second_nms.soft_nms_sigma,
      first_stage_classification_weight=config.first_stage_classification_weight,
      first_stage_localization_weight=config.first_stage_localization_weight,
      second_stage_classification_weight=config.second_stage_classification_weight,
      second_stage_localization_weight=config.second_stage_localization_weight,
      cross_boundary_anchors=_CROSS_BOUNDARY_ANCHORS[config.cross_boundary_anchors],
      number_of_stages=config.number_of_stages)


def _second_sampler_default():
  from tal_tf.protos import sampler_pb2  # pylint: disable=g-import-not-at-top
  return sampler_pb2.BalancedSampler(batch_size=64, positive_fraction=0.25)
