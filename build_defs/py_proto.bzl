"""py_proto_modules: Python modules (<name>_pb2.py) generated from proto_library targets.

Bazel 4's native rules have proto_library but no Python proto rule (that one lives in
protobuf's own repository, which would have to be downloaded). This rule runs the venv's
grpcio-tools protoc (@tal_tf_python//:protoc) on the direct sources of each proto_library,
with every transitive source's import root on the path, and writes each module where its
import path says: a source imported as "tal_tf/protos/model.proto" becomes
tal_tf/protos/model_pb2.py under the output root, so `import tal_tf.protos.model_pb2` works
from runfiles exactly as from a pip install.
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
  return [DefaultInfo(files = depset(outputs), runfiles = ctx.runfiles(files = outputs))]

py_proto_modules = rule(
    implementation = _py_proto_modules_impl,
    attrs = {
        "deps": attr.label_list(providers = [ProtoInfo], mandatory = True),
        "_protoc": attr.label(
            default = "@tal_tf_python//:protoc",
            executable = True,
            cfg = "exec",
        ),
    },
    doc = "<name>_pb2.py modules for the direct sources of `deps` (proto_library targets).",
)
