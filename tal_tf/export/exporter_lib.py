"""Exports a trained detector as a TensorFlow Serving SavedModel.

Layout written under `output_directory` (a TF Serving model base path)::

  <output_directory>/<version>/saved_model.pb      graph + signatures (core TF ops only)
  <output_directory>/<version>/variables/          weights
  <output_directory>/<version>/pipeline.config     the config the model was built from
  <output_directory>/<version>/label_map.pbtxt     class names (when a label map is known)
  <output_directory>/<version>/model_info.json     streams, outputs, window merging and the
                                                   training feature rates (tools)
  <output_directory>/<version>/checkpoint/ckpt-1   model-only checkpoint of the same weights

TF Serving reads only `saved_model.pb`, `variables/` and `assets/` of a version directory and
ignores the other files. A version is written into a hidden temporary directory first and
renamed into place, so a server polling the base path never sees half a model.

Signatures (input and output names are the constants below):

  serving_default: <stream> float32 [B, T, D_stream] per stream, num_steps int32 [B],
      feature_fps float32 [B]  ->  detection_segments [B, N, 2] (seconds),
      detection_scores [B, N], detection_classes int32 [B, N] (label-map ids, 0 = padding),
      num_detections int32 [B] (REQUIRED_OUTPUTS, every model), plus the model's optional
      outputs (`model.optional_outputs`), e.g. TAL-Net's proposal_segments [B, P, 2]
      (seconds), proposal_scores [B, P], num_proposals int32 [B].
  tf_example: examples string [B] (serialized SequenceExamples) -> the same outputs plus
      video_id string [B]; num_steps and feature_fps are read from each record.

A model whose stream is frames (an input reader stream of type FRAMES, e.g. S-CNN's C3D)
takes instead <stream> uint8 [B, T, H, W, 3] (RGB frames of the training records' size),
num_frames int32 [B] and fps float32 [B] (frames per second), and its tf_example signature
takes frame records (frames/jpeg, decoded in the graph). A model reading feature streams
and one frames stream at the frames' own rate (ETP with the frame Actionness Network) takes
both: the feature streams with num_steps and feature_fps, and <frames stream> uint8
[B, F, H, W, 3] with num_frames [B] and fps [B]; the model's `predict` receives num_frames,
fps and feature_fps among its features. Such a model has serving_default only (a record
holds either features or frames). model_info.json records which inputs a model takes
(`inputs`: names, stream kinds, frame size and rate) and, copied from the training
model_dir's training_feature_fps.json, the rates the model was trained on
(`training_feature_fps`: min, max, videos, rates), against which the inference CLI and the
serving client check the rate they are given (tal_tf.utils.feature_rates). A model_dir
without that file (trained before it was written) exports without the key.

Every input is checked inside the graph (rank, feature dims, consistent batch and length,
0 <= num_steps <= T, finite positive feature_fps, finite features on valid steps); a bad
request fails with an InvalidArgument error naming the input, never a crash. T = 0 and
B = 0 give empty results.
"""

import collections
import json
import os
import re
import shutil
import tempfile

from absl import logging
import tensorflow as tf
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import input_fields
from tal_tf.meta_architectures import meta_arch
from tal_tf.utils import atomic_files
from tal_tf.utils import config_util
from tal_tf.utils import feature_rates

SERVING_SIGNATURE = "serving_default"
TF_EXAMPLE_SIGNATURE = "tf_example"
NUM_STEPS_INPUT = "num_steps"
FEATURE_FPS_INPUT = "feature_fps"
EXAMPLES_INPUT = "examples"
VIDEO_ID_OUTPUT = "video_id"
# Frames models: valid lengths in frames and the frame rate.
NUM_FRAMES_INPUT = "num_frames"
FPS_INPUT = "fps"
RESERVED_INPUT_NAMES = (NUM_STEPS_INPUT, FEATURE_FPS_INPUT, EXAMPLES_INPUT, NUM_FRAMES_INPUT,
                        FPS_INPUT)

# Outputs of every exported model; a model adds its optional outputs.
DETECTION_OUTPUTS = meta_arch.REQUIRED_OUTPUTS

PIPELINE_CONFIG_NAME = config_util.PIPELINE_CONFIG_NAME
LABEL_MAP_NAME = "label_map.pbtxt"
MODEL_INFO_NAME = "model_info.json"
CHECKPOINT_DIR_NAME = "checkpoint"
SAVED_MODEL_FILE = "saved_model.pb"

# Ops that call back into the Python interpreter: TF Serving has none.
PYTHON_OPS = frozenset(["PyFunc", "PyFuncStateless", "EagerPyFunc"])


class ExportError(ValueError):
  """The export cannot proceed (bad flags, checkpoint, config or output directory)."""


