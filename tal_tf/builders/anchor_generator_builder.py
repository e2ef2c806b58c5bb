"""Builds anchor generators from `AnchorGenerator` protos."""

from tal_tf.anchor_generators import multiscale_anchor_generator
from tal_tf.anchor_generators import sliding_window_anchor_generator
from tal_tf.utils import registry

ANCHOR_GENERATORS = registry.Registry("anchor generator")


@ANCHOR_GENERATORS.register("multiscale_anchor_generator")
def _multiscale(config):
  kwargs = {}
  if config.scales:
    kwargs["scales"] = tuple(config.scales)
  return multiscale_anchor_generator.MultiscaleAnchorGenerator(**kwargs)


@ANCHOR_GENERATORS.register("sliding_window_anchor_generator")
def _sliding_window(config):
  kwargs = dict(overlap=config.overlap, frames_per_step=config.frames_per_step)
  if config.window_lengths:
    kwargs["window_lengths"] = tuple(config.window_lengths)
  return sliding_window_anchor_generator.SlidingWindowAnchorGenerator(**kwargs)


def build(config):
  """AnchorGenerator proto -> anchor generator object."""
  choice = config.WhichOneof("anchor_generator_oneof")
  if choice is None:
    raise ValueError("anchor_generator: no generator set; expected one of "
                     f"{ANCHOR_GENERATORS.names()}")
  return ANCHOR_GENERATORS.get(choice)(getattr(config, choice))
