"""Under `bazel test`: the code tested is Bazel's build output, not a pip/editable install.

Outside Bazel (plain pytest) these tests are skipped: TEST_SRCDIR is Bazel's runfiles root.
"""
import os
import sys

import pytest

RUNFILES = os.environ.get("TEST_SRCDIR")
pytestmark = pytest.mark.skipif(not RUNFILES, reason="only meaningful under `bazel test`")


def _under(path, root):
  return os.path.abspath(path).startswith(os.path.abspath(root) + os.sep)


def test_tal_tf_is_imported_from_runfiles():
  import tal_tf  # pylint: disable=g-import-not-at-top
  assert _under(tal_tf.__file__, RUNFILES), tal_tf.__file__


def test_proto_modules_are_bazel_generated():
  from tal_tf.protos import pipeline_pb2  # pylint: disable=g-import-not-at-top
  assert _under(pipeline_pb2.__file__, RUNFILES), pipeline_pb2.__file__
  # The runfiles entry links to the py_proto_modules output, not to a module that
  # tal_tf.utils.proto_compiler wrote into the source tree.
  target = os.path.realpath(pipeline_pb2.__file__)
  assert f"{os.sep}bin{os.sep}tal_tf{os.sep}protos{os.sep}" in target, target


def test_interpreter_is_the_pinned_venv():
  # The toolchain from build_defs/python_venv.bzl: a venv interpreter (sys.prefix differs from
  # the base installation) that has the pinned protobuf runtime.
  import google.protobuf  # pylint: disable=g-import-not-at-top
  assert sys.prefix != sys.base_prefix, sys.executable
  assert google.protobuf.__version__.startswith("4.25.")


def test_runfiles_hold_the_digest_of_the_sources_compiled():
  # py_proto_modules records the sources' digest beside the modules, so importing tal_tf.protos
  # from the read-only runfiles never tries to recompile, whatever the sources' file times.
  from tal_tf.protos import pipeline_pb2  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import proto_compiler  # pylint: disable=g-import-not-at-top
  out_dir = os.path.dirname(pipeline_pb2.__file__)
  assert os.path.exists(os.path.join(out_dir, proto_compiler.DIGEST_NAME))
  assert (proto_compiler.recorded_digest(out_dir)
          == proto_compiler.sources_digest(proto_compiler.proto_sources()))
  assert not proto_compiler.is_stale()
