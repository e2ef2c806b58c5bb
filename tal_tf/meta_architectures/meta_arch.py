"""The contract every tal_tf meta-architecture implements.

Shared code (trainer, evaluator, exporter, inference) never reads a model's proto: it asks
the built model object. A meta-architecture is a `tf.Module` (not a Keras Model: Keras'
`predict`, `loss` and `compile` would collide with ours) that owns Keras layers and declares:

  what it is:        num_classes, stream_names, max_detections
  what it reads:     input_fields (InputFields keys beyond features / num_steps, parsed and
                     padded by the input pipeline's field table), preprocess(inputs)
  how it trains:     training_phases (ordered names), phase_variables(phase),
                     loss(predictions, groundtruth, phase), begin_phase(phase, context),
                     restore_map(checkpoint_type) for fine-tune checkpoints
  what it outputs:   postprocess() returns the REQUIRED_OUTPUTS plus any of
                     optional_outputs (e.g. proposals; AR@AN is computed when they exist)
  how it evaluates:  evaluation_postprocess_kwargs(thresholds): postprocess keyword
                     arguments per evaluated tIoU (default: one post-processing for all)
  how windows merge: window_merge (NMS thresholds / limits used when a long video is cut
                     into overlapping windows at inference)

The calls, on batched, padded tensors with valid lengths:

  inputs      = model.preprocess(inputs)                       # batch dict -> batch dict
  predictions = model.predict(features, num_steps, training, phase)
  losses      = model.loss(predictions, groundtruth, phase)    # dict of scalars + total_loss
  detections  = model.postprocess(predictions, num_steps, feature_fps)

`features` is a dict stream name -> float32 [B, T, D_stream]; `num_steps` is int32 [B];
`feature_fps` float32 [B]. Ground truth is passed to `loss` explicitly (no hidden state).
See docs/DESIGN.md ("The meta-architecture contract") for the checklist to add one.
"""

import abc
import re

import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields

DEFAULT_PHASE = "train"

# Outputs every model's postprocess returns (and every exported signature serves). The
# detection count N must be static (pad to max_detections) so the signature's shapes are.
REQUIRED_OUTPUTS = (
    DetectionFields.detection_segments,   # float32 [B, N, 2] seconds
    DetectionFields.detection_scores,     # float32 [B, N]
    DetectionFields.detection_classes,    # int32 [B, N] label-map ids, 0 = padding
    DetectionFields.num_detections,       # int32 [B]
)

# Class-agnostic proposals: the optional outputs of a model with a proposal stage (AR@AN).
PROPOSAL_OUTPUTS = (
    DetectionFields.proposal_segments,    # float32 [B, P, 2] seconds
    DetectionFields.proposal_scores,      # float32 [B, P]
    DetectionFields.num_proposals,        # int32 [B]
)

# Ground-truth fields of a fully supervised detector.
SEGMENT_GROUNDTRUTH = (InputFields.segments, InputFields.labels, InputFields.num_segments)


class TrainingContext:
  """What a model may use in `begin_phase`: the training data, a cache folder, the phase's
  first step and whether the phase is starting fresh (False when resuming inside it)."""

  def __init__(self, dataset_fn, cache_dir, phase_start_step, fresh, strategy=None,
               stream_dims=None):
    """dataset_fn(is_training: bool, repeat: bool) -> tf.data.Dataset of padded batches
    (the training records, read once when repeat is False); cache_dir: a folder inside
    model_dir owned by the model (write atomically: a killed run may leave partial files)."""
    self.dataset_fn = dataset_fn
    self.cache_dir = cache_dir
    self.phase_start_step = int(phase_start_step)
    self.fresh = bool(fresh)
    self.strategy = strategy
    self.stream_dims = dict(stream_dims or {})


