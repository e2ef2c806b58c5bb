"""Builds WTAL (`model.wtal`) and registers it as meta-architecture "wtal"."""

from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES


@META_ARCHITECTURES.register("wtal")
def build_wtal(config):
  """WTAL proto -> meta-architecture."""
  del config
  raise NotImplementedError("model.wtal: this meta-architecture is not implemented yet")
