"""Numeric validation of pipeline configs: every numeric field reachable from
TrainEvalPipelineConfig declares a `(check)` rule, defaults obey their rules, and values
outside a rule (or non-finite floats) are refused naming the field path and value."""
import math

from google.protobuf import descriptor
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from tal_tf.protos import pipeline_pb2
from tal_tf.utils import config_util

_FD = descriptor.FieldDescriptor
INT32_RANGE = (-2**31, 2**31 - 1)


def _reachable_fields(message_descriptor, prefix="", seen=None):
  """Yields (path, field, parent path) for every field of every message under
  `message_descriptor`; each message type is expanded once per path (no recursion loops)."""
  seen = seen or ()
  for field in message_descriptor.fields:
    path = f"{prefix}{field.name}"
    yield path, field
    if field.type == _FD.TYPE_MESSAGE and field.message_type.full_name not in seen:
      yield from _reachable_fields(field.message_type, path + ".",
                                   seen + (message_descriptor.full_name,))


def numeric_fields():
  """[(path, field)] of every numeric field reachable from TrainEvalPipelineConfig."""
  return [(path, field) for path, field in
          _reachable_fields(pipeline_pb2.TrainEvalPipelineConfig.DESCRIPTOR)
          if field.type in config_util.NUMERIC_TYPES]


NUMERIC_FIELDS = numeric_fields()
RULED = [(p, f) for p, f in NUMERIC_FIELDS if config_util.numeric_rule(f) is not None]


def test_the_schema_has_numeric_fields():
  # Guards the walk itself: an empty walk would make every test below pass.
  paths = [p for p, _ in NUMERIC_FIELDS]
  assert "train_config.optimizer.learning_rate.constant.learning_rate" in paths
  assert "train_input_reader.streams.dim" in paths
  assert len(paths) > 50


def test_every_numeric_field_declares_a_rule():
  missing = sorted({f.full_name for p, f in NUMERIC_FIELDS
                    if config_util.numeric_rule(f) is None})
  assert not missing, (
      "numeric config fields without a validation rule; annotate each in its .proto with "
      "[(check) = {min: ... max: ...}] (or {any: true}): " + ", ".join(missing))


@pytest.mark.parametrize("path,field", RULED, ids=[p for p, _ in RULED])
def test_rule_is_coherent_and_the_default_obeys_it(path, field):
  rule = config_util.numeric_rule(field)
  bounded = rule.HasField("min") or rule.HasField("max")
  assert bounded != rule.any, f"{path}: a rule is either bounded or any: true"
  if rule.HasField("min") and rule.HasField("max"):
    assert rule.min < rule.max, path
  if rule.increasing:
    assert field.label == _FD.LABEL_REPEATED, f"{path}: increasing needs a repeated field"
  if field.has_default_value and field.label != _FD.LABEL_REPEATED:
    problem = config_util.rule_violation(rule, field.default_value,
                                         field.type in config_util.FLOAT_TYPES)
    assert problem is None, f"{path}: default {field.default_value} {problem}"


def _set_path(config, path, value):
  """Sets `path` (a.b.c) in `config`, creating parents (and picking oneof members)."""
  names = path.split(".")
  message = config
  for name in names[:-1]:
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.label == _FD.LABEL_REPEATED:
      message = getattr(message, name).add()
    else:
      message = getattr(message, name)
      message.SetInParent()
  leaf = message.DESCRIPTOR.fields_by_name[names[-1]]
  if leaf.label == _FD.LABEL_REPEATED:
    getattr(message, names[-1]).append(value)
    return f"{_indexed(config, path)}[0]"
  setattr(message, names[-1], value)
  return _indexed(config, path)


def _indexed(config, path):
  """`path` with [0] after each repeated message on the way (how errors name fields)."""
  out, message = [], config
  for name in path.split(".")[:-1]:
    field = message.DESCRIPTOR.fields_by_name[name]
    if field.label == _FD.LABEL_REPEATED:
      out.append(f"{name}[0]")
      message = getattr(message, name)[0]
    else:
      out.append(name)
      message = getattr(message, name)
  return ".".join(out + [path.split(".")[-1]])


def _bad_values(rule, is_float):
  """Values each rule must refuse (one beyond every bound, the bound itself if exclusive,
  and the non-finite floats)."""
  bad = []
  step = 0.5 if is_float else 1
  if rule.HasField("min"):
    bad.append(rule.min if rule.min_exclusive else rule.min - step)
  if rule.HasField("max"):
    bad.append(rule.max if rule.max_exclusive else rule.max + step)
  if is_float:
    bad += [math.nan, math.inf, -math.inf]
  if not is_float:
    bad = [int(b) for b in bad if INT32_RANGE[0] <= b <= INT32_RANGE[1]]
  return bad


