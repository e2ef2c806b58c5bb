"""Strict pipeline-config loading, overrides and saving."""
import glob
import os

import pytest

from tal_tf.utils import config_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MINIMAL = """
model { tal_net { num_classes: 3 streams: "rgb" } }
train_input_reader {
  input_path: "a-*.tfrecord"
  streams { name: "rgb" dim: 8 }
}
"""


def _write(tmp_path, text, name="p.config"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_minimal_config_loads(tmp_path):
  config = config_util.load_pipeline_config(_write(tmp_path, MINIMAL))
  assert config.model.tal_net.num_classes == 3
  assert config_util.stream_dims(config.train_input_reader) == {"rgb": 8}


def test_unknown_field_names_file_line_and_field(tmp_path):
  text = MINIMAL.replace('streams: "rgb" }', 'streams: "rgb" num_clases: 4 }')
  path = _write(tmp_path, text)
  with pytest.raises(config_util.ConfigError) as e:
    config_util.load_pipeline_config(path)
  msg = str(e.value)
  assert path in msg and ":2:" in msg and "num_clases" in msg


def test_wrong_type_is_rejected(tmp_path):
  path = _write(tmp_path, MINIMAL.replace("num_classes: 3", 'num_classes: "three"'))
  with pytest.raises(config_util.ConfigError, match="num_classes"):
    config_util.load_pipeline_config(path)


def test_field_set_twice_is_rejected(tmp_path):
  path = _write(tmp_path, MINIMAL.replace("num_classes: 3", "num_classes: 3 num_classes: 4"))
  with pytest.raises(config_util.ConfigError, match="num_classes"):
    config_util.load_pipeline_config(path)


def test_missing_required_values(tmp_path):
  with pytest.raises(config_util.ConfigError, match="model"):
    config_util.load_pipeline_config(_write(tmp_path, "train_config { num_steps: 3 }"))
  with pytest.raises(config_util.ConfigError, match="num_classes"):
    config_util.load_pipeline_config(
        _write(tmp_path, MINIMAL.replace("num_classes: 3", "")))
  with pytest.raises(config_util.ConfigError, match="input_path"):
    config_util.load_pipeline_config(
        _write(tmp_path, MINIMAL.replace('input_path: "a-*.tfrecord"', "")))
  with pytest.raises(config_util.ConfigError, match="dim"):
    config_util.load_pipeline_config(_write(tmp_path, MINIMAL.replace("dim: 8", "dim: 0")))


def test_model_stream_must_be_declared_by_reader(tmp_path):
  path = _write(tmp_path, MINIMAL.replace('streams: "rgb" }', 'streams: "flow" }'))
  with pytest.raises(config_util.ConfigError, match="flow"):
    config_util.load_pipeline_config(path)


def test_missing_file():
  with pytest.raises(config_util.ConfigError, match="not found"):
    config_util.load_pipeline_config("/nonexistent/pipeline.config")


def test_override_replaces_scalars_and_repeated_fields(tmp_path):
  path = _write(tmp_path, MINIMAL)
  override = ('model { tal_net { num_classes: 7 } } '
              'train_input_reader { input_path: "b-*.tfrecord" input_path: "c.tfrecord" '
              'streams { name: "rgb" dim: 16 } }')
  config = config_util.load_pipeline_config(path, override)
  assert config.model.tal_net.num_classes == 7
  assert list(config.model.tal_net.streams) == ["rgb"]  # untouched field kept
  assert list(config.train_input_reader.input_path) == ["b-*.tfrecord", "c.tfrecord"]
  assert config_util.stream_dims(config.train_input_reader) == {"rgb": 16}


def test_bad_override_is_named(tmp_path):
  with pytest.raises(config_util.ConfigError, match="--config_override"):
    config_util.load_pipeline_config(_write(tmp_path, MINIMAL), "model { bogus: 1 }")


def test_override_with_an_empty_list_empties_it(tmp_path):
  path = _write(tmp_path, MINIMAL.replace('streams: "rgb" }', 'streams: "rgb" anchor_generator '
                                           '{ multiscale_anchor_generator { scales: [1, 2] } } }'))
  config = config_util.load_pipeline_config(
      path, "model { tal_net { anchor_generator { multiscale_anchor_generator { scales: [] } } } }"
      " train_input_reader { input_path: [] }", validate=False)
  generator = config.model.tal_net.anchor_generator.multiscale_anchor_generator
  assert list(generator.scales) == [] and list(config.train_input_reader.input_path) == []
  assert list(config.model.tal_net.streams) == ["rgb"]  # not named: kept
  with pytest.raises(config_util.ConfigError, match="input_path"):
    config_util.load_pipeline_config(path, "train_input_reader { input_path: [] }")


def test_save_and_reload_round_trip(tmp_path):
  config = config_util.load_pipeline_config(_write(tmp_path, MINIMAL))
  saved = config_util.save_pipeline_config(config, str(tmp_path / "run"))
  assert os.path.basename(saved) == "pipeline.config"
  assert config_util.load_pipeline_config(saved) == config


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.config"))))
def test_every_shipped_config_parses(path):
  config = config_util.load_pipeline_config(path)
  assert config.model.WhichOneof("model")
