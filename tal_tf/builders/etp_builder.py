"""Builds ETP (`model.etp`) and registers it as meta-architecture "etp"."""

from tal_tf.builders import input_reader_builder
from tal_tf.builders import matcher_builder
from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES
from tal_tf.meta_architectures import etp_meta_arch
from tal_tf.models import etp_networks
from tal_tf.protos import matcher_pb2
from tal_tf.protos import post_processing_pb2

# ETP Sec. 3.2: positive above 0.7, incomplete 0.3-0.7, background below 0.1.
_DEFAULT_MATCHER = matcher_pb2.Matcher(three_way_matcher=matcher_pb2.ThreeWayMatcher())
# ETP Sec. 4.2: "we empirically set the NMS threshold to 0.36".
_DEFAULT_NMS = post_processing_pb2.NonMaxSuppression(
    iou_threshold=0.36, score_threshold=0.0, max_per_class=100, max_total=100)


def _positive(config, field):
  value = getattr(config, field)
  if not value > 0:
    raise ValueError(f"model.etp.{field}: expected > 0, got {value!r}")
  return value


def _frame_actionness(config, num_classes):
  """FrameActionness proto -> (FrameActionnessNetwork, meta-arch kwargs)."""
  field = "model.etp.frame_actionness"
  if not config.frames_stream:
    raise ValueError(f"{field}.frames_stream: expected a stream name")
  if bool(config.pretrained_checkpoint) == bool(config.random_init):
    raise ValueError(f"{field}: give pretrained_checkpoint (local ImageNet weights of the "
                     "ResNet, see the README) or random_init: true (tests only), exactly one; "
                     f"got pretrained_checkpoint={config.pretrained_checkpoint!r}, "
                     f"random_init={config.random_init}")
  network = etp_networks.FrameActionnessNetwork(
      num_classes, model_id=config.model_id, depth_multiplier=config.depth_multiplier,
      crop_size=(config.crop_size, config.crop_size), dropout_rate=config.dropout_rate,
      frames_per_call=config.frames_per_call, name="actionness")
  return network, dict(
      frames_stream=config.frames_stream,
      pretrained_checkpoint=config.pretrained_checkpoint or None,
      proposal_frames_fn=_frames_fn(config, "proposal_input_reader", num_classes),
      eval_frames_fn=_frames_fn(config, "eval_input_reader", num_classes))


def _frames_fn(config, name, num_classes):
  """() -> dataset of whole videos of the frame reader `name` of FrameActionness (None when
  unset), read once in file order, one video per batch."""
  if not config.HasField(name):
    return None
  reader = type(getattr(config, name))()
  reader.CopyFrom(getattr(config, name))
  if config.frames_stream not in [s.name for s in reader.streams]:
    raise ValueError(f"model.etp.frame_actionness.{name}.streams: expected the frames stream "
                     f"{config.frames_stream!r}, got {[s.name for s in reader.streams]}")
  reader.repeat, reader.shuffle = False, False
  return lambda: input_reader_builder.build(reader, num_classes=num_classes,
                                            is_training=False, batch_size=1)


@META_ARCHITECTURES.register("etp")
def build_etp(config):
  """Etp proto -> EtpMetaArch."""
  num_classes = _positive(config, "num_classes")
  if not config.streams:
    raise ValueError("model.etp.streams: expected at least one stream name")
  unit_length = _positive(config, "unit_length")
  unit_stride = config.unit_stride or unit_length / 2.0
  if unit_stride <= 0:
    raise ValueError(f"model.etp.unit_stride: expected >= 0, got {config.unit_stride!r}")
  course_levels = tuple(config.course_levels) or (1, 2)
  start_levels = tuple(config.start_levels) or (1,)
  end_levels = tuple(config.end_levels) or (1,)
  for field, levels in (("course_levels", course_levels), ("start_levels", start_levels),
                        ("end_levels", end_levels)):
    if any(k < 1 for k in levels):
      raise ValueError(f"model.etp.{field}: expected levels >= 1, got {list(levels)}")
  course_first = sum(start_levels)
  course_parts = tuple(range(course_first, course_first + sum(course_levels)))
  nms = config.nms if config.HasField("nms") else _DEFAULT_NMS
  grouping = dict(
      thresholds=tuple(config.grouping_thresholds) or (0.5,),
      min_length=config.min_length, max_length=config.max_length,
      smoothing_sigma=config.smoothing_sigma, smoothing_truncate=config.smoothing_truncate,
      num_iterations=config.grouping_iterations,
      nms_iou_threshold=config.grouping_nms_iou_threshold)
  if not 0 <= config.min_length < config.max_length:
    raise ValueError(f"model.etp.min_length/max_length: expected 0 <= min_length < "
                     f"max_length, got {config.min_length} and {config.max_length}")
  if config.HasField("frame_actionness"):
    actionness, frame_kwargs = _frame_actionness(config.frame_actionness, num_classes)
  else:
    frame_kwargs = {}
    actionness = etp_networks.ActionnessHead(
        num_classes, hidden_units=config.actionness_hidden_units,
        kernel_size=config.actionness_kernel_size,
        dropout_rate=config.actionness_dropout_rate, name="actionness")
  return etp_meta_arch.EtpMetaArch(
      num_classes=num_classes,
      stream_names=tuple(config.streams),
      actionness_head=actionness,
      refinement_network=etp_networks.RefinementNetwork(
          hidden_units=config.refinement_hidden_units,
          num_layers=config.refinement_num_layers, name="refinement"),
      localization_head=etp_networks.LocalizationHead(
          num_classes, course_parts=course_parts,
          hidden_units=config.localization_hidden_units, use_non_local=config.use_non_local,
          dropout_rate=config.localization_dropout_rate, name="localization"),
      matcher=matcher_builder.build(config.matcher, _DEFAULT_MATCHER),
      grouping=grouping,
      unit_length=unit_length, unit_stride=unit_stride,
      max_units=_positive(config, "max_units"),
      max_proposals=_positive(config, "max_proposals"),
      use_refinement=config.use_refinement,
      pyramid_context_fraction=config.pyramid_context_fraction,
      start_levels=start_levels, course_levels=course_levels, end_levels=end_levels,
      refinement_batch_size=_positive(config, "refinement_batch_size"),
      max_positives=_positive(config, "max_positives"),
      background_ratio=config.background_ratio, incomplete_ratio=config.incomplete_ratio,
      hard_incomplete_fraction=config.hard_incomplete_fraction,
      completeness_weight=config.completeness_weight,
      localization_weight=config.localization_weight,
      nms_iou_threshold=nms.iou_threshold, per_class_nms=config.per_class_nms,
      score_threshold=nms.score_threshold, max_per_class=nms.max_per_class,
      max_detections=nms.max_total, **frame_kwargs)
