"""Reading, overriding, validating and saving text-format pipeline configs.

Loading is strict: an unknown field, a wrong type, a field set twice or a missing required
value raises `ConfigError` naming the file, line and field.
"""

import math
import os

import tensorflow as tf
from google.protobuf import descriptor
from google.protobuf import text_format

from tal_tf.core import stream_spec
from tal_tf.protos import pipeline_pb2
from tal_tf.protos import validation_pb2

PIPELINE_CONFIG_NAME = "pipeline.config"

_FD = descriptor.FieldDescriptor
INTEGER_TYPES = frozenset([_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64,
                           _FD.TYPE_SINT32, _FD.TYPE_SINT64, _FD.TYPE_FIXED32,
                           _FD.TYPE_FIXED64, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64])
FLOAT_TYPES = frozenset([_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE])
NUMERIC_TYPES = INTEGER_TYPES | FLOAT_TYPES


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

  Scalars are replaced, messages merged recursively, maps merged key by key, and a repeated
  field named in the override replaces the file's list (so `input_path: "x"` points training
  somewhere else instead of adding a second path).
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
    if field.type == _FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
      # A map is merged key by key (`params { key: "k" value: "v" }` changes one entry).
      target_map = getattr(target, field.name)
      for key in value:
        if field.message_type.fields_by_name["value"].type == _FD.TYPE_MESSAGE:
          target_map[key].CopyFrom(value[key])
        else:
          target_map[key] = value[key]
    elif field.label == descriptor.FieldDescriptor.LABEL_REPEATED:
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


def numeric_rule(field):
  """The `(tal_tf.protos.check)` NumericCheck declared on a field descriptor, or None."""
  options = field.GetOptions()
  if not options.HasExtension(validation_pb2.check):
    return None
  return options.Extensions[validation_pb2.check]


def describe_rule(rule):
  """Human-readable range of a NumericCheck, e.g. '> 0', 'in [0, 1)', 'finite'."""
  has_min, has_max = rule.HasField("min"), rule.HasField("max")
  fmt = lambda v: f"{v:g}"  # pylint: disable=unnecessary-lambda-assignment
  if has_min and has_max:
    return (f"in {'(' if rule.min_exclusive else '['}{fmt(rule.min)}, {fmt(rule.max)}"
            f"{')' if rule.max_exclusive else ']'}")
  if has_min:
    return f"{'>' if rule.min_exclusive else '>='} {fmt(rule.min)}"
  if has_max:
    return f"{'<' if rule.max_exclusive else '<='} {fmt(rule.max)}"
  return "finite"


def rule_violation(rule, value, is_float):
  """Why `value` breaks `rule` ('must be > 0'), or None when it is valid."""
  if is_float and not math.isfinite(value):
    return "must be finite" + ("" if rule.any or describe_rule(rule) == "finite"
                               else f" and {describe_rule(rule)}")
  if rule.any:
    return None
  low_ok = (not rule.HasField("min") or
            (value > rule.min if rule.min_exclusive else value >= rule.min))
  high_ok = (not rule.HasField("max") or
             (value < rule.max if rule.max_exclusive else value <= rule.max))
  if low_ok and high_ok:
    return None
  return f"must be {describe_rule(rule)}"


def _format_value(value):
  return f"{value:g}" if isinstance(value, float) else str(value)


def check_numeric_fields(message, source="<config>", prefix=""):
  """Checks every set numeric field of `message` and of each message under it against its
  declared `(check)` rule (floats must be finite); raises ConfigError naming the first bad
  field as `source: field a.b.c: must be > 0, got -1`.
  """
  for field, value in message.ListFields():
    path = f"{prefix}{field.name}"
    repeated = field.label == _FD.LABEL_REPEATED
    if field.type == _FD.TYPE_MESSAGE:
      if field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        for key in value:
          item = value[key]
          if value_field.type == _FD.TYPE_MESSAGE:
            check_numeric_fields(item, source, f"{path}[{key!r}].")
          else:
            _check_scalar(value_field, item, source, f"{path}[{key!r}]")
      elif repeated:
        for i, item in enumerate(value):
          check_numeric_fields(item, source, f"{path}[{i}].")
      else:
        check_numeric_fields(value, source, f"{path}.")
      continue
    if field.type not in NUMERIC_TYPES:
      continue
    if repeated:
      for i, item in enumerate(value):
        _check_scalar(field, item, source, f"{path}[{i}]")
      rule = numeric_rule(field)
      if rule is not None and rule.increasing:
        for i in range(1, len(value)):
          _require(value[i] > value[i - 1], source, f"{path}[{i}]",
                   f"must be greater than {path}[{i - 1}] (strictly increasing), got "
                   f"{_format_value(value[i])} after {_format_value(value[i - 1])}")
    else:
      _check_scalar(field, value, source, path)
  return message


def _check_scalar(field, value, source, path):
  # A field without a rule (tests/utils/test_validation.py refuses those) is still
  # checked for being finite.
  rule = numeric_rule(field) or validation_pb2.NumericCheck(any=True)
  problem = rule_violation(rule, value, field.type in FLOAT_TYPES)
  _require(problem is None, source, path, f"{problem}, got {_format_value(value)}")


