"""Packaging for tal_tf. Protos are compiled at build time (no manual protoc step)."""

import os

from setuptools import find_packages
from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithProtos(build_py):
  """Compiles protos/*.proto into tal_tf/protos/*_pb2.py before collecting modules."""

  def run(self):
    import sys  # pylint: disable=g-import-not-at-top
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from tal_tf.utils import proto_compiler  # pylint: disable=g-import-not-at-top
    proto_compiler.compile_protos()
    super().run()


setup(
    name="tal_tf",
    version="0.1.0",
    description="Temporal action localization in TensorFlow, Object Detection API style",
    packages=find_packages(include=["tal_tf", "tal_tf.*"]),
    package_data={"tal_tf": ["dataset_tools/resources/*.json", "dataset_tools/resources/*.pbtxt",
                             "dataset_tools/README.md", "protos/*.py"]},
    python_requires=">=3.11,<3.12",
    cmdclass={"build_py": BuildPyWithProtos},
)