# --------------------------------------------------------------------------- the module
class DetectionModule(tf.Module):
  """A TemporalDetectionModel wrapped with validated serving functions (tf.Module to save)."""

  def __init__(self, model, stream_dims, max_detections=None):
    """Args: model (TemporalDetectionModel); stream_dims {stream: D} for model.stream_names;
    max_detections: detections per video in the outputs (None = the model's own)."""
    super().__init__(name="tal_detection_module")
    self.model = model
    missing = [s for s in model.stream_names if s not in stream_dims]
    if missing:
      raise ExportError(f"stream dims missing for model streams {missing}; got "
                        f"{dict(stream_dims)} (declare them in the input reader's streams)")
    clash = [s for s in model.stream_names if s in RESERVED_INPUT_NAMES]
    if clash:
      raise ExportError(f"stream names {clash} collide with the signature inputs "
                        f"{list(RESERVED_INPUT_NAMES)}; rename the streams")
    self._stream_dims = collections.OrderedDict(
        (s, stream_dims[s] if stream_spec.is_frames(stream_dims[s]) else int(stream_dims[s]))
        for s in model.stream_names)
    self._all_dims = collections.OrderedDict(self._stream_dims)
    # Feature streams plus one frames stream at its own rate: the frames are a side input
    # with their own length and rate inputs; the checks below apply to the feature streams.
    frame_streams = [s for s, d in self._stream_dims.items() if stream_spec.is_frames(d)]
    self.side_frames = None
    if frame_streams and len(frame_streams) < len(self._stream_dims):
      if len(frame_streams) > 1:
        raise ExportError(f"a model reading feature streams takes at most one frames stream, "
                          f"got {frame_streams}")
      self.side_frames = frame_streams[0]
      del self._stream_dims[self.side_frames]
    self.frames = stream_spec.has_frames(self._stream_dims)
    if self.frames and len(self._stream_dims) > 1:
      raise ExportError(f"a model reading frames takes one stream, got "
                        f"{list(self._stream_dims)}")
    # Names of the valid-length and rate inputs.
    self.lengths_input = NUM_FRAMES_INPUT if self.frames else NUM_STEPS_INPUT
    self.rate_input = FPS_INPUT if self.frames else FEATURE_FPS_INPUT
    if max_detections is not None and int(max_detections) < 1:
      raise ExportError(f"max_detections must be >= 1, got {max_detections}")
    self._max_detections = None if max_detections is None else int(max_detections)
    self._serving_fn = None
    self._tf_example_fn = None

  @property
  def stream_dims(self):
    """{stream: feature dim or stream_spec.FrameStream} in model order."""
    return collections.OrderedDict(self._all_dims)

  def _layout(self, stream):
    """'float32 [batch, T, D]' or 'uint8 [batch, T, H, W, 3]' of a stream (messages)."""
    spec = self._all_dims[stream]
    dims = ", ".join(str(d) for d in stream_spec.step_shape(spec))
    return f"{stream_spec.dtype(spec).name} [batch, T, {dims}]"

  @property
  def max_detections(self):
    """Detections per video in the outputs (N)."""
    if self._max_detections is not None:
      return self._max_detections
    return int(getattr(self.model, "max_detections", 100))

  # ------------------------------------------------------------------ input checks
  def _check_inputs(self, features, num_steps, feature_fps, streams=None, names=None):
    """In-graph validation; returns (features, num_steps, feature_fps) gated on the checks.

    Shapes are read with raw `Shape` ops (not Python-side static shapes) so the checks stay
    in the graph even where the signature declares a static feature dim: a C++ client can
    feed any shape and must get a clear error rather than one from deep inside the model.
    streams / names: the streams checked together and the names of their length and rate
    inputs (default: the main streams, lengths_input / rate_input).
    """
    streams = list(streams or self._stream_dims)
    first = streams[0]
    shapes = {s: tf.raw_ops.Shape(input=features[s], out_type=tf.int32) for s in streams}
    steps = {s: stream_spec.step_shape(self._all_dims[s]) for s in streams}
    lengths_name, rate_name = names or (self.lengths_input, self.rate_input)
    rank_checks = []
    for s in streams:
      rank = tf.raw_ops.Size(input=shapes[s], out_type=tf.int32)
      rank_checks.append(tf.debugging.Assert(
          tf.equal(rank, 2 + len(steps[s])),
          [f"input {s} must be {self._layout(s)}; got shape", shapes[s]],
          name=f"check_rank_{s}"))
    ns_shape = tf.raw_ops.Shape(input=num_steps, out_type=tf.int32)
    fps_shape = tf.raw_ops.Shape(input=feature_fps, out_type=tf.int32)
    rank_checks.append(tf.debugging.Assert(
        tf.equal(tf.raw_ops.Size(input=ns_shape, out_type=tf.int32), 1),
        [f"input {lengths_name} must be int32 [batch]; got shape", ns_shape],
        name="check_rank_num_steps"))
    rank_checks.append(tf.debugging.Assert(
        tf.equal(tf.raw_ops.Size(input=fps_shape, out_type=tf.int32), 1),
        [f"input {rate_name} must be float32 [batch]; got shape", fps_shape],
        name="check_rank_feature_fps"))

    with tf.control_dependencies(rank_checks):
      batch = shapes[first][0]
      padded = shapes[first][1]
      dim_checks = []
      for s in streams:
        dim_checks.append(tf.debugging.Assert(
            # Padded so a wrong rank (reported above) still compares k = len(steps) dims.
            tf.reduce_all(tf.equal(
                tf.concat([shapes[s], tf.fill([len(steps[s])], -1)], 0)[2:2 + len(steps[s])],
                steps[s])),
            [(f"input {s} must have frames of shape {steps[s]} ({self._layout(s)}); got "
              "shape") if stream_spec.is_frames(self._all_dims[s]) else
             (f"input {s} must have feature dim {steps[s][0]} ({self._layout(s)[8:]}); "
              "got shape"), shapes[s]], name=f"check_dim_{s}"))
        if s != first:
          dim_checks.append(tf.debugging.Assert(
              tf.reduce_all(tf.equal(shapes[s][:2], shapes[first][:2])),
              [f"inputs {s} and {first} must have the same batch and T; got shapes",
               shapes[s], shapes[first]], name=f"check_same_bt_{s}"))
      dim_checks.append(tf.debugging.Assert(
          tf.equal(ns_shape[0], batch),
          [f"input {lengths_name} must have one entry per video ([batch]); got shape",
           ns_shape, f"while {first} has shape", shapes[first]],
          name="check_batch_num_steps"))
      dim_checks.append(tf.debugging.Assert(
          tf.equal(fps_shape[0], batch),
          [f"input {rate_name} must have one entry per video ([batch]); got "
           "shape", fps_shape, f"while {first} has shape", shapes[first]],
          name="check_batch_feature_fps"))

    with tf.control_dependencies(dim_checks):
      num_steps = tf.identity(num_steps)
      feature_fps = tf.identity(feature_fps)
      value_checks = [
          tf.debugging.Assert(
              tf.reduce_all((num_steps >= 0) & (num_steps <= padded)),
              [f"input {lengths_name} must lie in [0, T]; got", num_steps, "with T =",
               padded], name="check_num_steps_range"),
          tf.debugging.Assert(
              tf.reduce_all(tf.math.is_finite(feature_fps) & (feature_fps > 0.0)),
              [f"input {rate_name} must be finite and > 0 (steps per second); got",
               feature_fps], name="check_feature_fps"),
      ]
    with tf.control_dependencies(value_checks):
      valid = tf.sequence_mask(num_steps, padded)[:, :, tf.newaxis]
      finite_checks = []
      for s in streams:
        if not features[s].dtype.is_floating:
          continue  # Frames (uint8) are always finite.
        # Padding beyond num_steps is never read by the model, so only valid steps count.
        finite = tf.math.is_finite(features[s]) | tf.logical_not(valid)
        finite_checks.append(tf.debugging.Assert(
            tf.reduce_all(finite),
            [f"input {s} holds NaN or Inf within the first num_steps steps of videos",
             tf.where(tf.logical_not(tf.reduce_all(finite, axis=[1, 2])))[:, 0]],
            name=f"check_finite_{s}"))
    # value_checks too: frames (uint8) have no finite check, and every returned tensor must
    # wait for the rank / shape / value checks (they are chained through their dependencies).
    with tf.control_dependencies(finite_checks + value_checks):
      features = {s: tf.identity(features[s]) for s in streams}
      num_steps = tf.identity(num_steps)
      feature_fps = tf.identity(feature_fps)
    return features, num_steps, feature_fps

  # ------------------------------------------------------------------ detection
  def detect(self, features, num_steps, feature_fps, side_frames=None):
    """Validated batch detection: features {stream: [B, T, D]}, num_steps [B], fps [B] ->
    dict of the model's output fields (segments in seconds, N = max_detections).
    side_frames: (frames [B, F, H, W, 3], num_frames [B], fps [B]) of a model whose frames
    stream runs at its own rate (self.side_frames)."""
    features = {s: tf.convert_to_tensor(features[s], stream_spec.dtype(spec))
                for s, spec in self._stream_dims.items()}
    num_steps = tf.cast(num_steps, tf.int32)
    feature_fps = tf.cast(feature_fps, tf.float32)
    features, num_steps, feature_fps = self._check_inputs(features, num_steps, feature_fps)

    first = next(iter(self._stream_dims))
    batch = tf.shape(features[first])[0]
    padded = tf.shape(features[first])[1]
    # The network needs at least one step and one video; an empty request is padded with one
    # all-padding video / step (num_steps 0 -> no anchors, no detections) and the padding
    # is sliced off again, so T = 0 and B = 0 give empty results instead of errors.
    extra_b = tf.maximum(1 - batch, 0)
    extra_t = tf.maximum(1 - padded, 0)
    run_features = {
        s: tf.pad(x, [[0, extra_b], [0, extra_t]] +
                  [[0, 0]] * len(stream_spec.step_shape(self._stream_dims[s])))
        for s, x in features.items()}
    run_steps = tf.pad(num_steps, [[0, extra_b]])
    run_fps = tf.pad(feature_fps, [[0, extra_b]], constant_values=1.0)
    if self.side_frames is not None:
      run_features.update(self._side_inputs(side_frames, batch, extra_b, run_fps))

    inputs = self.model.preprocess({InputFields.features: run_features,
                                     InputFields.num_steps: run_steps,
                                     InputFields.feature_fps: run_fps})
    run_features, run_steps = inputs[InputFields.features], inputs[InputFields.num_steps]
    run_fps = inputs[InputFields.feature_fps]
    predictions = self.model.predict(run_features, run_steps, training=False)
    dets = self.model.postprocess(predictions, run_steps, run_fps)
    missing = [k for k in self.model.output_fields if k not in dets]
    if missing:
      raise ExportError(f"{type(self.model).__name__}.postprocess lacks declared outputs "
                        f"{missing}")
    out = {key: dets[key][:batch] for key in self.model.output_fields}
    return self._resize_detections(out)

  def _side_inputs(self, side_frames, batch, extra_b, run_fps):
    """The checked, padded side frames and their length / rate inputs, as `predict` reads
    them: {frames stream, num_frames, fps, feature_fps}."""
    name = self.side_frames
    frames, num_frames, fps = side_frames
    checked, num_frames, fps = self._check_inputs(
        {name: tf.convert_to_tensor(frames, tf.uint8)}, tf.cast(num_frames, tf.int32),
        tf.cast(fps, tf.float32), streams=[name], names=(NUM_FRAMES_INPUT, FPS_INPUT))
    frames = checked[name]
    same_batch = tf.debugging.Assert(
        tf.equal(tf.shape(frames)[0], batch),
        [f"input {name} must have the batch of the feature streams; got", tf.shape(frames)[0],
         "videos instead of", batch], name="check_batch_side_frames")
    with tf.control_dependencies([same_batch]):
      frames = tf.pad(frames, [[0, extra_b], [0, tf.maximum(1 - tf.shape(frames)[1], 0)],
                               [0, 0], [0, 0], [0, 0]])
    return {name: frames, NUM_FRAMES_INPUT: tf.pad(num_frames, [[0, extra_b]]),
            FPS_INPUT: tf.pad(fps, [[0, extra_b]], constant_values=1.0),
            FEATURE_FPS_INPUT: run_fps}

  def _resize_detections(self, out):
    """Slices (or zero-pads) the detection axis to max_detections (static size N)."""
    n = self.max_detections
    have = out[DetectionFields.detection_scores].shape[1]
    if have is None:
      raise ExportError("the model's detection count must be static for export")
    result = dict(out)
    for key in (DetectionFields.detection_segments, DetectionFields.detection_scores,
                DetectionFields.detection_classes):
      value = out[key]
      if have >= n:
        # Detections are sorted by score, so the first n are the top n.
        value = value[:, :n]
      else:
        paddings = [[0, 0], [0, n - have]] + [[0, 0]] * (value.shape.rank - 2)
        value = tf.pad(value, paddings)
      result[key] = tf.ensure_shape(value, [None, n] + value.shape[2:].as_list())
    result[DetectionFields.num_detections] = tf.minimum(
        out[DetectionFields.num_detections], n)
    return result

  # ------------------------------------------------------------------ signatures
  def feature_input_signature(self):
    """{input name: TensorSpec} of serving_default."""
    spec = collections.OrderedDict(
        (s, tf.TensorSpec([None, None] + stream_spec.step_shape(d), stream_spec.dtype(d),
                          name=s))
        for s, d in self._stream_dims.items())
    spec[self.lengths_input] = tf.TensorSpec([None], tf.int32, name=self.lengths_input)
    spec[self.rate_input] = tf.TensorSpec([None], tf.float32, name=self.rate_input)
    if self.side_frames is not None:
      side = self._all_dims[self.side_frames]
      spec[self.side_frames] = tf.TensorSpec([None, None] + stream_spec.step_shape(side),
                                             tf.uint8, name=self.side_frames)
      spec[NUM_FRAMES_INPUT] = tf.TensorSpec([None], tf.int32, name=NUM_FRAMES_INPUT)
      spec[FPS_INPUT] = tf.TensorSpec([None], tf.float32, name=FPS_INPUT)
    return spec

  def serving_function(self):
    """tf.function(inputs dict) -> outputs dict: the serving_default signature."""
    if self._serving_fn is None:
      def serve(inputs):
        """{stream: [B,T,D], num_steps: [B], feature_fps: [B]} (frames: [B,T,H,W,3],
        num_frames, fps) -> detections dict."""
        features = {s: inputs[s] for s in self._stream_dims}
        side = None
        if self.side_frames is not None:
          side = (inputs[self.side_frames], inputs[NUM_FRAMES_INPUT], inputs[FPS_INPUT])
        return self.detect(features, inputs[self.lengths_input], inputs[self.rate_input],
                           side)
      self._serving_fn = tf.function(serve, input_signature=[self.feature_input_signature()])
    return self._serving_fn

  def decode_examples(self, examples):
    """Serialized SequenceExamples [B] -> (features {s: [B, T, D]}, num_steps, fps, ids)."""
    # Defaults instead of required features: the parser's own error for a missing context
    # feature names neither the input nor the record; the named checks below do. A record
    # without a video id is served with an empty id.
    context_spec = {
        SEF.video_id: tf.io.FixedLenFeature([], tf.string, default_value=""),
        SEF.feature_fps: tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
        SEF.num_steps: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }
    keys = {s: (SEF.frames_jpeg if stream_spec.is_frames(d) else SEF.feature_key(s))
            for s, d in self._stream_dims.items()}
    sequence_spec = {keys[s]: (tf.io.FixedLenSequenceFeature([], tf.string)
                               if stream_spec.is_frames(d) else
                               tf.io.FixedLenSequenceFeature([d], tf.float32))
                     for s, d in self._stream_dims.items()}
    # The signature declares [B], but a C++ client can feed any rank; the parser would then
    # fail (or, for a scalar, silently return unbatched values) without naming the input.
    # A raw Shape op keeps the check in the graph (a static rank would be folded away).
    shape = tf.raw_ops.Shape(input=examples, out_type=tf.int32)
    rank_check = tf.debugging.Assert(
        tf.equal(tf.raw_ops.Size(input=shape, out_type=tf.int32), 1),
        [f"input {EXAMPLES_INPUT} must be string [batch] (serialized SequenceExamples); got "
         "shape", shape], name=f"check_rank_{EXAMPLES_INPUT}")
    with tf.control_dependencies([rank_check]):
      examples = tf.identity(examples)
    # The batched parser pads every feature list to the longest in the batch and reports
    # each list's length, which is exactly the padded layout `detect` takes.
    context, sequences, lengths = tf.io.parse_sequence_example(
        examples, context_features=context_spec, sequence_features=sequence_spec)
    num_steps = tf.cast(context[SEF.num_steps], tf.int32)
    checks = []
    for key, value in ((SEF.num_steps, num_steps), (SEF.feature_fps, context[SEF.feature_fps])):
      checks.append(tf.debugging.Assert(
          tf.reduce_all(value >= 0),
          [f"input {EXAMPLES_INPUT}: records lack the context feature {key} (record indices)",
           tf.where(value < 0)[:, 0]], name=f"check_context_{key.replace('/', '_')}"))
    for s in self._stream_dims:
      key = keys[s]
      checks.append(tf.debugging.Assert(
          tf.reduce_all(tf.equal(tf.cast(lengths[key], tf.int32), num_steps)),
          [f"record feature list {key} length differs from {SEF.num_steps} for records",
           tf.where(tf.not_equal(tf.cast(lengths[key], tf.int32), num_steps))[:, 0]],
          name=f"check_record_length_{s}"))
    with tf.control_dependencies(checks):
      num_steps = tf.identity(num_steps)
    features = {s: sequences[keys[s]] for s in self._stream_dims}
    # Frame records: JPEGs decoded in the graph (padding -> zero frames).
    features = input_fields.decode_frames(features, self._stream_dims)
    return features, num_steps, context[SEF.feature_fps], context[SEF.video_id]

  def tf_example_function(self):
    """tf.function({'examples': string [B]}) -> outputs dict + video_id: the tf_example
    signature."""
    if self._tf_example_fn is None:
      def serve_examples(inputs):
        """{examples: string [B]} -> detections dict + video_id [B]."""
        features, num_steps, fps, video_ids = self.decode_examples(inputs[EXAMPLES_INPUT])
        # The decoded batch goes through the serving function itself: one traced copy of the
        # network in the SavedModel, called by both signatures (tracing it twice doubled the
        # export time), and the same input checks.
        served = dict(features)
        served[self.lengths_input] = num_steps
        served[self.rate_input] = fps
        out = dict(self.serving_function()(served))
        out[VIDEO_ID_OUTPUT] = video_ids
        return out
      self._tf_example_fn = tf.function(serve_examples, input_signature=[{
          EXAMPLES_INPUT: tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)}])
    return self._tf_example_fn

  def signatures(self):
    """{signature name: ConcreteFunction} to pass to tf.saved_model.save."""
    signatures = {SERVING_SIGNATURE: self.serving_function().get_concrete_function()}
    if self.side_frames is None:
      signatures[TF_EXAMPLE_SIGNATURE] = self.tf_example_function().get_concrete_function()
    return signatures