class TemporalDetectionModel(tf.Module, metaclass=abc.ABCMeta):
  """Base class of meta-architectures (TAL-Net, S-CNN, WTAL, ETP)."""

  # ------------------------------------------------------------------ what it is
  @property
  @abc.abstractmethod
  def num_classes(self):
    """Number of action classes (label-map ids 1..num_classes)."""

  @property
  @abc.abstractmethod
  def stream_names(self):
    """Names of the feature streams the model reads, in order."""

  @property
  def max_detections(self):
    """Detections per video that postprocess returns at most (N)."""
    return 100

  # ------------------------------------------------------------------ what it reads
  @property
  def input_fields(self):
    """InputFields keys the model needs in training besides features and num_steps."""
    return SEGMENT_GROUNDTRUTH

  def preprocess(self, inputs):
    """Model-specific transform of a padded batch dict before `predict` (default: none).

    `inputs` holds at least InputFields.features / num_steps / feature_fps (and, in
    training, the ground truth of `input_fields`); the same keys come back. It runs in
    training, evaluation and the exported serving function alike (core TF ops only).
    """
    return inputs

  # ------------------------------------------------------------------ how it trains
  @property
  def training_phases(self):
    """Ordered names of the training phases (one unless the method trains in stages)."""
    return (DEFAULT_PHASE,)

  def phase_variables(self, phase):
    """Variables trained in `phase` (default: all trainable variables)."""
    del phase
    return list(self.trainable_variables)

  def begin_phase(self, phase, context):
    """Called before the first step of `phase` and when a run resumes inside it.

    A stage-wise method prepares here what the phase needs (e.g. initializes a network from
    another's weights when `context.fresh`, or caches the previous stage's proposals in
    `context.cache_dir`). Default: nothing.
    """
    del phase, context

  def restore_map(self, checkpoint_type="full"):
    """{name: trackable} to restore from a fine-tune checkpoint of `checkpoint_type`.

    "full" restores the whole model (a checkpoint written by the trainer or the exporter
    stores it as `model`); models add their own types (e.g. "backbone").
    """
    if checkpoint_type in ("", "full", "model"):
      return {"model": self}
    raise ValueError(f"{type(self).__name__}: unknown fine_tune_checkpoint_type "
                     f"{checkpoint_type!r}; expected 'full'")

  @abc.abstractmethod
  def predict(self, features, num_steps, training=False, phase=None):
    """Raw network outputs (a dict of tensors) for a padded batch."""

  @abc.abstractmethod
  def loss(self, predictions, groundtruth, phase=None):
    """Dict of scalar losses of `phase`; key 'total_loss' is what the optimizer minimizes."""

  def regularization_losses(self):
    """Scalar losses of the model's Keras layers (kernel regularizers); [] if none."""
    out = []
    for layer in self._keras_layers():
      out.extend(layer.losses)
    return out

  def _keras_layers(self):
    """Top-level Keras layers owned by this module (their losses include sub-layers')."""
    import tf_keras  # pylint: disable=g-import-not-at-top
    found, seen = [], set()

    def visit(value):
      if isinstance(value, tf_keras.layers.Layer):
        if id(value) not in seen:
          seen.add(id(value))
          found.append(value)
      elif isinstance(value, (list, tuple)):
        for v in value:
          visit(v)
      elif isinstance(value, dict):
        for v in value.values():
          visit(v)

    for value in vars(self).values():
      visit(value)
    return found

  # ------------------------------------------------------------------ what it outputs
  @abc.abstractmethod
  def postprocess(self, predictions, num_steps, feature_fps):
    """Detections dict: REQUIRED_OUTPUTS + optional_outputs, segments in seconds."""

  @property
  def optional_outputs(self):
    """DetectionFields (or model-specific) keys postprocess returns beyond the required."""
    return ()

  @property
  def output_fields(self):
    """All keys of postprocess' dict, required first."""
    return tuple(REQUIRED_OUTPUTS) + tuple(self.optional_outputs)

  @property
  def has_proposals(self):
    """True when postprocess returns class-agnostic proposals (AR@AN is computed)."""
    return DetectionFields.num_proposals in self.optional_outputs

  def evaluation_postprocess_kwargs(self, tiou_thresholds):
    """{theta: postprocess keyword arguments} used to evaluate mAP at tIoU theta.

    A method whose paper post-processes differently per evaluated threshold (S-CNN: NMS at
    theta - 0.1) returns, per theta, the extra keyword arguments its `postprocess` accepts;
    the evaluator post-processes the same network outputs once per distinct set and scores
    mAP@theta on that set's detections only (when `eval_config.per_threshold_postprocessing`
    is on). Default: {} for every theta, i.e. one post-processing (the serving one) for all.
    """
    return {float(t): {} for t in tiou_thresholds}

  @property
  def window_merge(self):
    """How detections of overlapping windows of one video merge at inference:
    {nms_iou_threshold, max_detections, proposal_nms_iou_threshold, max_proposals}."""
    return dict(nms_iou_threshold=0.5, max_detections=self.max_detections,
                proposal_nms_iou_threshold=0.7, max_proposals=300)

  def phase_stream_names(self, phase):
    """Streams the training data of `phase` (None: the evaluation data) must provide
    (default: all of stream_names; e.g. ETP's frame actionness phase reads only frames of
    trimmed clips)."""
    del phase
    return self.stream_names

  def evaluation_batches(self, dataset):
    """The evaluation reader's batches -> the batches evaluation runs `predict` on (default:
    unchanged; ETP with the frame AN adds its frame scores, made from another reader)."""
    return dataset

  # ------------------------------------------------------------------ helpers
  def create_variables(self, stream_dims):
    """Runs a one-step dummy batch through `predict` so every weight exists (restores are
    then immediate and complete)."""
    features = {s: stream_spec.dummy_input(stream_dims[s]) for s in self.stream_names}
    for phase in self.training_phases:
      self.predict(features, tf.ones([1], tf.int32), training=False, phase=phase)


def select_variables(variables, include=(), exclude=()):
  """Variables whose names match any `include` regex (all if none) and no `exclude` regex."""
  inc = [re.compile(p) for p in include]
  exc = [re.compile(p) for p in exclude]
  out = []
  for v in variables:
    if inc and not any(p.search(v.name) for p in inc):
      continue
    if any(p.search(v.name) for p in exc):
      continue
    out.append(v)
  return out
