"""Serialized initializer / regularizer settings shared by tal_tf's Keras layers.

Layers keep these as plain config dicts so every sublayer gets its own initializer instance
(one shared unseeded instance would give identical initial weights to all towers) and so
`get_config` returns plain dicts rather than Keras' tracked wrappers.
"""

import tf_keras


def serialize_initializer(initializer):
  """Initializer (name, dict or object) -> plain config dict."""
  return tf_keras.initializers.serialize(tf_keras.initializers.get(initializer))


def serialize_regularizer(regularizer):
  """Regularizer (name, dict, object or None) -> plain config dict or None."""
  if regularizer is None:
    return None
  return tf_keras.regularizers.serialize(tf_keras.regularizers.get(regularizer))
