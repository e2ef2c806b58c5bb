"""Compiles protos/*.proto into tal_tf/protos/*_pb2.py with grpcio-tools' bundled protoc.

Nobody runs protoc by hand: `setup.py` calls this at build time, `make` calls it, and
`tal_tf.protos` calls `ensure_compiled()` on import in a source checkout, recompiling when the
sources differ from the ones the modules were generated from. The protoc inside grpcio-tools
1.62.3 (libprotoc 25.1) generates code for the pinned protobuf 4.25 runtime.

Staleness is decided by content, not by file times: each compilation records a SHA-256 digest
of the sources (names and bytes) in tal_tf/protos/proto_sources.sha256, and the modules are
stale when a module is missing or that digest differs from the current sources'. Modification
times are not a usable signal: a fresh clone gives every .proto a new time while a build cache
(Bazel's output base, keyed by content) keeps modules generated earlier from the same bytes,
and `cp -p`, `tar` or `rsync -a` can carry an old time onto a changed source. The Bazel rule
(build_defs/py_proto.bzl) writes the same digest file beside the modules it generates, with
this module run as a script (`--write_digest`), so both builds agree on what "fresh" means.

Sources import each other as "tal_tf/protos/<name>.proto"; the virtual path mapping
`-Ital_tf/protos=<repo>/protos` lets them live at the top-level protos/ folder.
"""

import glob
import hashlib
import os
import shutil
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_SRC_DIR = os.path.join(REPO_ROOT, "protos")
PROTO_OUT_DIR = os.path.join(REPO_ROOT, "tal_tf", "protos")
DIGEST_NAME = "proto_sources.sha256"


def proto_sources(src_dir=PROTO_SRC_DIR):
  """Sorted paths of the .proto files in `src_dir`."""
  return sorted(glob.glob(os.path.join(src_dir, "*.proto")))


def _generated_path(proto_path, out_dir):
  name = os.path.splitext(os.path.basename(proto_path))[0]
  return os.path.join(out_dir, name + "_pb2.py")


def sources_digest(sources):
  """Hex SHA-256 over the sources' base names and bytes, in base-name order.

  Only names and contents count, so the digest is the same for a source tree, a copy of it and
  Bazel's view of it (which sees the same files under other paths).
  """
  digest = hashlib.sha256()
  for path in sorted(sources, key=os.path.basename):
    name = os.path.basename(path).encode("utf-8")
    with open(path, "rb") as f:
      data = f.read()
    digest.update(b"%d:%s:%d:" % (len(name), name, len(data)))
    digest.update(data)
  return digest.hexdigest()


def write_digest(path, sources):
  """Records `sources_digest(sources)` in `path` (written atomically)."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(sources_digest(sources) + "\n")
  os.replace(tmp, path)


def recorded_digest(out_dir=PROTO_OUT_DIR):
  """The digest recorded by the last compilation into `out_dir`, or None."""
  try:
    with open(os.path.join(out_dir, DIGEST_NAME), encoding="utf-8") as f:
      return f.read().strip()
  except FileNotFoundError:
    return None


def is_stale(src_dir=PROTO_SRC_DIR, out_dir=PROTO_OUT_DIR):
  """True when a generated module is missing or was generated from other source bytes."""
  sources = proto_sources(src_dir)
  for proto in sources:
    if not os.path.exists(_generated_path(proto, out_dir)):
      return True
  return recorded_digest(out_dir) != sources_digest(sources)


def compile_protos(src_dir=PROTO_SRC_DIR, out_root=REPO_ROOT):
  """Runs protoc on every .proto in `src_dir`, writing `out_root`/tal_tf/protos/*_pb2.py.

  protoc writes into a private staging folder beside the output; each module is then moved into
  place with an atomic rename, so a process importing the package meanwhile (e.g. a second
  pytest worker) reads either the old module or the new one, never a half-written file.
  """
  from grpc_tools import protoc  # pylint: disable=g-import-not-at-top
  import grpc_tools  # pylint: disable=g-import-not-at-top

  sources = proto_sources(src_dir)
  if not sources:
    raise FileNotFoundError(f"no .proto files found in {src_dir}")
  out_dir = os.path.join(out_root, "tal_tf", "protos")
  os.makedirs(out_dir, exist_ok=True)
  well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
  virtual = [f"tal_tf/protos/{os.path.basename(p)}" for p in sources]
  staging = tempfile.mkdtemp(prefix=".protoc-", dir=out_dir)
  try:
    args = ["protoc", f"-Ital_tf/protos={src_dir}", f"-I{well_known}",
            f"--python_out={staging}"] + virtual
    code = protoc.main(args)
    if code != 0:
      raise RuntimeError(f"protoc failed (exit {code}) compiling {src_dir}: {' '.join(args)}")
    staged = os.path.join(staging, "tal_tf", "protos")
    for proto in sources:
      os.replace(_generated_path(proto, staged), _generated_path(proto, out_dir))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  init = os.path.join(out_dir, "__init__.py")
  if not os.path.exists(init):
    open(init, "w").close()
  # Last, so that an interrupted compilation leaves the modules stale rather than "fresh".
  write_digest(os.path.join(out_dir, DIGEST_NAME), sources)
  return [_generated_path(p, out_dir) for p in sources]


def ensure_compiled():
  """Compiles the protos if this is a source checkout and the generated modules are stale.

  Raises RuntimeError naming both folders when the modules are stale but their folder cannot be
  written (a read-only checkout or a build system's output): protoc's own error would name only
  the first file it failed to write.
  """
  if not os.path.isdir(PROTO_SRC_DIR) or not is_stale(PROTO_SRC_DIR, PROTO_OUT_DIR):
    return
  if os.path.isdir(PROTO_OUT_DIR) and not os.access(PROTO_OUT_DIR, os.W_OK):
    raise RuntimeError(
        f"the generated modules in {PROTO_OUT_DIR} do not match the sources in "
        f"{PROTO_SRC_DIR} and that folder is not writable: regenerate them where they are "
        "built (`make protos`, or `bazel build //tal_tf/protos`)")
  compile_protos(PROTO_SRC_DIR, REPO_ROOT)


def main(argv):
  """`python -m tal_tf.utils.proto_compiler`: compiles protos/ and prints the modules.

  `proto_compiler.py --write_digest OUT SOURCE...` only records the sources' digest in OUT (the
  Bazel rule's second action; it runs this file as a script, so it imports nothing of tal_tf).
  """
  if len(argv) > 1 and argv[1] == "--write_digest":
    if len(argv) < 4:
      sys.stderr.write("usage: proto_compiler.py --write_digest OUT SOURCE.proto...\n")
      return 2
    write_digest(argv[2], argv[3:])
    return 0
  for path in compile_protos():
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
