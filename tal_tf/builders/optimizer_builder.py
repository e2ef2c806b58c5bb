"""Builds tf_keras optimizers and learning-rate schedules from `Optimizer` protos."""

import tensorflow as tf
import tf_keras

from tal_tf.utils import registry

OPTIMIZERS = registry.Registry("optimizer")
LEARNING_RATES = registry.Registry("learning rate")


class LinearWarmup(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Ramps linearly from 0 to `schedule(warmup_steps)` over `warmup_steps`, then follows it."""

  def __init__(self, schedule, warmup_steps):
    super().__init__()
    self._schedule = schedule
    self._warmup_steps = int(warmup_steps)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warm = tf.cast(self._warmup_steps, tf.float32)
    target = tf.cast(self._schedule(step), tf.float32)
    ramp = target * (step + 1.0) / warm
    return tf.where(step < warm, ramp, target)

  def get_config(self):
    return {"warmup_steps": self._warmup_steps}


class ConstantSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
  """A constant learning rate as a schedule (so it can be warmed up and logged alike)."""

  def __init__(self, value):
    super().__init__()
    self._value = float(value)

  def __call__(self, step):
    del step
    return tf.constant(self._value, tf.float32)

  def get_config(self):
    return {"value": self._value}


@LEARNING_RATES.register("constant")
def _constant(config):
  return ConstantSchedule(config.learning_rate)


@LEARNING_RATES.register("cosine_decay")
def _cosine(config):
  return tf_keras.optimizers.schedules.CosineDecay(
      config.initial_learning_rate, config.decay_steps, alpha=config.alpha)


@LEARNING_RATES.register("piecewise_constant")
def _piecewise(config):
  if len(config.values) != len(config.boundaries) + 1:
    raise ValueError(
        "learning_rate.piecewise_constant: needs len(values) == len(boundaries) + 1, got "
        f"{len(config.values)} values and {len(config.boundaries)} boundaries")
  return tf_keras.optimizers.schedules.PiecewiseConstantDecay(
      list(config.boundaries), list(config.values))


def build_learning_rate(config):
  """LearningRate proto -> schedule. Unset means TAL-Net's constant 1e-4."""
  choice = config.WhichOneof("learning_rate_oneof") or "constant"
  schedule = LEARNING_RATES.get(choice)(getattr(config, choice))
  if config.warmup_steps > 0:
    schedule = LinearWarmup(schedule, config.warmup_steps)
  return schedule


@OPTIMIZERS.register("adam")
def _adam(config, learning_rate):
  if config.weight_decay > 0:
    return tf_keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=config.weight_decay,
        beta_1=config.beta_1, beta_2=config.beta_2, epsilon=config.epsilon)
  return tf_keras.optimizers.Adam(
      learning_rate=learning_rate, beta_1=config.beta_1, beta_2=config.beta_2,
      epsilon=config.epsilon)


@OPTIMIZERS.register("momentum")
def _momentum(config, learning_rate):
  # weight_decay is not passed to Keras (whose SGD decays decoupled from the gradient):
  # the trainer adds it to the gradient as an L2 term (see l2_weight_decay).
  return tf_keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum,
                                 nesterov=config.nesterov)


def l2_weight_decay(config):
  """The L2 coefficient the trainer adds to kernel gradients (momentum's weight_decay)."""
  choice = config.WhichOneof("optimizer_oneof") or "adam"
  return float(config.momentum.weight_decay) if choice == "momentum" else 0.0


def build(config):
  """Optimizer proto -> (tf_keras optimizer, learning-rate schedule)."""
  schedule = build_learning_rate(config.learning_rate)
  choice = config.WhichOneof("optimizer_oneof") or "adam"
  optimizer = OPTIMIZERS.get(choice)(getattr(config, choice), schedule)
  if config.gradient_clip_norm > 0:
    optimizer.global_clipnorm = config.gradient_clip_norm
  return optimizer, schedule
