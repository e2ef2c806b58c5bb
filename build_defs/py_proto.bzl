"""py_proto_modules: Python modules (<name>_pb2.py) generated from proto_library targets.

Bazel 4's native rules have proto_library but no Python proto rule (that one lives in
protobuf's own repository, which would have to be downloaded). This rule runs the venv's
grpcio-tools protoc (@tal_tf_python//:protoc) on the direct sources of each proto_library,
with every transitive source's import root on the path, and writes each module where its
import path says: a source imported as "tal_tf/protos/model.proto" becomes
tal_tf/protos/model_pb2.py under the output root, so `import tal_tf.protos.model_pb2` works
from runfiles exactly as from a pip install.

Beside the modules it writes proto_sources.sha256, the digest of the sources they were generated
from, computed by tal_tf/utils/proto_compiler.py itself (run as a script). `tal_tf.protos`
checks that digest on import: without it, the runfiles' modules would look stale and the import
would try to recompile into the read-only runfiles tree. Modification times cannot stand in for
it: Bazel caches by content, so a fresh clone (new source times) at a known workspace path reuses
modules generated earlier.
"""

def _import_path(src, proto_info):
  """The path protoc knows `src` by, e.g. tal_tf/protos/model.proto."""
  root = proto_info.proto_source_root
  path = src.path
  if root and root != "." and path.startswith(root + "/"):
    return path[len(root) + 1:]
  return src.short_path

def _py_proto_modules_impl(ctx):
  outputs = []
  transitive = []
  roots = {}
  args = ctx.actions.args()
  direct = []
  for dep in ctx.attr.deps:
    info = dep[ProtoInfo]
    transitive.append(info.transitive_sources)
    roots[info.proto_source_root] = True
    for src in info.direct_sources:
      direct.append((src, info))
  for root in roots:
    args.add("--proto_path=" + root)
  gen_root = ctx.bin_dir.path
  for src, info in direct:
    rel = _import_path(src, info)
    if not rel.endswith(".proto"):
      fail("%s: not a .proto source" % src.path)
    module = rel[:-len(".proto")] + "_pb2.py"
    # Declared relative to this package; the rule must sit where the import path puts it.
    prefix = ctx.label.package + "/" if ctx.label.package else ""
    if not module.startswith(prefix):
      fail(("%s generates %s, outside package //%s: declare the rule in the package matching " +
            "the import path") % (src.path, module, ctx.label.package))
    outputs.append(ctx.actions.declare_file(module[len(prefix):]))
    args.add(rel)
  args.add("--python_out=" + gen_root)
  ctx.actions.run(
      executable = ctx.executable._protoc,
      arguments = [args],
      inputs = depset(transitive = transitive),
      outputs = outputs,
      mnemonic = "PyProtoGen",
      progress_message = "Generating Python protos for %s" % ctx.label,
  )
  digest = ctx.actions.declare_file("proto_sources.sha256")
  tool = ctx.file._digest_tool
  sources = [src for src, _ in direct]
  ctx.actions.run(
      executable = ctx.executable._python,
      arguments = [tool.path, "--write_digest", digest.path] + [src.path for src in sources],
      inputs = [tool] + sources,
      outputs = [digest],
      mnemonic = "PyProtoDigest",
      progress_message = "Recording the proto sources' digest for %s" % ctx.label,
  )
  files = outputs + [digest]
  return [DefaultInfo(files = depset(files), runfiles = ctx.runfiles(files = files))]

py_proto_modules = rule(
    implementation = _py_proto_modules_impl,
    attrs = {
        "deps": attr.label_list(providers = [ProtoInfo], mandatory = True),
        "_protoc": attr.label(
            default = "@tal_tf_python//:protoc",
            executable = True,
            cfg = "exec",
        ),
        "_python": attr.label(
            default = "@tal_tf_python//:python",
            executable = True,
            cfg = "exec",
        ),
        "_digest_tool": attr.label(
            default = "//:tal_tf/utils/proto_compiler.py",
            allow_single_file = True,
        ),
    },
    doc = ("<name>_pb2.py modules for the direct sources of `deps` (proto_library targets), " +
           "plus proto_sources.sha256, the digest tal_tf.protos checks on import."),
)
