"""Compiles protos/*.proto into tal_tf/protos/*_pb2.py with grpcio-tools' bundled protoc.

Nobody runs protoc by hand: `setup.py` calls this at build time, `make` calls it, and
`tal_tf.protos` calls `ensure_compiled()` on import in a source checkout, recompiling when a
.proto is newer than its generated module. The protoc inside grpcio-tools 1.62.3 (libprotoc
25.1) generates code for the pinned protobuf 4.25 runtime.

Sources import each other as "tal_tf/protos/<name>.proto"; the virtual path mapping
`-Ital_tf/protos=<repo>/protos` lets them live at the top-level protos/ folder.
"""

import glob
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_SRC_DIR = os.path.join(REPO_ROOT, "protos")
PROTO_OUT_DIR = os.path.join(REPO_ROOT, "tal_tf", "protos")


def proto_sources(src_dir=PROTO_SRC_DIR):
  """Sorted paths of the .proto files in `src_dir`."""
  return sorted(glob.glob(os.path.join(src_dir, "*.proto")))


def _generated_path(proto_path, out_dir):
  name = os.path.splitext(os.path.basename(proto_path))[0]
  return os.path.join(out_dir, name + "_pb2.py")


def is_stale(src_dir=PROTO_SRC_DIR, out_dir=PROTO_OUT_DIR):
  """True when a generated module is missing or older than its .proto source."""
  for proto in proto_sources(src_dir):
    generated = _generated_path(proto, out_dir)
    if not os.path.exists(generated) or os.path.getmtime(generated) < os.path.getmtime(proto):
      return True
  return False


def compile_protos(src_dir=PROTO_SRC_DIR, out_root=REPO_ROOT):
  """Runs protoc on every .proto in `src_dir`, writing `out_root`/tal_tf/protos/*_pb2.py."""
  from grpc_tools import protoc  # pylint: disable=g-import-not-at-top
  import grpc_tools  # pylint: disable=g-import-not-at-top

  sources = proto_sources(src_dir)
  if not sources:
    raise FileNotFoundError(f"no .proto files found in {src_dir}")
  out_dir = os.path.join(out_root, "tal_tf", "protos")
  os.makedirs(out_dir, exist_ok=True)
  well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
  virtual = [f"tal_tf/protos/{os.path.basename(p)}" for p in sources]
  args = ["protoc", f"-Ital_tf/protos={src_dir}", f"-I{well_known}",
          f"--python_out={out_root}"] + virtual
  code = protoc.main(args)
  if code != 0:
    raise RuntimeError(f"protoc failed (exit {code}) compiling {src_dir}: {' '.join(args)}")
  init = os.path.join(out_dir, "__init__.py")
  if not os.path.exists(init):
    open(init, "w").close()
  return [_generated_path(p, out_dir) for p in sources]


def ensure_compiled():
  """Compiles the protos if this is a source checkout and any generated module is stale."""
  if os.path.isdir(PROTO_SRC_DIR) and is_stale():
    compile_protos()


if __name__ == "__main__":
  for path in compile_protos():
    print(path)
  sys.exit(0)
