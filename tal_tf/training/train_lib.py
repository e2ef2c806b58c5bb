"""The Keras (tf_keras) training loop of tal_tf: train, evaluate, train_and_eval, continuous_eval.

One loop for every meta-architecture: the model's `predict` / `loss` run under a
`tf.distribute` strategy inside a `tf.function` that executes `steps_per_loop` steps per
call. Checkpoints hold the model, the optimizer (its step counter is the global step) and,
by default, the input iterator's position; a run restarted in the same model_dir resumes
from the newest checkpoint, so a killed run loses at most one checkpoint interval.
"""

import json
import math
import os
import time

from absl import logging
import tensorflow as tf
import tf_keras

from tal_tf.builders import input_reader_builder
from tal_tf.builders import model_builder
from tal_tf.builders import optimizer_builder
from tal_tf.core.standard_fields import InputFields
from tal_tf.utils import config_util

TRAIN_SUBDIR = "train"
EVAL_SUBDIR = "eval"
METRICS_FILE = "metrics.json"


def build_strategy(name):
  """Distribution strategy by name: default, mirrored or one_device."""
  name = (name or "default").lower()
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    # All GPUs if there are any, else every logical CPU device (one replica each).
    if tf.config.list_logical_devices("GPU"):
      return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus)
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy("/cpu:0")
  raise ValueError(f"train_config.distribution_strategy: unknown {name!r}; expected "
                   "default, mirrored or one_device")


def model_num_classes(config):
  """Number of classes of the configured meta-architecture."""
  arch = config.model.WhichOneof("model")
  return getattr(config.model, arch).num_classes


def groundtruth_from_batch(batch):
  """The ground-truth part of an input batch (what `model.loss` receives)."""
  return {k: batch[k] for k in (InputFields.segments, InputFields.labels,
                                InputFields.num_segments, InputFields.video_labels)
          if k in batch}


class _Progress:
  """Steps/s and ETA for the log."""

  def __init__(self, start_step, target_step):
    self._t0 = time.time()
    self._s0 = start_step
    self._target = target_step
    self._last_t = self._t0
    self._last_s = start_step

  def update(self, step):
    now = time.time()
    rate = (step - self._last_s) / max(now - self._last_t, 1e-9)
    overall = (step - self._s0) / max(now - self._t0, 1e-9)
    self._last_t, self._last_s = now, step
    remaining = max(self._target - step, 0) / max(overall, 1e-9)
    return rate, remaining


def _format_eta(seconds):
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h:d}:{m:02d}:{s:02d}"