# --------------------------------------------------------------------------- model info
def input_info(stream_dims):
  """The serving inputs of a model reading `stream_dims` (JSON-serializable): the names of
  the length and rate inputs and each stream's kind and step shape (frames: size, rate)."""
  frames = stream_spec.has_frames(stream_dims)
  mixed = frames and not all(stream_spec.is_frames(d) for d in stream_dims.values())
  streams = {}
  for name, spec in stream_dims.items():
    if stream_spec.is_frames(spec):
      streams[name] = dict(type="frames", height=int(spec.height), width=int(spec.width),
                           fps=float(spec.fps))
    else:
      streams[name] = dict(type="features", dim=int(spec))
  if mixed:
    # Feature streams at num_steps / feature_fps, the frames at num_frames / fps.
    return dict(lengths=NUM_STEPS_INPUT, rate=FEATURE_FPS_INPUT, frame_lengths=NUM_FRAMES_INPUT,
                frame_rate=FPS_INPUT, streams=streams)
  return dict(lengths=NUM_FRAMES_INPUT if frames else NUM_STEPS_INPUT,
              rate=FPS_INPUT if frames else FEATURE_FPS_INPUT, streams=streams)


def model_info(model, stream_dims=None, training_rates=None):
  """What tools outside the graph need to know of a model (JSON-serializable dict); with
  `stream_dims`, also its serving inputs (`input_info`); with `training_rates` (the
  model_dir's feature_rates summary), the rates it was trained on, which the inference
  tools check the rate they are given against."""
  info = dict(
      meta_architecture=type(model).__name__,
      num_classes=int(model.num_classes),
      stream_names=list(model.stream_names),
      output_fields=list(model.output_fields),
      has_proposals=bool(model.has_proposals),
      max_detections=int(model.max_detections),
      window_merge={k: (float(v) if isinstance(v, float) else int(v))
                    for k, v in model.window_merge.items()})
  if stream_dims is not None:
    info["inputs"] = input_info(stream_dims)
  if training_rates is not None:
    info[feature_rates.MODEL_INFO_KEY] = feature_rates.for_model_info(training_rates)
  return info


