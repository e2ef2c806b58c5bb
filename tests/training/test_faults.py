"""Faults during training: damaged input files, a full disk, a trainer killed at any point.
Previous outputs stay readable and a re-run completes."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.training import checkpoint_util
from tal_tf.training import train_lib
from tal_tf.utils import config_util
from tests import fault_util
from tests import toy_records


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  records = toy_records.make_records(tmp_path_factory.mktemp("faults"), num_videos=4,
                                     num_shards=2)
  root, files = records["root"], records["files"]
  # A shard whose tail is cut off (its first record reads, the rest is damaged); only the
  # test that skips damaged files reads it.
  damaged = os.path.join(root, "damaged.tfrecord")
  with open(files[0], "rb") as f:
    data = f.read()
  with open(damaged, "wb") as f:
    f.write(data[:len(data) - 9])
  return dict(records, damaged=damaged)


def _config(records, override=""):
  config = toy_records.toy_config(records, override)
  config.train_config.steps_per_loop = 1
  config.train_config.checkpoint_every_n_steps = 2
  return config


def _weights(model):
  return {v.name: v.numpy() for v in model.variables}


def test_skip_corrupt_records_trains_checkpoints_and_resumes(records, tmp_path):
  config = _config(records, "train_input_reader { skip_corrupt_records: true }")
  config.train_input_reader.input_path.append(records["damaged"])
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


def _checkpoint_files(model_dir, step):
  return sorted(glob.glob(os.path.join(model_dir, f"ckpt-{step}*")))


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(records, tmp_path):
  config = _config(records)
  disk = str(tmp_path / "disk")
  # A checkpoint is ~2.4 MB (most of it the input position): room for two and the logs.
  with fault_util.small_disk(disk, 16 * 2**20):
    model_dir = os.path.join(disk, "m")
    trainer = train_lib.Trainer(config, model_dir, num_train_steps=2)
    assert trainer.train() == 2
    saved = _weights(trainer.model)
    size = sum(os.path.getsize(p) for p in _checkpoint_files(model_dir, 2))
    # Room for the logs and the config, not for another checkpoint.
    filler = fault_util.fill_disk(disk, leave_bytes=size // 3)
    again = train_lib.Trainer(config, model_dir, num_train_steps=4)
    with pytest.raises(checkpoint_util.CheckpointWriteError) as info:
      again.train()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{model_dir}: writing checkpoint ckpt-4 failed (")
    assert f"the previous checkpoint {model_dir}/ckpt-2 is intact" in message
    # Nothing of the failed save is left; the previous checkpoint is the newest and reads.
    assert not _checkpoint_files(model_dir, 4), os.listdir(model_dir)
    assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, "ckpt-2")
    config_util.load_pipeline_config(os.path.join(model_dir, "pipeline.config"))
    reader = train_lib.Trainer(config, model_dir, num_train_steps=4)
    assert reader.restore() == os.path.join(model_dir, "ckpt-2")
    for name, value in _weights(reader.model).items():
      np.testing.assert_array_equal(value, saved[name], err_msg=name)
    # Space again: the same command resumes and completes.
    os.remove(filler)
    assert train_lib.Trainer(config, model_dir, num_train_steps=4).train() == 4
    assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, "ckpt-4")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trainer_killed_at_random_points_keeps_checkpoints_readable(records, tmp_path, seed):
  """SIGKILL train_main.py at random moments of a run that saves every step (seeded), then
  re-run until it completes: after every kill the config and the newest checkpoint read and
  the step never goes back."""
  rng = np.random.default_rng(seed)
  model_dir = str(tmp_path / "m")
  config_path = str(tmp_path / "pipeline.config")
  config_util.save_pipeline_config(_config(records), str(tmp_path))
  target = 20
  cmd = [sys.executable, "-m", "train_main", f"--pipeline_config={config_path}",
         f"--model_dir={model_dir}", "--mode=train", f"--num_train_steps={target}",
         "--config_override=train_config { checkpoint_every_n_steps: 1 steps_per_loop: 1 }"]
  env = dict(os.environ, PYTHONPATH=toy_records.REPO, TF_CPP_MIN_LOG_LEVEL="2")
  lock = os.path.join(model_dir, checkpoint_util.LOCK_NAME)
  step = 0
  for attempt in range(2):
    killed, code, stderr = fault_util.kill_at_random(
        cmd, rng, started=lambda: os.path.exists(lock), max_delay=3.0, env=env)
    if not killed:
      assert attempt > 0, "the first run ended before its kill: nothing was tested"
      assert code == 0, stderr[-3000:]
      break
    config_util.load_pipeline_config(os.path.join(model_dir, "pipeline.config"))
    probe = train_lib.Trainer(_config(records), model_dir, num_train_steps=target)
    restored = probe.restore()
    now = int(probe.global_step.numpy())
    assert now >= step, (attempt, now, step)
    assert restored is None or restored.endswith(f"ckpt-{now}")
    step = now
  result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, f"ckpt-{target}")
  assert not glob.glob(os.path.join(model_dir, "ckpt-*_temp*"))
