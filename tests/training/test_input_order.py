"""train_config.input_order and distribution_strategy choices of the trainer (one process)."""
import collections
import os

import pytest
import tensorflow as tf

from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import synthetic_thumos
from tal_tf.training import train_lib
from tal_tf.utils import config_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY_CONFIG = os.path.join(REPO, "tests", "contract", "toy_model.config")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("input_order")
  paths = synthetic_thumos.generate_dataset(
      str(tmp / "data"), subsets=("validation",), num_videos=3,
      stream_dims=collections.OrderedDict([("rgb", 6), ("flow", 4)]), feature_fps=1.0, seed=0)
  create_tfrecord.convert_dataset(
      paths["annotations"], str(tmp / "train"), paths["label_map"],
      feature_readers.NpyDirSource(paths["features"], None), subset="validation",
      num_shards=1, feature_fps=1.0, ignore_classes=("Ambiguous",), progress_stream=None)
  config = config_util.load_pipeline_config(TOY_CONFIG)
  for reader in (config.train_input_reader, config.eval_input_reader):
    del reader.input_path[:]
    reader.input_path.append(str(tmp / "train-*.tfrecord"))
    reader.label_map_path = paths["label_map"]
  config.train_config.phases[0].num_steps = 2
  config.train_config.phases[1].num_steps = 1
  config.train_config.steps_per_loop = 2
  return config


def _copy(config):
  copy = type(config)()
  copy.CopyFrom(config)
  return copy


def test_deterministic_order_checkpoints_the_position_not_the_iterator(config, tmp_path):
  config = _copy(config)
  config.train_config.input_order = "deterministic"
  trainer = train_lib.Trainer(config, str(tmp_path))
  assert trainer.is_chief and trainer.write_dir == str(tmp_path)
  assert trainer.train() == 3
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
  keys = reader.get_variable_to_shape_map()
  assert not any(k.startswith("train_iterator") for k in keys)
  # Three steps of global batch 2.
  assert reader.get_tensor("input_position/.ATTRIBUTES/VARIABLE_VALUE") == 3 * 2


def test_unknown_choices_fail_naming_the_field(config, tmp_path):
  bad = _copy(config)
  bad.train_config.input_order = "random"
  with pytest.raises(ValueError, match="train_config.input_order: unknown 'random'"):
    train_lib.Trainer(bad, str(tmp_path))
  with pytest.raises(ValueError, match="multi_worker_mirrored"):
    train_lib.build_strategy("parameter_server")