class Trainer:
  """Builds model, optimizer, data and checkpoints for one pipeline config + model_dir."""

  def __init__(self, config, model_dir, num_train_steps=None):
    self.config = config
    self.model_dir = model_dir
    train_config = config.train_config
    self.num_train_steps = int(num_train_steps or train_config.num_steps)
    if self.num_train_steps <= 0:
      raise ValueError(f"num_train_steps must be > 0, got {self.num_train_steps}")
    tf.io.gfile.makedirs(model_dir)
    self.strategy = build_strategy(train_config.distribution_strategy)
    if train_config.seed:
      # Seeds Python, numpy and TF so weight initialization (and sampling) repeat.
      tf_keras.utils.set_random_seed(train_config.seed)
    with self.strategy.scope():
      self.model = model_builder.build(config.model)
      self.optimizer, self.learning_rate = optimizer_builder.build(train_config.optimizer)
      # Creates the step counter now so checkpoints restore it before the first step.
      self.global_step = self.optimizer.iterations
      self._create_variables()
    self._train_iterator = None
    self._train_fn = None
    self._checkpoint = None
    self._manager = None

  def _create_variables(self):
    """Creates model weights and optimizer slots up front, so a restore is immediate and
    complete (weights, Adam moments, step) instead of deferred to the first step."""
    reader = self.config.train_input_reader
    dims = config_util.stream_dims(reader) if reader.streams else {}
    if not dims:
      return  # No declared streams (e.g. a model-only config): variables come on first use.
    features = {name: tf.zeros([1, 1, dim]) for name, dim in dims.items()}
    self.model.predict(features, tf.ones([1], tf.int32), training=False)
    self.optimizer.build(self.model.trainable_variables)

  # ---------------------------------------------------------------- data + checkpoints
  def _dataset_fn(self, input_context=None):
    seed = self.config.train_config.seed or None
    return input_reader_builder.build(
        self.config.train_input_reader, num_classes=model_num_classes(self.config),
        is_training=True, input_context=input_context, seed=seed)

  def train_iterator(self):
    """The (distributed) training iterator, created once."""
    if self._train_iterator is None:
      dataset = self.strategy.distribute_datasets_from_function(self._dataset_fn)
      self._train_iterator = iter(dataset)
    return self._train_iterator

  def checkpoint_manager(self, with_input=True):
    """CheckpointManager over model, optimizer and (optionally) the input position."""
    if self._manager is None:
      items = dict(model=self.model, optimizer=self.optimizer)
      if with_input and self.config.train_config.checkpoint_input_position:
        iterator = self.train_iterator()
        if isinstance(iterator, tf.__internal__.tracking.Trackable):
          items["train_iterator"] = iterator
        else:
          # Multi-replica distributed iterators cannot be saved in TF 2.17: a resumed run
          # keeps model and optimizer state but restarts the data order.
          logging.warning("the input position is not checkpointed under %s (%d replicas); a "
                          "resumed run restarts the data order",
                          type(self.strategy).__name__, self.strategy.num_replicas_in_sync)
      self._checkpoint = tf.train.Checkpoint(**items)
      self._manager = tf.train.CheckpointManager(
          self._checkpoint, self.model_dir,
          max_to_keep=self.config.train_config.max_checkpoints_to_keep,
          step_counter=self.global_step)
    return self._manager

  def restore(self):
    """Restores the newest checkpoint in model_dir, if any; returns its path or None."""
    manager = self.checkpoint_manager()
    path = manager.latest_checkpoint
    if path:
      # expect_partial: optimizer slots restore lazily on the first step (and never if
      # there is nothing left to train); that is not an error worth a warning.
      self._checkpoint.restore(path).expect_partial()
      logging.info("restored %s (step %d)", path, int(self.global_step.numpy()))
    return path

  # ---------------------------------------------------------------- the step
  def _replica_step(self, batch):
    model = self.model
    with tf.GradientTape() as tape:
      predictions = model.predict(batch[InputFields.features], batch[InputFields.num_steps],
                                  training=True)
      losses = model.loss(predictions, groundtruth_from_batch(batch))
      reg_losses = model.regularization_losses()
      regularization = tf.add_n(reg_losses) if reg_losses else 0.0
      total = losses["total_loss"] + regularization
      # Gradients are summed across replicas; scale so the update is the mean.
      scaled = total / self.strategy.num_replicas_in_sync
    variables = model.trainable_variables
    grads = tape.gradient(scaled, variables)
    self.optimizer.apply_gradients(zip(grads, variables))
    losses = dict(losses)
    losses["total_loss"] = total
    return losses

  def _build_train_fn(self):
    strategy = self.strategy

    @tf.function
    def train_loop(iterator, num_steps):
      sums = None
      for _ in tf.range(num_steps):
        per_replica = strategy.run(self._replica_step, args=(next(iterator),))
        step_losses = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                       for k, v in per_replica.items()}
        if sums is None:
          sums = step_losses
        else:
          sums = {k: sums[k] + step_losses[k] for k in sums}
      return {k: v / tf.cast(num_steps, tf.float32) for k, v in sums.items()}

    return train_loop

  # ---------------------------------------------------------------- the loop
  def train(self, evaluate_fn=None):
    """Trains to num_train_steps, checkpointing, logging and summarizing as configured.

    `evaluate_fn(step)` (optional) runs every `eval_every_n_steps` and at the end.
    """
    train_config = self.config.train_config
    config_util.save_pipeline_config(self.config, self.model_dir)
    manager = self.checkpoint_manager()
    self.restore()
    iterator = self.train_iterator()
    if self._train_fn is None:
      self._train_fn = self._build_train_fn()
    writer = tf.summary.create_file_writer(os.path.join(self.model_dir, TRAIN_SUBDIR))
    step = int(self.global_step.numpy())
    target = self.num_train_steps
    if step >= target:
      logging.info("model_dir %s is already at step %d >= %d; nothing to train",
                   self.model_dir, step, target)
    progress = _Progress(step, target)
    intervals = [train_config.steps_per_loop, train_config.checkpoint_every_n_steps,
                 train_config.summary_every_n_steps, train_config.log_every_n_steps]
    eval_every = train_config.eval_every_n_steps if evaluate_fn else 0
    if eval_every:
      intervals.append(eval_every)
    intervals = [i for i in intervals if i and i > 0]
    while step < target:
      # Run up to the next multiple of any interval so checkpoints, summaries and logs
      # land exactly on their steps.
      next_stop = min([target] + [(step // i + 1) * i for i in intervals])
      n = next_stop - step
      losses = self._train_fn(iterator, tf.constant(n, tf.int32))
      losses = {k: float(v.numpy()) for k, v in losses.items()}
      step = int(self.global_step.numpy())
      for name, value in losses.items():
        if not math.isfinite(value):
          raise FloatingPointError(
              f"{name} is {value} at step {step}; the last checkpoint in {self.model_dir} "
              "is intact. Lower the learning rate or check the input features for NaN/Inf.")
      rate, remaining = progress.update(step)
      if _crossed(step, n, train_config.summary_every_n_steps) or step == target:
        with writer.as_default(step=step):
          for name, value in losses.items():
            tf.summary.scalar(f"losses/{name}", value)
          tf.summary.scalar("learning_rate", float(self.learning_rate(step)))
          tf.summary.scalar("steps_per_second", rate)
        writer.flush()
      if _crossed(step, n, train_config.log_every_n_steps) or step == target:
        logging.info("step %d/%d | %s | %.2f steps/s | ETA %s", step, target,
                     " ".join(f"{k}={v:.4f}" for k, v in sorted(losses.items())),
                     rate, _format_eta(remaining))
      saved = False
      if _crossed(step, n, train_config.checkpoint_every_n_steps):
        manager.save(checkpoint_number=step, check_interval=False)
        saved = True
      if eval_every and _crossed(step, n, eval_every) and step < target:
        if not saved:
          manager.save(checkpoint_number=step, check_interval=False)
        evaluate_fn(step)
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
      manager.save(checkpoint_number=step, check_interval=False)
    writer.close()
    return step


def _crossed(step, n, interval):
  """True if an interval boundary lies in (step - n, step]."""
  if not interval or interval <= 0:
    return False
  return step // interval > (step - n) // interval


def write_metrics_json(metrics, directory, step):
  """Writes metrics to `directory`/metrics.json and metrics_step_<step>.json."""
  from tal_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  tf.io.gfile.makedirs(directory)
  payload = evaluator.to_json(metrics)
  payload["global_step"] = int(step)
  text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
  for name in (METRICS_FILE, f"metrics_step_{int(step)}.json"):
    with tf.io.gfile.GFile(os.path.join(directory, name), "w") as f:
      f.write(text)
  return os.path.join(directory, METRICS_FILE)