@pytest.mark.parametrize("path,field", RULED, ids=[p for p, _ in RULED])
def test_values_outside_the_rule_are_refused_naming_the_field(path, field):
  rule = config_util.numeric_rule(field)
  is_float = field.type in config_util.FLOAT_TYPES
  for value in _bad_values(rule, is_float):
    config = pipeline_pb2.TrainEvalPipelineConfig()
    shown = _set_path(config, path, value)
    with pytest.raises(config_util.ConfigError) as info:
      config_util.check_numeric_fields(config, "x.config")
    message = str(info.value)
    assert message.startswith(f"x.config: field {shown}: must be "), message
    assert message.endswith(f", got {value:g}" if is_float else f", got {value}"), message


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_any_value_is_accepted_iff_it_obeys_the_rule(data):
  path, field = data.draw(st.sampled_from(RULED))
  rule = config_util.numeric_rule(field)
  is_float = field.type in config_util.FLOAT_TYPES
  if is_float:
    value = data.draw(st.floats(width=32 if field.type == _FD.TYPE_FLOAT else 64))
  else:
    value = data.draw(st.integers(*INT32_RANGE))
  config = pipeline_pb2.TrainEvalPipelineConfig()
  shown = _set_path(config, path, value)
  stored = _get_leaf(config, path)
  # Independent reference: the rule written out by hand.
  valid = (not is_float or math.isfinite(stored)) and (rule.any or (
      (not rule.HasField("min") or
       (stored > rule.min if rule.min_exclusive else stored >= rule.min)) and
      (not rule.HasField("max") or
       (stored < rule.max if rule.max_exclusive else stored <= rule.max))))
  if valid:
    config_util.check_numeric_fields(config, "x.config")
  else:
    with pytest.raises(config_util.ConfigError, match=f"field {_escape(shown)}: must be"):
      config_util.check_numeric_fields(config, "x.config")


def _get_leaf(config, path):
  message = config
  for name in path.split(".")[:-1]:
    value = getattr(message, name)
    message = value[0] if message.DESCRIPTOR.fields_by_name[name].label == \
        _FD.LABEL_REPEATED else value
  value = getattr(message, path.split(".")[-1])
  return value[0] if message.DESCRIPTOR.fields_by_name[path.split(".")[-1]].label == \
      _FD.LABEL_REPEATED else value


def _escape(text):
  import re  # pylint: disable=g-import-not-at-top
  return re.escape(text)


def test_increasing_rule_refuses_an_unsorted_list():
  config = pipeline_pb2.TrainEvalPipelineConfig()
  schedule = config.train_config.optimizer.learning_rate.piecewise_constant
  schedule.boundaries.extend([10, 10])
  with pytest.raises(config_util.ConfigError,
                     match=r"piecewise_constant\.boundaries\[1\]: must be greater than"):
    config_util.check_numeric_fields(config, "x.config")
  schedule.boundaries[1] = 11
  config_util.check_numeric_fields(config, "x.config")


def test_a_negative_learning_rate_is_refused_where_the_config_is_loaded(tmp_path):
  path = tmp_path / "p.config"
  path.write_text("""
    model { tal_net { num_classes: 2 streams: "rgb" } }
    train_config { optimizer { adam {} learning_rate { constant { learning_rate: -0.001 } } } }
    train_input_reader { input_path: "x" streams { name: "rgb" dim: 4 } }
  """)
  with pytest.raises(config_util.ConfigError) as info:
    config_util.load_pipeline_config(str(path))
  assert str(info.value) == (
      f"{path}: field train_config.optimizer.learning_rate.constant.learning_rate: must be > "
      "0, got -0.001")
  # The override is checked too.
  with pytest.raises(config_util.ConfigError, match=r"phases\[0\]\.optimizer\.momentum\."
                     r"momentum: must be in \[0, 1\), got 1"):
    config_util.load_pipeline_config(str(path), override=(
        'train_config { optimizer { learning_rate { constant { learning_rate: 0.1 } } } '
        'phases { name: "train" num_steps: 3 optimizer { momentum { momentum: 1 } } } }'))


def test_unset_fields_are_not_checked():
  # Unset fields keep their (checked) defaults; `num_classes` unset is the builder's to
  # report as required, not a range error.
  config = pipeline_pb2.TrainEvalPipelineConfig()
  config.model.tal_net.SetInParent()
  config_util.check_numeric_fields(config)