def write_model_info(model, directory, stream_dims=None, training_rates=None):
  """Writes model_info.json (read by the inference CLI; TF Serving ignores it)."""
  path = os.path.join(directory, MODEL_INFO_NAME)
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps(model_info(model, stream_dims, training_rates), indent=2,
                       sort_keys=True))
  return path


def checkpoint_model_dir(checkpoint):
  """The training model_dir of a checkpoint directory or prefix (where training wrote its
  feature_rates summary)."""
  return checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)


def training_rates_of(checkpoint):
  """The feature rates summary beside a checkpoint (dir or prefix), or None for a model_dir
  trained before the rates were recorded."""
  return feature_rates.read_summary(checkpoint_model_dir(checkpoint))


def read_model_info(export_dir):
  """model_info.json of an export directory as a dict, or None for an export without it."""
  path = os.path.join(export_dir, MODEL_INFO_NAME)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ExportError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- building
def stream_dims_from_config(config, model):
  """{stream: dim} of the model's streams, from the eval (else train) input reader; streams
  only some phases read (model.phase_stream_names, e.g. ETP's frames of trimmed clips) may
  come from those phases' readers."""
  streams = list(model.stream_names)
  phase_readers = [r for name, r in config_util.input_readers(config)
                   if name.startswith("train_config.phases")]
  for reader_name in ("eval_input_reader", "train_input_reader"):
    if config.HasField(reader_name):
      dims = dict(config_util.stream_dims(getattr(config, reader_name)))
      for reader in phase_readers:
        for stream, spec in config_util.stream_dims(reader).items():
          dims.setdefault(stream, spec)
      missing = [s for s in streams if s not in dims]
      if missing:
        raise ExportError(f"pipeline config: {reader_name}.streams lacks dims for model "
                          f"streams {missing} (declared: {dict(dims)})")
      return collections.OrderedDict((s, dims[s]) for s in streams)
  raise ExportError("pipeline config: neither eval_input_reader nor train_input_reader "
                    "declares the feature streams { name dim } needed for the signature")


