"""Training phases, per-phase optimizers, learning-rate multipliers, Caffe-style weight decay
and fine-tune checkpoints, on the contract test's toy model (two phases, no proposals)."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.builders import train_phase_builder
from tal_tf.core.standard_fields import InputFields
from tal_tf.training import train_lib
from tal_tf.utils import config_util
from tests import toy_records



@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return toy_records.make_records(tmp_path_factory.mktemp("phases"), num_videos=3,
                                  num_shards=1)


def _config(records, override=""):
  config = toy_records.toy_config(records, override)
  reader = config.train_input_reader
  reader.shuffle = False
  return config


def test_sgd_step_applies_weight_decay_then_multipliers_exactly(records, tmp_path):
  """One SGD step (no momentum) equals w - lr * m * (g + wd * w) (wd on kernels only)."""
  lr, wd, mult = 0.1, 0.01, 10.0
  config = _config(records, f"""train_config {{
      phases {{ name: "embed" num_steps: 1
        optimizer {{ momentum {{ momentum: 0.0 weight_decay: {wd} }}
                    learning_rate {{ constant {{ learning_rate: {lr} }} }} }}
        learning_rate_multipliers {{ regex: "head/kernel" multiplier: {mult} }} }}
      phases {{ name: "head" num_steps: 1 }} steps_per_loop: 1 }}""")
  trainer = train_lib.Trainer(config, str(tmp_path / "m"))
  model = trainer.model
  batch = next(iter(trainer._dataset_fn()))  # pylint: disable=protected-access
  variables = trainer.phases[0].variables
  before = {v.name: v.numpy().copy() for v in variables}
  with tf.GradientTape() as tape:
    predictions = model.predict(batch[InputFields.features], batch[InputFields.num_steps],
                                training=True, phase="embed")
    loss = model.loss(predictions, train_lib.groundtruth_from_batch(
        batch, model.input_fields), phase="embed")["total_loss"]
  grads = {v.name: g.numpy() for v, g in zip(variables, tape.gradient(loss, variables))}
  trainer.num_train_steps = 1
  trainer.train()
  assert int(trainer.global_step.numpy()) == 1
  checked = 0
  for v in variables:
    w0, g = before[v.name], grads[v.name]
    decay = wd * w0 if w0.ndim >= 2 else 0.0
    m = mult if "head/kernel" in v.name else 1.0
    np.testing.assert_allclose(v.numpy(), w0 - lr * m * (g + decay), rtol=1e-5, atol=1e-7)
    checked += 1
  assert checked == 4  # embed kernel + bias, head kernel + bias


def test_phases_run_in_order_with_their_own_optimizers_and_variables(records, tmp_path):
  config = _config(records, """train_config {
      phases { name: "embed" num_steps: 3 }
      phases { name: "head" num_steps: 2 frozen_variables: "head/bias" }
      checkpoint_every_n_steps: 100 steps_per_loop: 1 summary_every_n_steps: 1 }""")
  model_dir = str(tmp_path / "m")
  trainer = train_lib.Trainer(config, model_dir)
  assert [(p.name, p.start, p.end) for p in trainer.phases] == [("embed", 0, 3),
                                                                 ("head", 3, 5)]
  head_vars = [v.name for v in trainer.phases[1].variables]
  assert head_vars == [v.name for v in trainer.model.head.trainable_variables
                       if "bias" not in v.name]
  embed_before = [v.numpy().copy() for v in trainer.model.embed.trainable_variables]
  trainer.num_train_steps = 3
  trainer.train()
  embed_after_one = [v.numpy().copy() for v in trainer.model.embed.trainable_variables]
  assert any(not np.array_equal(a, b) for a, b in zip(embed_before, embed_after_one))
  assert int(trainer.phases[0].optimizer.iterations.numpy()) == 3
  assert int(trainer.phases[1].optimizer.iterations.numpy()) == 0
  # A phase end is always checkpointed (the next phase builds on it).
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-3")
  trainer.num_train_steps = 5
  trainer.train()
  assert int(trainer.phases[1].optimizer.iterations.numpy()) == 2
  for a, b in zip(embed_after_one, trainer.model.embed.trainable_variables):
    np.testing.assert_array_equal(a, b.numpy())  # embed is not trained in "head"
  # head/bias is frozen in "head": as it was when "embed" ended.
  np.testing.assert_array_equal(trainer.model.head.bias.numpy(), _head_bias_at(model_dir, 3))
  phases = _scalars(os.path.join(model_dir, "train"), "phase")
  assert phases[1] == 0.0 and phases[5] == 1.0


def _head_bias_at(model_dir, step):
  reader = tf.train.load_checkpoint(os.path.join(model_dir, f"ckpt-{step}"))
  key = [k for k in reader.get_variable_to_shape_map()
         if k.startswith("model/head/bias/.ATTRIBUTES")][0]
  return reader.get_tensor(key)


def _scalars(directory, tag):
  out = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor))
  return out


def test_without_phases_every_model_phase_runs_num_steps(records):
  config = _config(records, "train_config { num_steps: 7 }")
  config.train_config.ClearField("phases")
  specs, total = train_phase_builder.build(config.train_config, ("a", "b"))
  assert [(s.name, s.num_steps) for s in specs] == [("a", 7), ("b", 7)] and total == 14
  specs, total = train_phase_builder.build(config.train_config, ("a", "b"), num_train_steps=3)
  assert [s.num_steps for s in specs] == [7, 7] and total == 3  # a cap over both phases
  specs, total = train_phase_builder.build(config.train_config, ("a",), num_train_steps=9)
  assert [s.num_steps for s in specs] == [9] and total == 9  # replaces a single phase's
  configured = _config(records)
  _, total = train_phase_builder.build(configured.train_config, ("embed", "head"),
                                       num_train_steps=150)
  assert total == 150  # with phases, --num_train_steps caps the total (100 + 100)


@pytest.mark.parametrize("phases, message", [
    ('phases { name: "nope" num_steps: 1 }', "'nope' is not a phase of this model"),
    ('phases { name: "embed" num_steps: 1 } phases { name: "embed" num_steps: 1 }',
     "listed twice"),
    ('phases { name: "embed" num_steps: 0 }', "num_steps: must be > 0"),
    ('phases { name: "embed" num_steps: 1 learning_rate_multipliers { regex: "x" '
     'multiplier: -1 } }', "multiplier: must be >= 0"),
])
def test_bad_phase_configs_fail_naming_the_field(records, phases, message):
  config = _config(records)
  config.train_config.ClearField("phases")
  config_util.merge_override(config, f"train_config {{ {phases} }}")
  with pytest.raises(ValueError, match=message):
    train_phase_builder.build(config.train_config, ("embed", "head"))


def test_a_phase_with_nothing_to_train_fails_clearly(records, tmp_path):
  config = _config(records, 'train_config { phases { name: "embed" num_steps: 1 '
                            'frozen_variables: "." } }')
  with pytest.raises(ValueError, match="no variable left to train"):
    train_lib.Trainer(config, str(tmp_path / "m"))


def test_fine_tune_checkpoint_initializes_a_new_run(records, tmp_path):
  source_dir = str(tmp_path / "source")
  source = train_lib.Trainer(_config(records, "train_config { steps_per_loop: 1 }"),
                             source_dir, num_train_steps=None)
  source.num_train_steps = 2
  source.train()
  trained = {v.name: v.numpy() for v in source.model.trainable_variables}
  config = _config(records, f'train_config {{ fine_tune_checkpoint: "{source_dir}" }}')
  target = train_lib.Trainer(config, str(tmp_path / "target"))
  assert target.restore() == tf.train.latest_checkpoint(source_dir)
  assert int(target.global_step.numpy()) == 0  # a new run: only the weights come along
  for v in target.model.trainable_variables:
    np.testing.assert_array_equal(v.numpy(), trained[v.name])
  bad = _config(records, f'train_config {{ fine_tune_checkpoint: "{source_dir}" '
                         'fine_tune_checkpoint_type: "backbone" }')
  with pytest.raises(ValueError, match="unknown fine_tune_checkpoint_type 'backbone'"):
    train_lib.Trainer(bad, str(tmp_path / "bad")).restore()
  missing = _config(records, f'train_config {{ fine_tune_checkpoint: "{tmp_path}/none" }}')
  with pytest.raises(FileNotFoundError, match="fine_tune_checkpoint"):
    train_lib.Trainer(missing, str(tmp_path / "missing")).restore()


# ----------------------------------------------------------------------------- faults
def _trained(records, model_dir, steps=4):
  trainer = train_lib.Trainer(_config(records, "train_config { steps_per_loop: 1 "
                                               "checkpoint_every_n_steps: 2 }"), model_dir)
  trainer.num_train_steps = steps
  trainer.train()
  return trainer


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(records, tmp_path):
  model_dir = str(tmp_path / "m")
  _trained(records, model_dir)
  data = glob.glob(os.path.join(model_dir, "ckpt-4.data-*"))
  assert data
  with open(data[0], "r+b") as f:
    f.truncate(max(os.path.getsize(data[0]) // 3, 1))
  os.makedirs(os.path.join(model_dir, "ckpt-6_temp", "part-0"))  # a killed save's leftovers
  again = train_lib.Trainer(_config(records), model_dir)
  restored = again.restore()
  assert restored.endswith("ckpt-2") and int(again.global_step.numpy()) == 2
  assert not os.path.exists(os.path.join(model_dir, "ckpt-6_temp"))


def test_corrupt_checkpoint_state_file_is_moved_aside(records, tmp_path):
  model_dir = str(tmp_path / "m")
  _trained(records, model_dir)
  with open(os.path.join(model_dir, "checkpoint"), "w") as f:
    f.write("model_checkpoint_path: \x00 garbage {{{")
  again = train_lib.Trainer(_config(records), model_dir)
  assert again.restore().endswith("ckpt-4") and int(again.global_step.numpy()) == 4
  assert glob.glob(os.path.join(model_dir, "checkpoint.corrupt-*"))


def test_a_second_trainer_on_a_live_model_dir_is_refused_and_a_stale_lock_taken_over(
    records, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tal_tf.training import checkpoint_util  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / "m")
  os.makedirs(model_dir)
  lock = os.path.join(model_dir, checkpoint_util.LOCK_NAME)
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    with open(lock, "w") as f:
      json.dump(dict(pid=live.pid, host=socket.gethostname()), f)
    trainer = train_lib.Trainer(_config(records), model_dir)
    trainer.num_train_steps = 1
    with pytest.raises(checkpoint_util.ModelDirInUseError, match=f"pid {live.pid}"):
      trainer.train()
  finally:
    live.kill()
    live.wait()
  # The holder is gone (as after SIGKILL): the lock is stale and training proceeds.
  assert trainer.train() == 1
  assert not os.path.exists(lock)  # released at the end


def test_deterministic_input_order_checkpoints_the_position_not_the_iterator(
    records, tmp_path):
  config = _config(records, 'train_config { input_order: "deterministic" }')
  config.train_config.phases[0].num_steps = 2
  config.train_config.phases[1].num_steps = 1
  trainer = train_lib.Trainer(config, str(tmp_path))
  assert trainer.is_chief and trainer.write_dir == str(tmp_path)
  assert trainer.train() == 3
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path)))
  keys = reader.get_variable_to_shape_map()
  assert not any(k.startswith("train_iterator") for k in keys)
  # Three steps of global batch 2.
  assert reader.get_tensor("input_position/.ATTRIBUTES/VARIABLE_VALUE") == 3 * 2


def test_unknown_input_order_or_strategy_fails_naming_the_field(records, tmp_path):
  with pytest.raises(ValueError, match="train_config.input_order: unknown 'random'"):
    train_lib.Trainer(_config(records, 'train_config { input_order: "random" }'),
                      str(tmp_path))
  with pytest.raises(ValueError, match="multi_worker_mirrored"):
    train_lib.build_strategy("parameter_server")


def _video_ids(dataset, batches=None):
  ids = set()
  for i, batch in enumerate(dataset):
    if batches is not None and i >= batches:
      break
    ids.update(v.decode() for v in batch[InputFields.video_id].numpy())
  return ids


def test_a_phase_with_its_own_input_reader_trains_and_prepares_on_that_data(
    records, tmp_path):
  """train_config.phases[i].input_reader: the phase's training batches and its
  begin_phase dataset_fn read it; the other phase keeps train_input_reader; both iterators
  are checkpointed and a resumed run continues."""
  first_file = sorted(glob.glob(records["train"]))[0]
  raw = next(tf.data.TFRecordDataset(first_file).as_numpy_iterator())
  only = tf.train.SequenceExample.FromString(raw).context.feature[
      "video/id"].bytes_list.value[0].decode()
  one = str(tmp_path / "one.tfrecord")
  with tf.io.TFRecordWriter(one) as writer:
    writer.write(raw)
  config = _config(records, f"""train_config {{
      phases {{ name: "embed" num_steps: 2 }}
      phases {{ name: "head" num_steps: 2
        input_reader {{ input_path: "{one}" label_map_path: "{records['label_map']}"
          streams {{ name: "rgb" dim: 6 }} streams {{ name: "flow" dim: 4 }}
          batch_size: 1 max_steps: 64 }} }}
      checkpoint_every_n_steps: 100 steps_per_loop: 1 input_order: "iterator" }}""")
  model_dir = str(tmp_path / "m")
  trainer = train_lib.Trainer(config, model_dir)
  all_ids = _video_ids(trainer.phase_dataset(False, False))
  assert len(all_ids) == 3 and only in all_ids
  prepared = {}
  original = trainer.model.begin_phase

  def spy(phase, context):
    prepared[phase] = _video_ids(context.dataset_fn(False, False))
    return original(phase, context)

  trainer.model.begin_phase = spy
  head, embed = trainer.phases[1], trainer.phases[0]
  assert _video_ids(trainer.train_iterator(head), 3) == {only}
  assert len(_video_ids(trainer.train_iterator(embed), 6)) > 1
  trainer.num_train_steps = 3
  assert trainer.train() == 3
  assert prepared == {"embed": all_ids, "head": {only}}
  keys = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir)) \
      .get_variable_to_shape_map()
  assert any(k.startswith("train_iterator_head/") for k in keys)
  assert any(k.startswith("train_iterator/") for k in keys)
  resumed = train_lib.Trainer(config, model_dir)
  assert resumed.train() == 4
  assert int(resumed.phases[1].optimizer.iterations.numpy()) == 2
