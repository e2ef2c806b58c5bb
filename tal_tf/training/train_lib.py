"""The Keras (tf_keras) training loop of tal_tf: train, evaluate, train_and_eval, continuous_eval.

One loop for every meta-architecture: the model's `predict` / `loss` run under a
`tf.distribute` strategy inside a `tf.function` that executes `steps_per_loop` steps per
call. Checkpoints hold the model, the optimizer (its step counter is the global step) and,
by default, the input position (the iterator's state, or under several replicas the number
of records consumed in the resumable order of `tal_tf.data.deterministic_order`); a run
restarted in the same model_dir resumes from the newest checkpoint, so a killed run loses at
most one checkpoint interval.

Multi-worker (`distribution_strategy: "multi_worker_mirrored"`, cluster from TF_CONFIG):
every worker runs this same loop in lockstep; the chief alone holds the model_dir lock and
writes checkpoints, summaries, the as-run config and evaluation. Saving is collective, so
the other workers save too, each into its own `workertemp_<task id>` folder of model_dir,
removed after every save and at the end (TensorFlow's documented pattern). All workers
restore from the chief's checkpoints, so model_dir must be on storage they share.
"""

import math
import os
import re
import time

from absl import logging
import tensorflow as tf
import tf_keras

from tal_tf.builders import input_reader_builder
from tal_tf.builders import model_builder
from tal_tf.builders import optimizer_builder
from tal_tf.builders import train_phase_builder
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch
from tal_tf.training import checkpoint_util
from tal_tf.utils import config_util
from tal_tf.utils import feature_rates

TRAIN_SUBDIR = "train"
EVAL_SUBDIR = "eval"
METRICS_FILE = "metrics.json"


STRATEGIES = ("default", "mirrored", "one_device", "multi_worker_mirrored")
INPUT_ORDERS = ("auto", "iterator", "deterministic")
WORKER_TEMP_PREFIX = "workertemp_"


def build_strategy(name):
  """Distribution strategy by name (one of STRATEGIES)."""
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
  if name == "multi_worker_mirrored":
    # The cluster and this process's task come from TF_CONFIG (none: a one-worker cluster).
    # Must be created before any other TensorFlow op runs in the process.
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"train_config.distribution_strategy: unknown {name!r}; expected one of "
                   f"{', '.join(STRATEGIES)}")


def is_multi_worker(strategy):
  """True for strategies that span processes (each has its own task in TF_CONFIG)."""
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_write_dir(strategy, model_dir):
  """Where this process writes checkpoints: model_dir on the chief, else a folder of its
  own inside it (deleted after each save)."""
  if strategy.extended.should_checkpoint:
    return model_dir
  return os.path.join(model_dir, f"{WORKER_TEMP_PREFIX}{strategy.cluster_resolver.task_id}")


def groundtruth_from_batch(batch, fields):
  """The ground-truth part of an input batch that `model.loss` receives (the model's
  declared input fields)."""
  return {k: batch[k] for k in fields if k in batch}


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


