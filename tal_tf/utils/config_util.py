"""Reading, overriding, validating and saving text-format pipeline configs.

Loading is strict: an unknown field, a wrong type, a field set twice or a missing required
value raises `ConfigError` naming the file, line and field.
"""

import os

import tensorflow as tf
from google.protobuf import descriptor
from google.protobuf import text_format

from tal_tf.protos import pipeline_pb2

PIPELINE_CONFIG_NAME = "pipeline.config"


class ConfigError(ValueError):
  """A pipeline config is malformed or inconsistent."""


def _parse_text(text, message, source):
  try:
    text_format.Parse(text, message)
  except text_format.ParseError as e:
    # ParseError carries line/column; the message already names the offending field.
    line = e.GetLine() if hasattr(e, "GetLine") else None
    col = e.GetColumn() if hasattr(e, "GetColumn") else None
    where = f"{source}:{line}:{col}" if line is not None else source
    detail = str(e)
    if line is not None:
      prefix = f"{line}:{col} : "
      if detail.startswith(prefix):
        detail = detail[len(prefix):]
    raise ConfigError(f"{where}: {detail}") from None
  return message


def parse_pipeline_text(text, source="<string>"):
  """Parses text-format `TrainEvalPipelineConfig` (strict)."""
  return _parse_text(text, pipeline_pb2.TrainEvalPipelineConfig(), source)


def load_pipeline_config(path, override=None, validate=True):
  """Reads the pipeline config at `path`, merges `override` (text proto) and validates it."""
  if not tf.io.gfile.exists(path):
    raise ConfigError(f"pipeline config not found: {path}")
  with tf.io.gfile.GFile(path, "r") as f:
    config = parse_pipeline_text(f.read(), source=path)
  if override:
    merge_override(config, override)
  if validate:
    validate_pipeline_config(config, source=path)
  return config


def merge_override(config, override_text):
  """Merges text proto `override_text` over `config` in place.

  Scalars are replaced, messages merged recursively, and a repeated field named in the
  override replaces the file's list (so `input_path: "x"` points training somewhere else
  instead of adding a second path).
  """
  override = _parse_text(override_text, type(config)(), "--config_override")
  _merge_replacing_repeated(config, override)
  # `field: []` parses to nothing at all; it still means "replace the list with an empty
  # one", so clear every repeated field the override names with an empty list.
  for path in _empty_list_paths(override_text):
    _clear_path(config, path)
  return config


def _empty_list_paths(text):
  """Field paths (tuples of names) written as `name: []` in a text proto."""
  tokenizer = text_format.Tokenizer(text.splitlines())
  tokens = []
  while not tokenizer.AtEnd():
    tokens.append(tokenizer.token)
    tokenizer.NextToken()
  stack, paths, i = [], [], 0
  while i < len(tokens):
    tok = tokens[i]
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    if tok in ("}", ">"):
      stack.pop()
    elif nxt in ("{", "<"):
      stack.append(tok)
      i += 1
    elif nxt == ":" and i + 2 < len(tokens) and tokens[i + 2] in ("{", "<"):
      stack.append(tok)
      i += 2
    elif (nxt == ":" and i + 3 < len(tokens) and tokens[i + 2] == "[" and
          tokens[i + 3] == "]"):
      paths.append(tuple(stack) + (tok,))
      i += 3
    i += 1
  return paths


def _clear_path(message, path):
  for name in path[:-1]:
    message = getattr(message, name)
  message.ClearField(path[-1])


def _merge_replacing_repeated(target, source):
  for field, value in source.ListFields():
    if field.label == descriptor.FieldDescriptor.LABEL_REPEATED:
      target.ClearField(field.name)
      getattr(target, field.name).extend(value)
    elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
      sub = getattr(target, field.name)
      oneof = field.containing_oneof
      if oneof is not None and target.WhichOneof(oneof.name) != field.name:
        # Switching a oneof: start from the override's message, not a stale sibling.
        sub.SetInParent()
      _merge_replacing_repeated(sub, value)
    else:
      setattr(target, field.name, value)


def _require(condition, source, field, message):
  if not condition:
    raise ConfigError(f"{source}: field {field}: {message}")


def validate_input_reader(reader, source, name):
  """Checks an input reader has paths and well-formed streams."""
  _require(len(reader.input_path) > 0, source, f"{name}.input_path",
           "at least one TFRecord file pattern is required")
  _require(len(reader.streams) > 0, source, f"{name}.streams",
           "at least one feature stream { name dim } is required")
  seen = set()
  for i, stream in enumerate(reader.streams):
    _require(stream.name, source, f"{name}.streams[{i}].name", "is required")
    _require(stream.dim > 0, source, f"{name}.streams[{i}].dim",
             f"must be > 0, got {stream.dim}")
    _require(stream.name not in seen, source, f"{name}.streams[{i}].name",
             f"duplicate stream {stream.name!r}")
    seen.add(stream.name)
  _require(reader.batch_size > 0, source, f"{name}.batch_size",
           f"must be > 0, got {reader.batch_size}")
  _require(0.0 <= reader.min_kept_fraction <= 1.0, source, f"{name}.min_kept_fraction",
           f"must be in [0, 1], got {reader.min_kept_fraction}")


def validate_pipeline_config(config, source="<config>"):
  """Checks required values and cross-field consistency; raises ConfigError."""
  _require(config.HasField("model") and config.model.WhichOneof("model"), source, "model",
           "a model (e.g. tal_net { ... }) is required")
  for name in ("train_input_reader", "eval_input_reader"):
    if config.HasField(name):
      validate_input_reader(getattr(config, name), source, name)
  # Model-specific fields are checked by the model's own builder: build the model (layers
  # only, no weights yet: cheap) and check the streams it declares against the readers.
  from tal_tf.builders import model_builder  # pylint: disable=g-import-not-at-top
  arch = config.model.WhichOneof("model")
  try:
    model = model_builder.build(config.model)
  except (ValueError, KeyError, NotImplementedError) as e:
    message = str(e.args[0]) if e.args else str(e)
    raise ConfigError(f"{source}: model.{arch}: {message}") from None
  check_model_streams(config, model.stream_names, source)
  return config


def check_model_streams(config, stream_names, source="<config>"):
  """Checks every declared input reader provides the streams a built model reads."""
  for name in ("train_input_reader", "eval_input_reader"):
    if not config.HasField(name):
      continue
    available = [s.name for s in getattr(config, name).streams]
    for stream in stream_names:
      _require(stream in available, source, f"{name}.streams",
               f"the model reads stream {stream!r}, which is not declared here (declared: "
               f"{available})")


def save_pipeline_config(config, directory, filename=PIPELINE_CONFIG_NAME):
  """Writes `config` as text proto to `directory`/`filename`; returns the path."""
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, filename)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text_format.MessageToString(config))
  return path


def stream_dims(reader):
  """{stream name: dim} of an input reader, in declaration order."""
  return {s.name: s.dim for s in reader.streams}
