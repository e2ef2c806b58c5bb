"""Builds the ordered training phases of a run from `TrainConfig` (and the model's phases).

A phase is plain data (`PhaseSpec`); the trainer turns it into variables and an optimizer.
"""

import collections

from tal_tf.builders import optimizer_builder

PhaseSpec = collections.namedtuple("PhaseSpec", [
    "name",                 # a phase the model declares
    "num_steps",            # steps of this phase
    "optimizer_config",     # Optimizer proto (build inside the strategy scope)
    "l2_weight_decay",      # float, added to kernel gradients
    "trainable_patterns",   # tuple of regexes (empty = all of the model's phase variables)
    "frozen_patterns",      # tuple of regexes
    "lr_multipliers",       # tuple of (regex, multiplier), first match wins
    "input_reader",         # InputReader proto of the phase's data, or None (the train reader)
])


def build(train_config, model_phases, num_train_steps=None):
  """TrainConfig proto + the model's phase names -> (list of PhaseSpec, total step cap).

  Without `phases`, every model phase runs `train_config.num_steps` steps with
  `train_config.optimizer`; with `phases`, they are taken as configured. `num_train_steps`
  (--num_train_steps) replaces num_steps of a single-phase model (as it always did) and
  otherwise caps the total number of steps.
  """
  model_phases = tuple(model_phases)
  default_opt = train_config.optimizer
  if not train_config.phases:
    single = len(model_phases) == 1
    steps = int(num_train_steps or train_config.num_steps) if single else train_config.num_steps
    if steps <= 0:
      raise ValueError(f"train_config.num_steps (or --num_train_steps) must be > 0, got {steps}")
    specs = [PhaseSpec(name, steps, default_opt, optimizer_builder.l2_weight_decay(default_opt),
                       (), (), (), None) for name in model_phases]
    total = steps * len(specs)
    if num_train_steps and not single:
      total = min(total, int(num_train_steps))
    return specs, total
  specs, seen = [], set()
  for i, phase in enumerate(train_config.phases):
    where = f"train_config.phases[{i}]"
    if phase.name not in model_phases:
      raise ValueError(f"{where}.name: {phase.name!r} is not a phase of this model; it "
                       f"declares {list(model_phases)}")
    if phase.name in seen:
      raise ValueError(f"{where}.name: phase {phase.name!r} is listed twice")
    seen.add(phase.name)
    if phase.num_steps <= 0:
      raise ValueError(f"{where}.num_steps: must be > 0, got {phase.num_steps}")
    opt = phase.optimizer if phase.HasField("optimizer") else default_opt
    multipliers = []
    for j, m in enumerate(phase.learning_rate_multipliers):
      if not m.regex:
        raise ValueError(f"{where}.learning_rate_multipliers[{j}].regex: is required")
      if not m.multiplier >= 0:
        raise ValueError(f"{where}.learning_rate_multipliers[{j}].multiplier: must be >= 0, "
                         f"got {m.multiplier}")
      multipliers.append((m.regex, float(m.multiplier)))
    specs.append(PhaseSpec(phase.name, int(phase.num_steps), opt,
                           optimizer_builder.l2_weight_decay(opt),
                           tuple(phase.trainable_variables), tuple(phase.frozen_variables),
                           tuple(multipliers),
                           phase.input_reader if phase.HasField("input_reader") else None))
  total = sum(s.num_steps for s in specs)
  if num_train_steps:
    total = min(total, int(num_train_steps))
  return specs, total