def max_detections_from_config(config):
  """export_config.max_detections if set, else None (the model's own count)."""
  if config.HasField("export_config") and config.export_config.HasField("max_detections"):
    return int(config.export_config.max_detections)
  return None


def resolve_checkpoint(path):
  """Checkpoint prefix from a directory (its latest checkpoint) or a prefix; raises
  ExportError naming the path when there is none."""
  if not path:
    raise ExportError("a checkpoint directory or prefix is required")
  if tf.io.gfile.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise ExportError(f"no checkpoint in directory {path!r} (expected a 'checkpoint' state "
                        "file and ckpt-N.index / ckpt-N.data-* written by training)")
    return prefix
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise ExportError(f"checkpoint {path!r} not found: give a model_dir or a prefix such as "
                    "model_dir/ckpt-1000 (with a .index file)")


def _build_variables(model, stream_dims):
  """Creates the model's variables (Keras builds lazily)."""
  model.create_variables(stream_dims)


def restore_model(model, stream_dims, checkpoint_path):
  """Builds `model`'s variables and restores them from a checkpoint prefix or directory;
  raises ExportError if any model variable is absent from the checkpoint."""
  from tal_tf.training import checkpoint_util  # pylint: disable=g-import-not-at-top
  checkpoint_path = resolve_checkpoint(checkpoint_path)
  _build_variables(model, stream_dims)
  try:
    # The optimizer and input position in the checkpoint are not needed for serving.
    checkpoint_util.restore_checked(
        tf.train.Checkpoint(model=model), checkpoint_path,
        hint=" (it does not match the model built from the pipeline config: wrong config or "
        "checkpoint?)")
  except checkpoint_util.CheckpointReadError as e:
    raise ExportError(str(e)) from None
  return model


