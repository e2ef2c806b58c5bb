"""Modes of train_main.py: train, eval, train_and_eval, continuous_eval."""

import os

from absl import logging
import tensorflow as tf

from tal_tf.builders import model_builder
from tal_tf.training import checkpoint_util
from tal_tf.training import eval_lib
from tal_tf.training import train_lib
from tal_tf.utils import config_util

MODES = ("train", "eval", "train_and_eval", "continuous_eval")


def _eval_dir(model_dir):
  return os.path.join(model_dir, train_lib.EVAL_SUBDIR)


def evaluate_checkpoint(config, model_dir, checkpoint_path=None, model=None):
  """Restores a checkpoint into a (new) model and evaluates it; returns (metrics, step)."""
  if model is None:
    model = model_builder.build(config.model)
  path = checkpoint_path or tf.train.latest_checkpoint(model_dir)
  if not path:
    raise FileNotFoundError(f"no checkpoint found in {model_dir}; train first or pass "
                            "--checkpoint")
  if not model.variables:
    # Restoring into a model without variables would defer, and a checkpoint of another
    # model would then silently leave every weight at its initial value.
    from tal_tf.export import exporter_lib  # pylint: disable=g-import-not-at-top
    model.create_variables(exporter_lib.stream_dims_from_config(config, model))
  # The optimizer and input position are in the checkpoint too; evaluation needs neither.
  checkpoint_util.restore_checked(tf.train.Checkpoint(model=model), path,
                                  what="--checkpoint" if checkpoint_path else "checkpoint")
  step_value = _step_of(path)
  metrics, _ = eval_lib.evaluate_model(model, config, step_value, _eval_dir(model_dir))
  train_lib.write_metrics_json(metrics, _eval_dir(model_dir), step_value)
  train_lib.write_metrics_json(metrics, model_dir, step_value)
  return metrics, step_value


def _step_of(checkpoint_path):
  reader = tf.train.load_checkpoint(checkpoint_path)
  for key in reader.get_variable_to_shape_map():
    if key.startswith("global_step/"):
      return int(reader.get_tensor(key))
  try:
    return int(checkpoint_path.rsplit("-", 1)[-1])
  except ValueError:
    return 0


def _check_eval_data(config, model):
  """The eval reader's label map and records against the config, before evaluation."""
  if config.HasField("eval_input_reader"):
    config_util.check_config_against_data(config, model.num_classes,
                                          reader_names=("eval_input_reader",))


def run(config, model_dir, mode, num_train_steps=None, checkpoint=None):
  """Runs `mode` for `config` in `model_dir`; returns the last metrics dict (or None)."""
  if mode not in MODES:
    raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
  if mode in ("train", "train_and_eval"):
    trainer = train_lib.Trainer(config, model_dir, num_train_steps)  # Checks the train data.
    if mode == "train_and_eval":
      _check_eval_data(config, trainer.model)
    evaluate_fn = None
    results = {}
    if mode == "train_and_eval":
      def evaluate_fn(step):
        metrics, _ = eval_lib.evaluate_model(trainer.model, config, step,
                                             _eval_dir(model_dir))
        train_lib.write_metrics_json(metrics, _eval_dir(model_dir), step)
        train_lib.write_metrics_json(metrics, model_dir, step)
        results["metrics"] = metrics
    step = trainer.train(evaluate_fn)
    # Multi-worker: the chief evaluates; the other workers are done.
    if evaluate_fn is not None and trainer.is_chief:
      evaluate_fn(step)
      return results["metrics"]
    return None
  _check_eval_data(config, model_builder.build(config.model))
  if mode == "eval":
    metrics, _ = evaluate_checkpoint(config, model_dir, checkpoint)
    return metrics
  # continuous_eval: evaluate each new checkpoint until training's last step is evaluated.
  target = int(num_train_steps or config.train_config.num_steps)
  metrics = None
  model = model_builder.build(config.model)
  for path in tf.train.checkpoints_iterator(
      model_dir, min_interval_secs=config.eval_config.eval_interval_secs or 60,
      timeout=config.eval_config.eval_timeout_secs or None):
    try:
      metrics, step = evaluate_checkpoint(config, model_dir, path, model=model)
    except (tf.errors.NotFoundError, FileNotFoundError) as e:
      # The trainer's max_to_keep may delete a checkpoint before we read it.
      logging.warning("checkpoint %s vanished before evaluation (%s); waiting for the next",
                      path, e)
      continue
    if step >= target:
      break
  return metrics
