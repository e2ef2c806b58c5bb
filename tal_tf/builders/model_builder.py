"""Builds meta-architectures from `Model` protos through the meta-architecture registry.

Each meta-architecture has its own builder module that registers itself; importing them all
here (like Model Garden's registry_imports) makes every `model { <name> { ... } }` buildable.
"""

import importlib

# pylint: disable=unused-import
from tal_tf.builders import etp_builder
from tal_tf.builders import scnn_builder
from tal_tf.builders import tal_net_builder
from tal_tf.builders import wtal_builder
# pylint: enable=unused-import
from tal_tf.builders.meta_arch_registry import META_ARCHITECTURES


def build(model_config):
  """Model proto -> meta-architecture (a TemporalDetectionModel)."""
  choice = model_config.WhichOneof("model")
  if choice is None:
    raise ValueError(f"model: no meta-architecture set; expected one of "
                     f"{META_ARCHITECTURES.names()}")
  if choice == "external":
    return _build_external(model_config.external)
  return META_ARCHITECTURES.get(choice)(getattr(model_config, choice))


def _build_external(config):
  """model.external: imports the module that registers the builder, then calls it."""
  if not config.module or not config.name:
    raise ValueError("model.external: both module (to import) and name (its registered "
                     "builder) are required")
  try:
    importlib.import_module(config.module)
  except ImportError as e:
    raise ValueError(f"model.external.module: cannot import {config.module!r}: {e}") from None
  return META_ARCHITECTURES.get(config.name)(**dict(config.params))
