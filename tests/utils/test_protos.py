"""Generated proto modules: compiled by the build, importable, matching the runtime."""
import importlib
import os

import google.protobuf

from tal_tf.utils import proto_compiler


def test_every_proto_has_an_importable_generated_module():
  sources = proto_compiler.proto_sources()
  assert len(sources) >= 10
  for src in sources:
    name = os.path.splitext(os.path.basename(src))[0]
    module = importlib.import_module(f"tal_tf.protos.{name}_pb2")
    assert module.DESCRIPTOR.name == f"tal_tf/protos/{name}.proto"


def test_generated_code_matches_pinned_runtime():
  # protoc 25.x (grpcio-tools 1.62) emits code for the protobuf 4.25 runtime pinned in env/.
  assert google.protobuf.__version__.startswith("4.25.")
  assert not proto_compiler.is_stale()


def test_compile_into_fresh_directory(tmp_path):
  paths = proto_compiler.compile_protos(out_root=str(tmp_path))
  assert len(paths) == len(proto_compiler.proto_sources())
  for p in paths:
    assert os.path.getsize(p) > 0
    assert p.startswith(str(tmp_path))


def test_model_oneof_reserves_all_four_meta_architectures():
  from tal_tf.protos import model_pb2
  oneof = model_pb2.Model.DESCRIPTOR.oneofs_by_name["model"]
  # The four paper architectures, plus `external` for models registered outside tal_tf.
  assert {f.name for f in oneof.fields} == {"tal_net", "scnn", "wtal", "etp", "external"}
