"""SavedModel export of tal_tf detectors for TensorFlow Serving (see export/README.md)."""
