"""The registry of meta-architecture builders: proto oneof name -> builder(config)."""

from tal_tf.utils import registry

META_ARCHITECTURES = registry.Registry("meta-architecture")
