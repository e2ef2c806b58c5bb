"""Builds segment coders from `SegmentCoder` protos."""

from tal_tf.core import segment_coder
from tal_tf.utils import registry

SEGMENT_CODERS = registry.Registry("segment coder")


@SEGMENT_CODERS.register("center_length_coder")
def _center_length(config):
  return segment_coder.CenterLengthCoder(
      scale_factors=(config.center_scale, config.length_scale))


def build(config):
  """SegmentCoder proto -> SegmentCoder; an unset coder gives the 10 / 5 default."""
  choice = config.WhichOneof("segment_coder_oneof") or "center_length_coder"
  return SEGMENT_CODERS.get(choice)(getattr(config, choice))
