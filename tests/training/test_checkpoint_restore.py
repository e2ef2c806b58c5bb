"""Restoring a given checkpoint (evaluation, export, inference, fine-tuning, backbones) goes
through checkpoint_util.restore_checked: a damaged file or a checkpoint of another model is a
one-line CheckpointReadError naming it, never a traceback or a model evaluated with its
initial weights."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.builders import model_builder
from tal_tf.export import exporter_lib
from tal_tf.training import checkpoint_util
from tal_tf.training import run_lib
from tal_tf.training import train_lib
from tal_tf.utils import config_util
from tests.export import tiny_model
from tests.training.test_training import data  # pylint: disable=unused-import (fixture)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("restore"))
  config_path = tiny_model.write_pipeline(root)
  prefix = tiny_model.write_checkpoint(config_path, os.path.join(root, "run"))
  return dict(root=root, config=config_util.load_pipeline_config(config_path), prefix=prefix)


def _truncated_copy(prefix, directory):
  """A copy of checkpoint `prefix` in `directory` whose data file lost its second half."""
  os.makedirs(directory, exist_ok=True)
  name = os.path.basename(prefix)
  for suffix in (".index", ".data-00000-of-00001"):
    with open(prefix + suffix, "rb") as f:
      data = f.read()
    if suffix.startswith(".data"):
      data = data[:len(data) // 2]
    with open(os.path.join(directory, name + suffix), "wb") as f:
      f.write(data)
  return os.path.join(directory, name)


def _foreign_checkpoint(directory):
  """A readable checkpoint of something else (a step counter and one vector)."""
  root = tf.train.Checkpoint(step=tf.Variable(3, dtype=tf.int64), other=tf.Variable([1.0]))
  return root.save(os.path.join(directory, "ckpt"))


def test_restore_checked_restores_the_saved_values(tiny):
  model = model_builder.build(tiny["config"].model)
  model.create_variables(tiny_model.STREAM_DIMS)
  checkpoint_util.restore_checked(tf.train.Checkpoint(model=model), tiny["prefix"])
  reader = tf.train.load_checkpoint(tiny["prefix"])
  saved = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
           if k.startswith("model/") and k.endswith(".ATTRIBUTES/VARIABLE_VALUE")}
  assert len(saved) == len(model.variables)
  restored = sorted(float(np.sum(v.numpy())) for v in model.variables)
  np.testing.assert_allclose(restored, sorted(float(np.sum(t)) for t in saved.values()),
                             rtol=1e-6)


def test_evaluating_a_checkpoint_of_another_model_is_an_error(tiny, tmp_path):
  # Before: the model had no variables when restored, nothing matched, and the evaluation
  # ran (and wrote metrics) with randomly initialized weights.
  foreign = _foreign_checkpoint(str(tmp_path / "foreign"))
  with pytest.raises(checkpoint_util.CheckpointReadError,
                     match=r"--checkpoint '.*foreign/ckpt-1' does not hold this model's "
                           r"variables: \d+ variables are not in it, e\.g\. \S+:0"):
    run_lib.evaluate_checkpoint(tiny["config"], str(tmp_path / "eval"), foreign)
  assert not os.path.exists(tmp_path / "eval" / "metrics.json")


def test_a_truncated_checkpoint_is_one_line_naming_it(tiny, tmp_path):
  damaged = _truncated_copy(tiny["prefix"], str(tmp_path / "damaged"))
  pattern = r"checkpoint '.*damaged/ckpt-1' cannot be read \(damaged or incomplete files\?\)"
  with pytest.raises(checkpoint_util.CheckpointReadError, match=pattern):
    run_lib.evaluate_checkpoint(tiny["config"], str(tmp_path / "eval"), damaged)
  # Export and checkpoint inference (CheckpointDetector) restore through exporter_lib.
  with pytest.raises(exporter_lib.ExportError, match=pattern):
    exporter_lib.build_detection_module(tiny["config"], damaged)
  serving = tmp_path / "serving"
  with pytest.raises(exporter_lib.ExportError, match=pattern):
    exporter_lib.export_saved_model(tiny["config"], damaged, str(serving))
  assert not serving.exists()   # No empty model base path left behind.


def test_export_names_a_checkpoint_of_another_config(tiny, tmp_path):
  config = config_util.load_pipeline_config(
      os.path.join(tiny["root"], "pipeline.config"),
      "model { tal_net { num_filters: 24 } }")
  with pytest.raises(exporter_lib.ExportError,
                     match=r"does not hold this model's variables \(it does not match the model "
                           r"built from the pipeline config.*incompatible tensor"):
    exporter_lib.build_detection_module(config, tiny["prefix"])


def test_resuming_with_a_changed_model_keeps_the_runs_config(data, tmp_path):
  # The config changed (wider layers) but the model_dir holds the old run: before, both
  # intact checkpoints were called damaged, and the new config had already replaced the
  # model_dir's pipeline.config, so the checkpoints no longer matched their own config.
  model_dir = str(tmp_path / "run")
  config = config_util.load_pipeline_config(data["config"],
                                            "train_config { num_steps: 2 }")
  train_lib.Trainer(config, model_dir).train()
  saved = os.path.join(model_dir, "pipeline.config")
  before = open(saved).read()
  changed = config_util.load_pipeline_config(
      data["config"], "train_config { num_steps: 4 } model { tal_net { num_filters: 16 } }")
  with pytest.raises(checkpoint_util.CheckpointReadError,
                     match=r"run: checkpoint ckpt-2 does not match the model built from the "
                           r"config \(changed since this model_dir was trained\? its config "
                           r"is .*run/pipeline\.config.*incompatible tensor"):
    train_lib.Trainer(changed, model_dir).train()
  assert open(saved).read() == before
