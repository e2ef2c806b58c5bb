"""Generated proto modules: compiled by the build, importable, matching the runtime."""
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import time

import google.protobuf
import pytest

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


def _compiled_copy(tmp_path):
  """protos/ copied to tmp_path/src and compiled into tmp_path/out; returns (src, out_dir)."""
  src = tmp_path / "src"
  src.mkdir()
  for path in proto_compiler.proto_sources():
    shutil.copy(path, src / os.path.basename(path))
  proto_compiler.compile_protos(src_dir=str(src), out_root=str(tmp_path / "out"))
  return src, str(tmp_path / "out" / "tal_tf" / "protos")


def test_staleness_follows_source_bytes_not_file_times(tmp_path):
  src, out_dir = _compiled_copy(tmp_path)
  assert not proto_compiler.is_stale(str(src), out_dir)
  sources = sorted(src.glob("*.proto"))
  # A fresh clone beside cached modules: every source newer than every module, same bytes.
  later = time.time() + 3600
  for path in sources:
    os.utime(path, (later, later))
  assert not proto_compiler.is_stale(str(src), out_dir)
  # A changed source carrying an old time (cp -p, tar, rsync -a) is stale all the same.
  changed = src / "model.proto"
  original = changed.read_bytes()
  changed.write_bytes(original + b"\n// edited\n")
  os.utime(changed, (1e9, 1e9))
  assert proto_compiler.is_stale(str(src), out_dir)
  changed.write_bytes(original)
  assert not proto_compiler.is_stale(str(src), out_dir)
  # A renamed source changes the digest although no byte changed.
  os.rename(src / "eval.proto", src / "zz_eval.proto")
  assert proto_compiler.is_stale(str(src), out_dir)
  os.rename(src / "zz_eval.proto", src / "eval.proto")
  # Modules without a recorded digest (or a missing module) are stale.
  os.remove(os.path.join(out_dir, proto_compiler.DIGEST_NAME))
  assert proto_compiler.is_stale(str(src), out_dir)
  proto_compiler.compile_protos(src_dir=str(src), out_root=str(tmp_path / "out"))
  assert not proto_compiler.is_stale(str(src), out_dir)
  os.remove(os.path.join(out_dir, "pipeline_pb2.py"))
  assert proto_compiler.is_stale(str(src), out_dir)


def test_digest_is_independent_of_paths_and_order(tmp_path):
  sources = proto_compiler.proto_sources()
  copy = tmp_path / "elsewhere"
  copy.mkdir()
  for path in sources:
    shutil.copy(path, copy / os.path.basename(path))
  moved = [str(copy / os.path.basename(p)) for p in reversed(sources)]
  assert proto_compiler.sources_digest(moved) == proto_compiler.sources_digest(sources)
  # Hand-worked: one file "a.proto" holding b"xy".
  one = tmp_path / "a.proto"
  one.write_bytes(b"xy")
  assert proto_compiler.sources_digest([str(one)]) == hashlib.sha256(b"7:a.proto:2:xy").hexdigest()


def test_write_digest_mode_matches_compilation(tmp_path):
  # The Bazel rule's action: `proto_compiler.py --write_digest OUT SOURCE...` as a script.
  out = tmp_path / "digest"
  script = proto_compiler.__file__
  subprocess.run([sys.executable, script, "--write_digest", str(out)]
                 + proto_compiler.proto_sources(), check=True)
  assert out.read_text().strip() == proto_compiler.recorded_digest()
  assert proto_compiler.main(["proto_compiler", "--write_digest", str(out)]) == 2


def test_stale_modules_in_an_unwritable_folder_fail_with_both_paths(tmp_path, monkeypatch):
  src, out_dir = _compiled_copy(tmp_path)
  (src / "model.proto").write_bytes((src / "model.proto").read_bytes() + b"\n// edited\n")
  monkeypatch.setattr(proto_compiler, "PROTO_SRC_DIR", str(src))
  monkeypatch.setattr(proto_compiler, "PROTO_OUT_DIR", out_dir)
  # Root may write anywhere on a writable file system, so the unwritable folder is simulated.
  monkeypatch.setattr(proto_compiler.os, "access", lambda path, mode: path != out_dir)
  with pytest.raises(RuntimeError, match="not writable") as err:
    proto_compiler.ensure_compiled()
  assert out_dir in str(err.value) and str(src) in str(err.value)


def test_failed_compilation_keeps_the_previous_modules(tmp_path):
  src, out_dir = _compiled_copy(tmp_path)
  before = {name: open(os.path.join(out_dir, name), "rb").read()
            for name in os.listdir(out_dir) if name.endswith("_pb2.py")}
  (src / "model.proto").write_bytes((src / "model.proto").read_bytes() + b"\nmessage {\n")
  with pytest.raises(RuntimeError, match="protoc failed"):
    proto_compiler.compile_protos(src_dir=str(src), out_root=str(tmp_path / "out"))
  after = {name: open(os.path.join(out_dir, name), "rb").read()
           for name in os.listdir(out_dir) if name.endswith("_pb2.py")}
  assert after == before
  # No staging folder left behind, and the modules are (correctly) still stale.
  assert not [name for name in os.listdir(out_dir) if name.startswith(".protoc-")]
  assert proto_compiler.is_stale(str(src), out_dir)
