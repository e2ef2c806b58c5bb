"""The installed environment is the pinned one: one TensorFlow wheel, Keras 2, pinned versions."""
import importlib.metadata as metadata

import pytest


def _version(dist):
  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return None


@pytest.mark.parametrize("dist,expected", [
    ("tensorflow-cpu", "2.17.1"), ("tf_keras", "2.17.0"), ("tf-models-official", "2.17.0"),
    ("tensorflow-io", "0.37.1"), ("numpy", "1.26.4"), ("grpcio-tools", "1.62.3"),
    ("tensorboard", "2.17.1")])
def test_pinned_versions(dist, expected):
  assert _version(dist) == expected


def test_protobuf_and_setuptools_ranges():
  assert _version("protobuf").startswith("4.25.")
  major = int(_version("setuptools").split(".")[0])
  assert major < 81


def test_single_tensorflow_wheel():
  # tf-models-official / tf-keras / tensorflow-serving-api name `tensorflow`; installing them
  # with dependencies would put a second TensorFlow over tensorflow-cpu.
  for other in ("tensorflow", "tensorflow-intel", "tf-nightly"):
    assert _version(other) is None, f"{other} is installed next to tensorflow-cpu"


def test_keras_2_everywhere():
  import tensorflow as tf
  import tf_keras
  assert tf_keras.__version__.startswith("2.17")
  assert tf.keras.optimizers.Adam is tf_keras.optimizers.Adam
  # What tf-models-official builds on imports and works with tf_keras optimizers.
  from official.modeling import optimization  # pylint: disable=unused-import
  import orbit  # pylint: disable=unused-import