def build_detection_module(config, checkpoint_path=None, max_detections=None):
  """Pipeline config (+ checkpoint prefix or dir) -> DetectionModule with restored weights.

  Without a checkpoint the weights stay at their (seeded) initial values, which tests use.
  """
  model = model_builder.build(config.model)
  dims = stream_dims_from_config(config, model)
  if checkpoint_path is not None:
    restore_model(model, dims, checkpoint_path)
  else:
    _build_variables(model, dims)
  if max_detections is None:
    max_detections = max_detections_from_config(config)
  return DetectionModule(model, dims, max_detections=max_detections)


# --------------------------------------------------------------------------- op checks
def saved_model_op_types(export_dir):
  """Sorted op types used by a SavedModel: every graph node and every node of every
  function in its library (function-call nodes resolved to the functions they call)."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  path = os.path.join(export_dir, SAVED_MODEL_FILE)
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(path, "rb") as f:
    saved_model.ParseFromString(f.read())
  ops = set()
  for meta_graph in saved_model.meta_graphs:
    graph = meta_graph.graph_def
    functions = {fn.signature.name for fn in graph.library.function}
    nodes = list(graph.node)
    for fn in graph.library.function:
      nodes.extend(fn.node_def)
    # A node whose op is a library function is a direct call; its body is walked above.
    ops.update(n.op for n in nodes if n.op not in functions)
  return sorted(ops)


def non_core_ops(op_types):
  """Op types that TF Serving's C++ runtime cannot run: Python callbacks and ops that are
  not part of core TensorFlow (e.g. registered by tensorflow-io or another plugin)."""
  # `tf.raw_ops` is generated from core TensorFlow's op registry when TensorFlow is built,
  # so plugin ops loaded later into this process never appear there.
  return sorted(op for op in op_types
                if op in PYTHON_OPS or not hasattr(tf.raw_ops, op))


def check_core_ops(export_dir):
  """Raises ExportError if the SavedModel uses any non-core op; returns the op types."""
  ops = saved_model_op_types(export_dir)
  bad = non_core_ops(ops)
  if bad:
    raise ExportError(f"SavedModel {export_dir!r} uses ops TF Serving cannot run: {bad}")
  return ops


# --------------------------------------------------------------------------- versions
def existing_versions(base_dir):
  """Sorted integer versions (all-digit subdirectories) under a model base directory."""
  if not os.path.isdir(base_dir):
    return []
  return sorted(int(name) for name in os.listdir(base_dir)
                if name.isdigit() and os.path.isdir(os.path.join(base_dir, name)))


def choose_version(base_dir, model_version=None, overwrite=False):
  """Version to write: `model_version` (refused if it exists unless `overwrite`), or one
  more than the newest existing version (1 for a new base directory)."""
  versions = existing_versions(base_dir)
  if model_version is None:
    return (versions[-1] + 1) if versions else 1
  if isinstance(model_version, bool) or int(model_version) < 1:
    raise ExportError(f"model_version must be an integer >= 1 (TF Serving versions are "
                      f"positive integers), got {model_version!r}")
  model_version = int(model_version)
  if model_version in versions and not overwrite:
    raise ExportError(f"version {model_version} already exists in {base_dir!r}; pass "
                      f"--overwrite to replace it or choose another --model_version "
                      f"(existing: {versions})")
  return model_version


_LEFTOVER_RE = re.compile(r"^\.(export|replaced)-(\d+)-(\d+)-.+$")


def recover_interrupted_exports(output_directory):
  """Cleans up after exports killed mid-way (by their pid, when that process is gone): a
  version moved aside by an interrupted --overwrite is put back if its replacement never
  arrived, and unfinished staging folders are removed. Returns the paths handled."""
  handled = []
  for name in sorted(os.listdir(output_directory)):
    match = _LEFTOVER_RE.match(name)
    if not match or atomic_files.pid_alive(int(match.group(3))):
      continue
    path = os.path.join(output_directory, name)
    old = os.path.join(path, "old")
    final_dir = os.path.join(output_directory, match.group(2))
    if match.group(1) == "replaced" and os.path.isdir(old) and not os.path.exists(final_dir):
      os.rename(old, final_dir)
      logging.warning("put back version %s of %s, moved aside by an interrupted export",
                      match.group(2), output_directory)
    shutil.rmtree(path, ignore_errors=True)
    handled.append(path)
  return handled


def _label_map_source(config, label_map_path):
  if label_map_path:
    if not os.path.isfile(label_map_path):
      raise ExportError(f"label map {label_map_path!r} does not exist")
    return label_map_path
  for reader_name in ("eval_input_reader", "train_input_reader"):
    if config.HasField(reader_name):
      path = getattr(config, reader_name).label_map_path
      if path:
        if os.path.isfile(path):
          return path
        logging.warning("label map %s named in %s.label_map_path not found; the export "
                        "will carry no class names", path, reader_name)
  return None


def export_saved_model(config, trained_checkpoint, output_directory, model_version=None,
                       overwrite=False, max_detections=None, label_map_path=None):
  """Exports a TF Serving version directory; returns its path.

  Args:
    config: TrainEvalPipelineConfig (already loaded and overridden).
    trained_checkpoint: training model_dir (latest checkpoint) or a checkpoint prefix.
    output_directory: TF Serving model base path; the version goes to <it>/<version>.
    model_version: integer version; default one more than the newest existing.
    overwrite: replace an existing `model_version`.
    max_detections: detections per video (default export_config.max_detections).
    label_map_path: label map copied beside the model (default the input readers').
  """
  checkpoint = resolve_checkpoint(trained_checkpoint)
  created = not os.path.isdir(output_directory)
  os.makedirs(output_directory, exist_ok=True)
  try:
    recover_interrupted_exports(output_directory)
    version = choose_version(output_directory, model_version, overwrite)
    label_map = _label_map_source(config, label_map_path)
    module = build_detection_module(config, checkpoint, max_detections=max_detections)
    # The model_dir given (a checkpoint state file may name prefixes elsewhere).
    training_rates = training_rates_of(trained_checkpoint)
    if training_rates is None:
      logging.warning("%s has no %s (trained before the rates were recorded): the export "
                      "records no training feature rates and inference cannot check the rate "
                      "it is given", checkpoint_model_dir(trained_checkpoint),
                      feature_rates.SUMMARY_NAME)
  except Exception:
    # A bad checkpoint or config leaves no empty model base path (which TF Serving, pointed
    # at it, would report as a model without versions).
    if created and not os.listdir(output_directory):
      os.rmdir(output_directory)
    raise

  final_dir = os.path.join(output_directory, str(version))
  # A name TF Serving ignores (not all digits) while the version is incomplete; the pid
  # lets a later run clear what a killed export left.
  staging = tempfile.mkdtemp(prefix=f".export-{version}-{os.getpid()}-", dir=output_directory)
  try:
    _write_version(module, config, staging, final_dir, output_directory, version,
                   max_detections, label_map, training_rates)
  except (OSError, tf.errors.OpError) as e:
    # A full disk (or a permission problem) while writing: the staging folder goes (below)
    # and the versions already served are untouched.
    reason = e.message if isinstance(e, tf.errors.OpError) else str(e)
    reason = reason.strip().splitlines()[0] if reason.strip() else type(e).__name__
    raise ExportError(
        f"{output_directory}: writing version {version} failed ({reason}); the existing "
        f"versions {existing_versions(output_directory)} are untouched") from None
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging, ignore_errors=True)
  logging.info("exported version %d of %s to %s (from %s)", version, ",".join(
      module.stream_dims), final_dir, checkpoint)
  return final_dir


def _write_version(module, config, staging, final_dir, output_directory, version,
                   max_detections, label_map, training_rates=None):
  """Writes the version into `staging` and renames it to `final_dir` (see the module doc)."""
  tf.saved_model.save(module, staging, signatures=module.signatures())
  check_core_ops(staging)
  saved_config = type(config)()
  saved_config.CopyFrom(config)
  if label_map:
    shutil.copyfile(label_map, os.path.join(staging, LABEL_MAP_NAME))
    # Point the saved config at the copy so the directory is self-contained.
    for reader_name in ("eval_input_reader", "train_input_reader"):
      if saved_config.HasField(reader_name):
        getattr(saved_config, reader_name).label_map_path = LABEL_MAP_NAME
  if max_detections is not None:
    saved_config.export_config.max_detections = int(max_detections)
  with open(os.path.join(staging, PIPELINE_CONFIG_NAME), "w", encoding="utf-8") as f:
    f.write(text_format.MessageToString(saved_config))
  write_model_info(module.model, staging, module.stream_dims, training_rates)
  tf.train.Checkpoint(model=module.model).save(
      os.path.join(staging, CHECKPOINT_DIR_NAME, "ckpt"))
  os.chmod(staging, 0o755)  # mkdtemp makes it private; a server may run as another user.
  if os.path.isdir(final_dir):
    # Swap the new version in with one exchange: the served version never goes missing,
    # and a kill at any point leaves a complete version under its number (the staging name
    # then holds the old one, which `recover_interrupted_exports` clears).
    if atomic_files.exchange_paths(staging, final_dir):
      shutil.rmtree(staging, ignore_errors=True)
      return
    # No exchange on this filesystem: move the old version aside first so the new one
    # appears in one rename; a kill between the two renames is repaired by the next export.
    trash = tempfile.mkdtemp(prefix=f".replaced-{version}-{os.getpid()}-", dir=output_directory)
    os.rename(final_dir, os.path.join(trash, "old"))
    try:
      os.rename(staging, final_dir)
    except OSError:
      os.rename(os.path.join(trash, "old"), final_dir)  # Keep serving the old version.
      raise
    shutil.rmtree(trash, ignore_errors=True)
  else:
    os.rename(staging, final_dir)
