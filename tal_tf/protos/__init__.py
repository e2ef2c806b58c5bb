"""Generated protobuf modules of tal_tf (sources in the repository's protos/ folder).

Importing this package compiles the protos when a .proto is newer than its generated module,
so a source checkout never needs a manual protoc step.
"""
from tal_tf.utils import proto_compiler as _proto_compiler

_proto_compiler.ensure_compiled()