def validate_input_reader(reader, source, name):
  """Checks an input reader has paths and well-formed streams."""
  _require(len(reader.input_path) > 0, source, f"{name}.input_path",
           "at least one TFRecord file pattern is required")
  _require(len(reader.streams) > 0, source, f"{name}.streams",
           "at least one feature stream { name dim } is required")
  seen = set()
  for i, stream in enumerate(reader.streams):
    _require(stream.name, source, f"{name}.streams[{i}].name", "is required")
    if stream.type == stream.FRAMES:
      for field in ("frame_height", "frame_width"):
        _require(getattr(stream, field) > 0, source, f"{name}.streams[{i}].{field}",
                 f"a FRAMES stream needs the records' frame size, got "
                 f"{getattr(stream, field)}")
    else:
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
  """Checks required values, numeric ranges and cross-field consistency; raises
  ConfigError."""
  check_numeric_fields(config, source)
  _require(config.HasField("model") and config.model.WhichOneof("model"), source, "model",
           "a model (e.g. tal_net { ... }) is required")
  for name, reader in input_readers(config):
    validate_input_reader(reader, source, name)
  # Model-specific fields are checked by the model's own builder: build the model (layers
  # only, no weights yet: cheap) and check the streams it declares against the readers.
  from tal_tf.builders import model_builder  # pylint: disable=g-import-not-at-top
  arch = config.model.WhichOneof("model")
  try:
    model = model_builder.build(config.model)
  except (ValueError, KeyError, NotImplementedError) as e:
    message = str(e.args[0]) if e.args else str(e)
    raise ConfigError(f"{source}: model.{arch}: {message}") from None
  check_model_streams(config, model.stream_names, source, phase_streams(model))
  return config


def phase_streams(model):
  """{training phase (None: evaluation): streams its data must provide} of a built model."""
  out = {phase: tuple(model.phase_stream_names(phase)) for phase in model.training_phases}
  out[None] = tuple(model.phase_stream_names(None))
  return out


def input_readers(config):
  """[(field path, InputReader)] of every reader a config declares: train and eval readers
  and the per-phase readers of train_config.phases."""
  out = [(name, getattr(config, name)) for name in ("train_input_reader", "eval_input_reader")
         if config.HasField(name)]
  for i, phase in enumerate(config.train_config.phases):
    if phase.HasField("input_reader"):
      out.append((f"train_config.phases[{i}].input_reader", phase.input_reader))
  return out


def check_model_streams(config, stream_names, source="<config>", phase_streams=None):
  """Checks every declared input reader provides the streams a built model reads.

  phase_streams: {phase: streams} (model.phase_stream_names) for models whose phases read
  different streams: a phase's own reader must provide its phase's streams, the train
  reader those of the phases that read it; the eval reader those of phase None (default
  all stream_names)."""
  needed = {}
  if phase_streams is not None:
    phase_streams = dict(phase_streams)
    needed["eval_input_reader"] = list(phase_streams.pop(None, stream_names))
    own = {}
    for i, phase in enumerate(config.train_config.phases):
      if phase.HasField("input_reader"):
        own[phase.name] = f"train_config.phases[{i}].input_reader"
        needed[own[phase.name]] = list(phase_streams.get(phase.name, stream_names))
    needed["train_input_reader"] = [s for phase, names in phase_streams.items()
                                    if phase not in own for s in names]
  for name, reader in input_readers(config):
    available = [s.name for s in reader.streams]
    for stream in needed.get(name, stream_names):
      _require(stream in available, source, f"{name}.streams",
               f"the model reads stream {stream!r}, which is not declared here (declared: "
               f"{available})")


def check_config_against_data(config, num_classes, reader_names=("train_input_reader",)):
  """Checks each named input reader against its files before any graph is built: the label
  map names ids 1..num_classes exactly, and the first record of every input file holds the
  declared streams with the declared dims (and label ids within 1..num_classes, named as
  the label map names them).

  Raises data_checks.DataMismatchError (or label_map_util.LabelMapError) naming the file.
  """
  from tal_tf.data import data_checks  # pylint: disable=g-import-not-at-top
  arch = config.model.WhichOneof("model")
  readers = dict(input_readers(config))
  for name in reader_names:
    if name not in readers:
      continue
    reader = readers[name]
    id_to_name = None
    if reader.label_map_path:
      data_checks.check_label_map(reader.label_map_path, int(num_classes),
                                  field=f"{name}.label_map_path",
                                  num_classes_field=f"model.{arch}.num_classes")
      from tal_tf.data import label_map_util  # pylint: disable=g-import-not-at-top
      id_to_name = label_map_util.get_id_to_name(reader.label_map_path)
    data_checks.check_first_records(reader.input_path, stream_dims(reader), int(num_classes),
                                    field=name, skip_corrupt=reader.skip_corrupt_records,
                                    id_to_name=id_to_name)


def save_pipeline_config(config, directory, filename=PIPELINE_CONFIG_NAME):
  """Writes `config` as text proto to `directory`/`filename`; returns the path."""
  tf.io.gfile.makedirs(directory)
  path = os.path.join(directory, filename)
  text = text_format.MessageToString(config)
  if "://" in path:  # A remote file system (e.g. gs://) writes objects whole anyway.
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(text)
  else:
    # A full disk or a kill mid-write must not leave a truncated config of the run.
    from tal_tf.utils import atomic_files  # pylint: disable=g-import-not-at-top
    atomic_files.write_text(path, text)
  return path


def stream_dims(reader):
  """{stream name: spec} of an input reader, in declaration order: the feature dim (int) or,
  for a FRAMES stream, a stream_spec.FrameStream(height, width)."""
  return {s.name: (stream_spec.FrameStream(s.frame_height, s.frame_width, s.frame_rate)
                   if s.type == s.FRAMES else s.dim) for s in reader.streams}
