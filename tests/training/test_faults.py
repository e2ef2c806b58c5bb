"""Faults during training: damaged input files, a full disk, a trainer killed at any point.
Previous outputs stay readable and a re-run completes."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
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
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults")
  paths = synthetic_thumos.generate_dataset(
      str(root / "data"), subsets=("validation",), num_videos=4,
      stream_dims={"rgb": 6, "flow": 4}, feature_fps=1.0, seed=0)
  source = feature_readers.NpyDirSource(paths["features"], None)
  create_tfrecord.convert_dataset(
      paths["annotations"], str(root / "train"), paths["label_map"], source,
      subset="validation", num_shards=2, feature_fps=1.0, ignore_classes=("Ambiguous",),
      progress_stream=None)
  files = sorted(glob.glob(str(root / "train-*.tfrecord")))
  # A third shard whose tail is cut off: its first record reads, the rest is damaged.
  damaged = str(root / "train-damaged.tfrecord")
  with open(files[0], "rb") as f:
    data = f.read()
  with open(damaged, "wb") as f:
    f.write(data[:len(data) - 9])
  return dict(root=root, train=str(root / "train-*.tfrecord"), files=files, damaged=damaged,
              label_map=paths["label_map"])


def _config(records, override=""):
  config = config_util.load_pipeline_config(TOY_CONFIG, override)
  config.ClearField("eval_input_reader")
  reader = config.train_input_reader
  reader.input_path[:] = [records["train"]]
  reader.label_map_path = records["label_map"]
  config.train_config.steps_per_loop = 1
  config.train_config.checkpoint_every_n_steps = 2
  return config


def _weights(model):
  return {v.name: v.numpy() for v in model.variables}


def test_skip_corrupt_records_trains_checkpoints_and_resumes(records, tmp_path):
  config = _config(records, "train_input_reader { skip_corrupt_records: true }")
  assert records["damaged"] in glob.glob(records["train"])
  model_dir = str(tmp_path / "m")
  trainer = train_lib.Trainer(config, model_dir, num_train_steps=4)
  assert trainer.train() == 4
  state = tf.train.get_checkpoint_state(model_dir)
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-4"]
  keys = [k for k, _ in tf.train.list_variables(state.model_checkpoint_path)]
  assert any(k.startswith("train_iterator/") for k in keys), keys
  saved = _weights(trainer.model)
  resumed = train_lib.Trainer(config, model_dir, num_train_steps=6)
  assert resumed.restore().endswith("ckpt-4")
  for name, value in _weights(resumed.model).items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)
  resumed.global_step.assign(0)  # train() restores again: the step comes back from ckpt-4
  assert resumed.train() == 6
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-6")