class _Phase:
  """One training phase made concrete: its step range, optimizer and variables."""

  def __init__(self, spec, index, start_step, model, default_reader):
    self.spec = spec
    self.name = spec.name
    # The phase's own data (train_config.phases[i].input_reader) or the train reader.
    self.own_reader = spec.input_reader is not None
    self.reader = spec.input_reader if self.own_reader else default_reader
    self.index = index
    self.start = int(start_step)
    self.end = self.start + int(spec.num_steps)
    self.optimizer, self.learning_rate = optimizer_builder.build(spec.optimizer_config)
    candidates = model.phase_variables(spec.name)
    self.variables = meta_arch.select_variables(
        candidates, include=spec.trainable_patterns, exclude=spec.frozen_patterns)
    if not self.variables:
      raise ValueError(
          f"train_config phase {spec.name!r}: no variable left to train (the model offers "
          f"{len(candidates)}; trainable_variables={list(spec.trainable_patterns)}, "
          f"frozen_variables={list(spec.frozen_patterns)})")
    self.multipliers = []
    for v in self.variables:
      factor = 1.0
      for pattern, multiplier in spec.lr_multipliers:
        if re.search(pattern, v.name):
          factor = multiplier
          break
      self.multipliers.append(factor)
    self.weight_decay = float(spec.l2_weight_decay)

  def transform_gradients(self, grads):
    """Caffe-style L2 on kernels, then the per-variable learning-rate multipliers."""
    out = []
    for g, v, m in zip(grads, self.variables, self.multipliers):
      if g is None:
        out.append(None)
        continue
      if self.weight_decay and v.shape.rank is not None and v.shape.rank >= 2:
        g = g + self.weight_decay * v
      if m != 1.0:
        g = g * m
      out.append(g)
    return out

  def local_step(self, global_step):
    return int(global_step) - self.start


