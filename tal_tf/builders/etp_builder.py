"""Builds ETP (`model.etp`) and registers it as meta-architecture "etp"."""

from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES


@META_ARCHITECTURES.register("etp")
def build_etp(config):
  """ETP proto -> meta-architecture."""
  del config
  raise NotImplementedError("model.etp: this meta-architecture is not implemented yet")
