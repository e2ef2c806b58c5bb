"""Builds S-CNN (`model.scnn`) and registers it as meta-architecture "scnn"."""

from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES


@META_ARCHITECTURES.register("scnn")
def build_scnn(config):
  """S-CNN proto -> meta-architecture."""
  del config
  raise NotImplementedError("model.scnn: this meta-architecture is not implemented yet")