class Trainer:
  """Builds model, phases, optimizers, data and checkpoints for one config + model_dir.

  The trainer knows nothing of what a model's phases mean: it runs them in order, each with
  its own optimizer over the variables the model (and the phase's config) selects, calls
  `model.begin_phase` when a phase starts or a run resumes inside it, and minimizes
  `model.loss(..., phase)['total_loss']`. The global step counts steps over all phases.
  """

  def __init__(self, config, model_dir, num_train_steps=None):
    self.config = config
    self.model_dir = model_dir
    train_config = config.train_config
    # Configs built in code skip load_pipeline_config; their numbers are checked here.
    config_util.check_numeric_fields(config)
    tf.io.gfile.makedirs(model_dir)
    self.strategy = build_strategy(train_config.distribution_strategy)
    # Only the chief writes to model_dir (always true for one-process strategies).
    self.is_chief = bool(self.strategy.extended.should_checkpoint)
    self.write_dir = worker_write_dir(self.strategy, model_dir)
    order = (train_config.input_order or "auto").lower()
    if order not in INPUT_ORDERS:
      raise ValueError(f"train_config.input_order: unknown {order!r}; expected one of "
                       f"{', '.join(INPUT_ORDERS)}")
    several = self.strategy.num_replicas_in_sync > 1 or is_multi_worker(self.strategy)
    # The iterator of several replicas cannot be checkpointed (TF 2.17): "auto" then uses the
    # order that needs only a position to resume.
    self.resumable_order = order == "deterministic" or (order == "auto" and several)
    if train_config.seed:
      # Seeds Python, numpy and TF so weight initialization (and sampling) repeat.
      tf_keras.utils.set_random_seed(train_config.seed)
    with self.strategy.scope():
      self.model = model_builder.build(config.model)
      config_util.check_model_streams(config, self.model.stream_names,
                                      phase_streams=config_util.phase_streams(self.model))
      # Before any graph: class count vs label map, streams and dims vs the records.
      config_util.check_config_against_data(
          config, self.model.num_classes,
          reader_names=[name for name, _ in config_util.input_readers(config)
                        if name != "eval_input_reader"])
      specs, self.num_train_steps = train_phase_builder.build(
          train_config, self.model.training_phases, num_train_steps)
      self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
      # Training records consumed by all replicas together (the resumable order's position).
      self.input_position = tf.Variable(0, dtype=tf.int64, trainable=False,
                                        name="input_position")
      self._create_variables()
      self.phases = []
      start = 0
      for i, spec in enumerate(specs):
        phase = _Phase(spec, i, start, self.model, config.train_input_reader)
        phase.optimizer.build(phase.variables)
        self.phases.append(phase)
        start = phase.end
    self._train_iterators = {}
    self._train_fns = {}
    self._checkpoint = None
    self._manager = None
    self.resumed_checkpoint = None

  @property
  def optimizer(self):
    """The first phase's optimizer (the only one of a single-phase model)."""
    return self.phases[0].optimizer

  @property
  def learning_rate(self):
    return self.phases[0].learning_rate

  def phase_at(self, step):
    """The phase that trains step `step` + 1 (the last phase once training is done)."""
    for phase in self.phases:
      if step < phase.end:
        return phase
    return self.phases[-1]

  def _create_variables(self):
    """Creates model weights up front, so a restore is immediate and complete."""
    dims = self.stream_dims()
    if dims:
      self.model.create_variables(dims)

  def stream_dims(self):
    """{stream: spec} the model reads, from the training input readers (the train reader's,
    then those only the phases' own readers declare, e.g. frames of trimmed clips)."""
    dims = {}
    for name, reader in config_util.input_readers(self.config):
      if name != "eval_input_reader":
        for stream, spec in config_util.stream_dims(reader).items():
          dims.setdefault(stream, spec)
    missing = [s for s in self.model.stream_names if s not in dims]
    if dims and missing:
      raise ValueError(f"the training input readers lack the model's streams {missing} "
                       f"(declared: {sorted(dims)})")
    return {s: dims[s] for s in self.model.stream_names if s in dims}

  # ---------------------------------------------------------------- data + checkpoints
  def _dataset_fn(self, input_context=None, phase=None):
    """Training batches of `phase`'s reader (default: the first phase's)."""
    phase = phase or self.phases[0]
    seed = self.config.train_config.seed or None
    start = None
    if self.resumable_order and phase.own_reader:
      # A phase's own data is read by that phase alone: its position follows its steps.
      done = max(int(self.global_step.numpy()) - phase.start, 0)
      start = done * int(phase.reader.batch_size)
    elif self.resumable_order:
      start = int(self.input_position.numpy())
    return input_reader_builder.build(
        phase.reader, num_classes=self.model.num_classes,
        is_training=True, input_context=input_context, seed=seed,
        fields=self.model.input_fields, start_position=start, log_fn=logging.info)

  def phase_dataset(self, is_training, repeat, phase=None):
    """Padded batches of `phase`'s training records (default: the train reader's; for
    `begin_phase`): shuffled + cropped when is_training, whole videos in file order
    otherwise; read once unless `repeat`."""
    source = phase.reader if phase is not None else self.config.train_input_reader
    reader = type(source)()
    reader.CopyFrom(source)
    reader.repeat = bool(repeat)
    if not is_training:
      reader.shuffle = False
    return input_reader_builder.build(
        reader, num_classes=self.model.num_classes, is_training=is_training,
        seed=self.config.train_config.seed or None,
        batch_size=None if is_training else 1)

  @staticmethod
  def _iterator_key(phase):
    """Phases reading the train reader share one iterator; a phase's own reader has its
    own (checkpointed as train_iterator[_<phase>])."""
    return f"train_iterator_{phase.name}" if phase.own_reader else "train_iterator"

  def train_iterator(self, phase=None):
    """The (distributed) training iterator of `phase` (default: the first), created once
    (after a restore: the resumable order starts at the restored position)."""
    phase = phase or self.phases[0]
    key = self._iterator_key(phase)
    if key not in self._train_iterators:
      dataset = self.strategy.distribute_datasets_from_function(
          lambda input_context: self._dataset_fn(input_context, phase))
      self._train_iterators[key] = iter(dataset)
    return self._train_iterators[key]

  def checkpoint_manager(self, with_input=True):
    """CheckpointManager over model, global step, each phase's optimizer and (optionally)
    the input position; it writes to this worker's write_dir."""
    if self._manager is None:
      items = dict(model=self.model, global_step=self.global_step)
      for phase in self.phases:
        items[f"optimizer_{phase.name}"] = phase.optimizer
      if (with_input and self.config.train_config.checkpoint_input_position and
          self.resumable_order):
        items["input_position"] = self.input_position
      elif with_input and self.config.train_config.checkpoint_input_position:
        iterators = {self._iterator_key(p): self.train_iterator(p) for p in self.phases}
        if all(isinstance(i, tf.__internal__.tracking.Trackable) for i in iterators.values()):
          items.update(iterators)
        else:
          # Multi-replica distributed iterators cannot be saved in TF 2.17: a resumed run
          # keeps model and optimizer state but restarts the data order.
          logging.warning("the input position is not checkpointed under %s (%d replicas) "
                          "with input_order 'iterator'; a resumed run restarts the data "
                          "order ('auto' or 'deterministic' would continue it)",
                          type(self.strategy).__name__, self.strategy.num_replicas_in_sync)
      self._checkpoint = tf.train.Checkpoint(**items)
      self._manager = checkpoint_util.open_manager(
          self._checkpoint, self.write_dir,
          max_to_keep=self.config.train_config.max_checkpoints_to_keep,
          step_counter=self.global_step)
    return self._manager

  def restore(self):
    """Restores the newest checkpoint in model_dir, else the fine-tune checkpoint (if any);
    returns the path restored or None."""
    manager = self.checkpoint_manager()
    if self.is_chief:
      checkpoint_util.remove_stale_temp_dirs(self.model_dir)
    # expect_partial: the input position may be absent (e.g. written under another
    # strategy); everything else was created up front and restores immediately. A damaged
    # newest checkpoint is named and the previous intact one is used. Every worker restores
    # the chief's checkpoints (model_dir).
    path = checkpoint_util.restore_newest_intact(
        self._checkpoint, self.model_dir,
        manager.latest_checkpoint if self.is_chief else None)
    self.resumed_checkpoint = path
    if path:
      logging.info("restored %s (step %d)", path, int(self.global_step.numpy()))
      return path
    return self.restore_fine_tune_checkpoint()

  def restore_fine_tune_checkpoint(self):
    """Initializes the model from train_config.fine_tune_checkpoint through the model's
    restore map; returns the path or None when none is configured."""
    train_config = self.config.train_config
    source = train_config.fine_tune_checkpoint
    if not source:
      return None
    path = tf.train.latest_checkpoint(source) if tf.io.gfile.isdir(source) else source
    if not path or not tf.io.gfile.glob(path + ".index"):
      raise FileNotFoundError(f"train_config.fine_tune_checkpoint: no checkpoint at {source!r}")
    restore_map = self.model.restore_map(train_config.fine_tune_checkpoint_type)
    checkpoint_util.restore_checked(
        tf.train.Checkpoint(**restore_map), path, what="train_config.fine_tune_checkpoint",
        hint=f" (the model's {train_config.fine_tune_checkpoint_type!r} restore map)")
    logging.info("initialized from fine-tune checkpoint %s (%s)", path,
                 train_config.fine_tune_checkpoint_type)
    return path

  # ---------------------------------------------------------------- the step
  def _replica_step(self, batch, phase):
    model = self.model
    batch = model.preprocess(batch)
    with tf.GradientTape() as tape:
      predictions = model.predict(batch[InputFields.features], batch[InputFields.num_steps],
                                  training=True, phase=phase.name)
      losses = model.loss(predictions, groundtruth_from_batch(batch, model.input_fields),
                          phase=phase.name)
      reg_losses = model.regularization_losses()
      regularization = tf.add_n(reg_losses) if reg_losses else 0.0
      total = losses["total_loss"] + regularization
      # Gradients are summed across replicas; scale so the update is the mean.
      scaled = total / self.strategy.num_replicas_in_sync
    grads = tape.gradient(scaled, phase.variables)
    grads = phase.transform_gradients(grads)
    phase.optimizer.apply_gradients(
        [(g, v) for g, v in zip(grads, phase.variables) if g is not None])
    losses = dict(losses)
    losses["total_loss"] = total
    return losses

  def _train_fn(self, phase):
    if phase.name in self._train_fns:
      return self._train_fns[phase.name]
    strategy = self.strategy
    # input_position counts the train reader's records; a phase's own reader resumes from
    # its phase-local step instead.
    global_batch = tf.constant(0 if phase.own_reader else phase.reader.batch_size, tf.int64)

    # A function of its own, traced once and called twice by train_loop's graph (the first
    # step and the loop body): tracing the model, its gradients and the optimizer update is most
    # of the time a short run takes, and inlined twice it would be traced twice.
    @tf.function
    def one_step(iterator):
      per_replica = strategy.run(self._replica_step, args=(next(iterator), phase))
      self.global_step.assign_add(1)
      self.input_position.assign_add(global_batch)
      return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
              for k, v in per_replica.items()}

    @tf.function
    def train_loop(iterator, num_steps):
      # The first step runs before the loop so the loss sums start as tensors (a None
      # loop variable is not allowed in a graph loop). num_steps >= 1.
      sums = one_step(iterator)
      for _ in tf.range(num_steps - 1):
        step_losses = one_step(iterator)
        sums = {k: sums[k] + step_losses[k] for k in sums}
      return {k: v / tf.cast(num_steps, tf.float32) for k, v in sums.items()}

    self._train_fns[phase.name] = train_loop
    return train_loop

  def _begin_phase(self, phase, step):
    context = meta_arch.TrainingContext(
        dataset_fn=lambda is_training, repeat: self.phase_dataset(is_training, repeat, phase),
        cache_dir=os.path.join(self.model_dir, "phase_cache", phase.name),
        phase_start_step=phase.start, fresh=(step == phase.start), strategy=self.strategy,
        stream_dims=self.stream_dims())
    logging.info("phase %d/%d %r: steps %d-%d (%s)", phase.index + 1, len(self.phases),
                 phase.name, phase.start + 1, phase.end,
                 "starting" if context.fresh else f"resuming at step {step}")
    self.model.begin_phase(phase.name, context)

  # ---------------------------------------------------------------- the loop
  def train(self, evaluate_fn=None, after_loop_fn=None):
    """Trains to num_train_steps through the phases, checkpointing, logging and
    summarizing as configured.

    `evaluate_fn(step)` (optional) runs on the chief every `eval_every_n_steps` and at the
    end. `after_loop_fn(step)` (optional) runs on every worker after each tf.function loop
    (every `steps_per_loop` steps or fewer) with the global step reached.
    """
    if not self.is_chief:
      try:
        return self._train(evaluate_fn, after_loop_fn)
      finally:
        self._remove_write_dir()
    with checkpoint_util.ModelDirLock(self.model_dir):
      return self._train(evaluate_fn, after_loop_fn)

  def _remove_write_dir(self):
    """Deletes a non-chief worker's checkpoint folder."""
    if not self.is_chief and tf.io.gfile.exists(self.write_dir):
      tf.io.gfile.rmtree(self.write_dir)

  def _save(self, step):
    """Saves a checkpoint on every worker (saving is collective); a non-chief's copy is
    deleted at once."""
    if not self.is_chief:
      tf.io.gfile.makedirs(self.write_dir)
    # A failed write (disk full) names the intact previous checkpoint.
    checkpoint_util.save_or_explain(self.checkpoint_manager(), step)
    self._remove_write_dir()

  def _train(self, evaluate_fn, after_loop_fn):
    train_config = self.config.train_config
    saved_config = os.path.join(self.model_dir, config_util.PIPELINE_CONFIG_NAME)
    if self.is_chief and not tf.io.gfile.exists(saved_config):
      config_util.save_pipeline_config(self.config, self.model_dir)  # A new run: at once.
    if not self.is_chief:
      self._remove_write_dir()  # Left by a killed run.
    self.checkpoint_manager()
    self.restore()
    if self.is_chief:
      # A resumed run replaces the saved config only after the restore: a config whose model
      # does not match the checkpoints stops there and must not replace their own config.
      config_util.save_pipeline_config(self.config, self.model_dir)
      # The rates the weights learn at, for the exporter and the inference check (a resumed
      # run keeps or widens the record: feature_rates' module doc).
      reader = self.config.train_input_reader
      if self.config.HasField("train_input_reader") and reader.input_path:
        feature_rates.record_training_rates(
            self.model_dir, reader.input_path, step=int(self.global_step.numpy()),
            resumed=bool(self.resumed_checkpoint), skip_corrupt=reader.skip_corrupt_records)
    if self.is_chief:
      writer = tf.summary.create_file_writer(os.path.join(self.model_dir, TRAIN_SUBDIR))
    else:
      writer = tf.summary.create_noop_writer()
    step = int(self.global_step.numpy())
    # The same on every worker (they restore the same checkpoint), so all save together.
    last_saved = step if self.resumed_checkpoint else None
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
    current = None
    while step < target:
      phase = self.phase_at(step)
      if phase is not current:
        self._begin_phase(phase, step)
        current = phase
      # Run up to the next multiple of any interval (or the phase's end) so checkpoints,
      # summaries and logs land exactly on their steps.
      next_stop = min([target, phase.end] + [(step // i + 1) * i for i in intervals])
      n = next_stop - step
      losses = self._train_fn(phase)(self.train_iterator(phase), tf.constant(n, tf.int32))
      losses = {k: float(v.numpy()) for k, v in losses.items()}
      step = int(self.global_step.numpy())
      if after_loop_fn is not None:
        after_loop_fn(step)
      for name, value in losses.items():
        if not math.isfinite(value):
          raise FloatingPointError(
              f"{name} is {value} at step {step} (phase {phase.name!r}); the last checkpoint "
              f"in {self.model_dir} is intact. Lower the learning rate or check the input "
              "features for NaN/Inf.")
      rate, remaining = progress.update(step)
      lr = float(phase.learning_rate(phase.local_step(step)))
      if _crossed(step, n, train_config.summary_every_n_steps) or step == target:
        with writer.as_default(step=step):
          for name, value in losses.items():
            tf.summary.scalar(f"losses/{phase.name}/{name}" if len(self.phases) > 1
                              else f"losses/{name}", value)
          tf.summary.scalar("learning_rate", lr)
          tf.summary.scalar("phase", float(phase.index))
          tf.summary.scalar("steps_per_second", rate)
        writer.flush()
      if _crossed(step, n, train_config.log_every_n_steps) or step == target:
        logging.info("step %d/%d | phase %s | lr %.3g | %s | %.2f steps/s | ETA %s", step,
                     target, phase.name, lr,
                     " ".join(f"{k}={v:.4f}" for k, v in sorted(losses.items())),
                     rate, _format_eta(remaining))
      if (_crossed(step, n, train_config.checkpoint_every_n_steps) or
          (step == phase.end and step < target)):
        # Phase ends are always checkpointed: the next phase may rely on this one's weights.
        self._save(step)
        last_saved = step
      if eval_every and _crossed(step, n, eval_every) and step < target:
        if last_saved != step:
          self._save(step)
          last_saved = step
        if self.is_chief:
          evaluate_fn(step)
    if last_saved != step:
      self._save(step)
    writer.close()
    return step


def _crossed(step, n, interval):
  """True if an interval boundary lies in (step - n, step]."""
  if not interval or interval <= 0:
    return False
  return step // interval > (step - n) // interval


def write_metrics_json(metrics, directory, step):
  """Writes metrics to `directory`/metrics.json and metrics_step_<step>.json (atomically)."""
  from tal_tf.evaluation import metrics_table  # pylint: disable=g-import-not-at-top
  for name in (METRICS_FILE, f"metrics_step_{int(step)}.json"):
    metrics_table.write_metrics_json(metrics, os.path.join(directory, name),
                                     extra={"global_step": int(step)})
  return os.path.join(directory, METRICS_FILE)
