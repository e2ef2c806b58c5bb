"""tal_tf: temporal action localization in TensorFlow (Object Detection API style)."""

__version__ = "0.1.0"

import os as _os

# tal_tf uses Keras 2 (tf_keras) throughout, as tf-models-official does; make `tf.keras`
# agree for any code that reaches it through TensorFlow.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
