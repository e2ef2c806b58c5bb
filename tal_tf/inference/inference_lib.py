"""Runs an exported (or checkpointed) detector over feature files, window by window.

Two detectors share one call interface, `detector(features {stream: [B, T, D]}, num_steps
[B], feature_fps [B]) -> {output name: numpy array}` (the serving_default signature; for a
model reading frames, features {stream: uint8 [B, T, H, W, 3]}, num_steps in frames and
feature_fps the frame rate, fed as the signature's num_frames / fps; for a model reading
feature streams plus one frames stream (`side_stream`, e.g. ETP's frame Actionness Network),
a fourth argument `side` = (frames uint8 [B, F, H, W, 3], num_frames [B], fps [B]) fed as the
frames stream, num_frames and fps):
  * `SavedModelDetector`: the exported SavedModel (what TF Serving runs);
  * `CheckpointDetector`: pipeline config + training checkpoint, through the same
    validated serving function the exporter saves.

`run_inference` cuts each video into overlapping windows (`windowing.plan_windows`), runs
windows in batches of `batch_size` (padded to the longest in the batch), shifts each window's
detections to whole-video seconds and merges a video's windows by per-class NMS. At any
time it holds one batch of windows of features plus the detections of unfinished videos,
so memory does not grow with video length beyond the (small) detection lists. A model with a
frames stream gets, with each window, the frames of the window's time span
(`windowing.frame_window`, frame-aligned window starts); the mixed source keeps a video's
frames JPEG-encoded and decodes only those of the windows in the current batch.
"""

import collections
import os
import time

from absl import logging
import numpy as np

from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.dataset_tools import feature_readers
from tal_tf.inference import windowing

SAVED_MODEL_FILE = "saved_model.pb"


# --------------------------------------------------------------------------- detectors
def resolve_saved_model_dir(path):
  """A SavedModel directory, or the newest numeric version inside a TF Serving base path."""
  if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
    return path
  if os.path.isdir(path):
    versions = sorted(int(n) for n in os.listdir(path)
                      if n.isdigit() and os.path.isfile(os.path.join(path, n, SAVED_MODEL_FILE)))
    if versions:
      return os.path.join(path, str(versions[-1]))
  raise ValueError(f"--saved_model_dir {path!r} holds no saved_model.pb (neither directly nor "
                   "in a numeric version subdirectory)")


class SavedModelDetector:
  """The serving_default signature of an exported SavedModel, called in-process."""

  def __init__(self, export_dir):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tal_tf.export import exporter_lib  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._names = exporter_lib
    self.export_dir = resolve_saved_model_dir(export_dir)
    self._loaded = tf.saved_model.load(self.export_dir)
    if exporter_lib.SERVING_SIGNATURE not in self._loaded.signatures:
      raise ValueError(f"SavedModel {self.export_dir!r} has no "
                       f"{exporter_lib.SERVING_SIGNATURE!r} signature")
    self._fn = self._loaded.signatures[exporter_lib.SERVING_SIGNATURE]
    _, specs = self._fn.structured_input_signature
    self.config = self._load_config()
    streams = [k for k in specs if k not in exporter_lib.RESERVED_INPUT_NAMES]
    self.model_info = exporter_lib.read_model_info(self.export_dir)
    if self.model_info is None:
      # An export without model_info.json: what the signature says, and default merging.
      self.model_info = dict(stream_names=sorted(streams),
                             output_fields=sorted(self._fn.structured_outputs),
                             window_merge=None)
    # The model's stream order (the signature's dict order is alphabetical).
    ordered = list(self.model_info["stream_names"])
    if sorted(ordered) == sorted(streams):
      streams = ordered
    inputs = self.model_info.get("inputs") or {}
    self.lengths_input = inputs.get("lengths", exporter_lib.NUM_STEPS_INPUT)
    self.rate_input = inputs.get("rate", exporter_lib.FEATURE_FPS_INPUT)
    # Feature streams + one frames stream: the frames come with their own length and rate.
    self.frame_lengths_input = inputs.get("frame_lengths", exporter_lib.NUM_FRAMES_INPUT)
    self.frame_rate_input = inputs.get("frame_rate", exporter_lib.FPS_INPUT)
    declared = inputs.get("streams", {})
    self.stream_dims = collections.OrderedDict()
    for s in streams:
      shape = specs[s].shape
      if shape.rank == 5:  # frames [B, T, H, W, 3]
        fps = float(declared.get(s, {}).get("fps", 0.0))
        self.stream_dims[s] = stream_spec.FrameStream(int(shape[2]), int(shape[3]), fps)
      else:
        self.stream_dims[s] = int(shape[-1])
    self.side_stream = side_stream(self.stream_dims)
    self.max_detections = int(
        self._fn.structured_outputs[DetectionFields.detection_scores].shape[1])
    label_map = os.path.join(self.export_dir, exporter_lib.LABEL_MAP_NAME)
    self.label_map_path = label_map if os.path.isfile(label_map) else None

  def _load_config(self):
    from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.export_dir, config_util.PIPELINE_CONFIG_NAME)
    if not os.path.isfile(path):
      return None
    return config_util.load_pipeline_config(path, validate=False)

  def __call__(self, features, num_steps, feature_fps, side=None):
    kwargs = _inputs(self._tf, self.stream_dims, features, self.side_stream, side)
    kwargs[self.lengths_input] = self._tf.constant(num_steps, self._tf.int32)
    kwargs[self.rate_input] = self._tf.constant(feature_fps, self._tf.float32)
    if self.side_stream is not None:
      kwargs[self.frame_lengths_input] = self._tf.constant(side[1], self._tf.int32)
      kwargs[self.frame_rate_input] = self._tf.constant(side[2], self._tf.float32)
    return {k: v.numpy() for k, v in self._fn(**kwargs).items()}


def rate_check(detector, allow=False, length_tolerance=0.1):
  """feature_rates.RateCheck against the training rates of a detector's model_info, naming
  its export (or checkpoint) directory."""
  from tal_tf.utils import feature_rates  # pylint: disable=g-import-not-at-top
  training = (detector.model_info or {}).get(feature_rates.MODEL_INFO_KEY)
  origin = getattr(detector, "export_dir", None) or getattr(detector, "model_dir", None)
  return feature_rates.RateCheck(training, origin or "(unknown)", allow=allow,
                                 length_tolerance=length_tolerance)


def side_stream(stream_dims):
  """The frames stream of a model that also reads feature streams (None otherwise)."""
  frames = [s for s, d in stream_dims.items() if stream_spec.is_frames(d)]
  return frames[0] if frames and len(frames) < len(stream_dims) else None


def _inputs(tf, stream_dims, features, side_name=None, side=None):
  """{stream: tensor of the stream's dtype} (float32 features, uint8 frames); the side
  frames stream `side_name` from side[0]."""
  if side_name is not None and side is None:
    raise ValueError(f"this model also reads the frames stream {side_name!r}: pass side = "
                     "(frames, num_frames, fps)")
  return {s: tf.constant(side[0] if s == side_name else features[s], stream_spec.dtype(spec))
          for s, spec in stream_dims.items()}


class CheckpointDetector:
  """A model built from a pipeline config with checkpoint weights, run through the same
  validated serving function that the exporter saves."""

  def __init__(self, config, checkpoint, max_detections=None):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tal_tf.export import exporter_lib  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._names = exporter_lib
    self.config = config
    self._module = exporter_lib.build_detection_module(config, checkpoint, max_detections)
    self._fn = self._module.serving_function()
    self.stream_dims = self._module.stream_dims
    self.side_stream = self._module.side_frames
    self.max_detections = self._module.max_detections
    self.model_dir = exporter_lib.checkpoint_model_dir(checkpoint)
    self.model_info = exporter_lib.model_info(
        self._module.model, self.stream_dims,
        training_rates=exporter_lib.training_rates_of(checkpoint))
    self.label_map_path = None
    for reader_name in ("eval_input_reader", "train_input_reader"):
      if config.HasField(reader_name) and getattr(config, reader_name).label_map_path:
        self.label_map_path = getattr(config, reader_name).label_map_path
        break

  def __call__(self, features, num_steps, feature_fps, side=None):
    tf = self._tf
    inputs = _inputs(tf, self.stream_dims, features, self.side_stream, side)
    inputs[self._module.lengths_input] = tf.constant(num_steps, tf.int32)
    inputs[self._module.rate_input] = tf.constant(feature_fps, tf.float32)
    if self.side_stream is not None:
      inputs[self._names.NUM_FRAMES_INPUT] = tf.constant(side[1], tf.int32)
      inputs[self._names.FPS_INPUT] = tf.constant(side[2], tf.float32)
    return {k: v.numpy() for k, v in self._fn(inputs).items()}


class _FrameSpan:
  """Frames [a, b) of a video's frames object (same interface: stream, fps, num_frames,
  read(x, y) relative to a)."""

  def __init__(self, frames, a, b):
    self.stream, self.fps = frames.stream, frames.fps
    self._frames, self._a = frames, a
    self.num_frames = b - a

  def read(self, x, y):
    return self._frames.read(self._a + x, self._a + y)


def _window_frames(video, start, end):
  """The frames object to pass with feature steps [start, end) of `video` (a whole video's
  frames when the window is the whole video)."""
  frames = video.frames
  if start == 0 and end >= video.num_steps:
    return frames
  a, b = windowing.frame_window(start, end, video.feature_fps, frames.fps, frames.num_frames)
  return _FrameSpan(frames, a, b)


def _side_batch(name, spec, frames):
  """(frames uint8 [B, F_max, H, W, 3] zero-padded, num_frames int32 [B], fps float32 [B]) of
  videos' or windows' decoded frames (`video_source.MixedVideoSource` frames objects or
  `_FrameSpan`s)."""
  counts = np.array([f.num_frames for f in frames], np.int32)
  batch = np.zeros([len(frames), int(counts.max())] + stream_spec.step_shape(spec), np.uint8)
  for i, f in enumerate(frames):
    batch[i, :f.num_frames] = f.read(0, f.num_frames)[name]
  return batch, counts, np.array([f.fps for f in frames], np.float32)


def post_processing_defaults(detector):
  """Window merging of a detector's model (its `window_merge`, else generic defaults) and
  the windowing of its config: dict with nms_iou_threshold, proposal_nms_iou_threshold,
  max_proposals, window_steps, window_overlap."""
  out = dict(nms_iou_threshold=0.5, proposal_nms_iou_threshold=0.7, max_proposals=300,
             window_steps=0, window_overlap=0.25)
  merge = (detector.model_info or {}).get("window_merge") or {}
  for key in ("nms_iou_threshold", "proposal_nms_iou_threshold", "max_proposals"):
    if key in merge:
      out[key] = merge[key]
  config = detector.config
  if config is not None and config.HasField("export_config"):
    out["window_steps"] = config.export_config.inference_window_steps
    out["window_overlap"] = config.export_config.inference_window_overlap
  return out


# --------------------------------------------------------------------------- the loop
class _VideoState:
  """Detections gathered so far for one video's windows."""

  def __init__(self, video, num_windows):
    self.video = video
    self.remaining = num_windows
    self.single = num_windows == 1
    self.parts = []          # (segments [n,2] s, scores [n], classes [n])
    self.proposal_parts = []  # (segments [p,2] s, scores [p])
    self.error = None


InferenceResult = collections.namedtuple(
    "InferenceResult", ["detections", "proposals", "skipped", "stats"])
InferenceResult.__doc__ = """detections {video_id: {segments [N,2] s, scores [N], classes [N]
ids}}, proposals {video_id: {segments [P,2], scores [P]}} (empty for a model without
proposals), skipped {video_id: reason}, stats
dict (videos, windows, batches, seconds, empty_videos: videos with no feature steps, given
empty results)."""


def run_inference(detector, source, window_steps=0, window_overlap=0.25, batch_size=1,
                  nms_iou_threshold=0.7, proposal_nms_iou_threshold=0.7,
                  max_detections=None, max_proposals=300, progress_every=0):
  """Detects actions in every video of `source` (a feature_readers source).

  Args:
    detector: SavedModelDetector / CheckpointDetector (or any callable with its interface
      and `stream_dims`, `max_detections` attributes).
    source: iterable of (video_id, Video or FeatureError).
    window_steps: window length in feature steps (0 = whole videos).
    window_overlap: fraction of a window shared with the next, in [0, 1).
    batch_size: windows per detector call.
    nms_iou_threshold / proposal_nms_iou_threshold: merge NMS thresholds across windows.
    max_detections: detections kept per video (default the detector's).
    max_proposals: proposals kept per video after merging.
    progress_every: log progress every this many videos (0 = never).
  Returns:
    InferenceResult.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  max_detections = int(max_detections or detector.max_detections)
  side = getattr(detector, "side_stream", None)
  detections, proposals, skipped = {}, {}, {}
  stats = collections.Counter()
  start_time = time.time()
  batch = []

  def finalize(state):
    """Merges a finished video's windows into its final detections and proposals."""
    video_id = state.video.video_id
    if state.error is not None:
      skipped[video_id] = state.error
      return
    if state.single:
      # One window: the model's own (already suppressed) output, unchanged.
      segs, scores, classes = state.parts[0]
      detections[video_id] = dict(segments=segs[:max_detections],
                                  scores=scores[:max_detections],
                                  classes=classes[:max_detections])
      if state.proposal_parts:
        psegs, pscores = state.proposal_parts[0]
        proposals[video_id] = dict(segments=psegs[:max_proposals],
                                   scores=pscores[:max_proposals])
      return
    segs, scores, classes = (np.concatenate(x) for x in zip(*state.parts))
    segs, scores, classes = windowing.merge_detections(
        segs, scores, classes, nms_iou_threshold, max_detections)
    detections[video_id] = dict(segments=segs, scores=scores, classes=classes)
    if not state.proposal_parts:
      return  # The model has no proposals.
    psegs, pscores = (np.concatenate(x) for x in zip(*state.proposal_parts))
    psegs, pscores = windowing.merge_proposals(
        psegs, pscores, proposal_nms_iou_threshold, max_proposals)
    proposals[video_id] = dict(segments=psegs, scores=pscores)

  def flush():
    """Reads, pads and runs the pending windows as one batch; distributes the outputs."""
    if not batch:
      return
    chunks = []
    for state, start, length in batch:
      if state.error is None:
        try:
          chunks.append((state, start, length, state.video.read(start, start + length)))
        except feature_readers.FeatureError as e:
          state.error = str(e)
      if state.error is not None:
        state.remaining -= 1
        if state.remaining == 0:
          finalize(state)
    batch.clear()
    if not chunks:
      return
    t_max = max(c[2] for c in chunks)
    features = {s: np.zeros([len(chunks), t_max] + stream_spec.step_shape(d),
                            stream_spec.dtype(d).as_numpy_dtype)
                for s, d in detector.stream_dims.items() if s != side}
    for i, (_, _, length, values) in enumerate(chunks):
      for s in features:
        features[s][i, :length] = values[s]
    num_steps = np.array([c[2] for c in chunks], np.int32)
    fps = np.array([c[0].video.feature_fps for c in chunks], np.float32)
    if side is None:
      out = detector(features, num_steps, fps)
    else:
      out = detector(features, num_steps, fps, _side_batch(
          side, detector.stream_dims[side],
          [_window_frames(c[0].video, c[1], c[1] + c[2]) for c in chunks]))
    stats["batches"] += 1
    stats["windows"] += len(chunks)
    for i, (state, start, _, _) in enumerate(chunks):
      offset = start / state.video.feature_fps
      n = int(out[DetectionFields.num_detections][i])
      state.parts.append((
          out[DetectionFields.detection_segments][i, :n].astype(np.float64) + offset,
          out[DetectionFields.detection_scores][i, :n].astype(np.float64),
          out[DetectionFields.detection_classes][i, :n].astype(np.int64)))
      if DetectionFields.num_proposals not in out:
        state.remaining -= 1
        if state.remaining == 0:
          finalize(state)
        continue
      p = int(out[DetectionFields.num_proposals][i])
      state.proposal_parts.append((
          out[DetectionFields.proposal_segments][i, :p].astype(np.float64) + offset,
          out[DetectionFields.proposal_scores][i, :p].astype(np.float64)))
      state.remaining -= 1
      if state.remaining == 0:
        finalize(state)

  for video_id, video in source:
    if isinstance(video, Exception):
      skipped[video_id] = str(video)
      logging.warning("skipping video %s: %s", video_id, video)
      continue
    stats["videos"] += 1
    if video.num_steps == 0:
      logging.warning("video %s has no feature steps: empty result", video_id)
      stats["empty_videos"] += 1  # Counted for the CLIs' summaries (an empty file, usually).
      detections[video_id] = dict(segments=np.zeros((0, 2)), scores=np.zeros(0),
                                  classes=np.zeros(0, np.int64))
      if (detector.model_info or {}).get("has_proposals", True):
        proposals[video_id] = dict(segments=np.zeros((0, 2)), scores=np.zeros(0))
      continue
    quantum = 1
    if side is not None:
      if getattr(video, "frames", None) is None:
        skipped[video_id] = f"video {video_id}: no frames for the model's {side!r} stream"
        continue
      if 0 < window_steps < video.num_steps:
        # Frame-aligned window starts (windowing module docstring).
        quantum = windowing.frame_quantum(video.feature_fps, video.frames.fps)
        if quantum is None:
          quantum = 1
          stats["frame_unaligned_videos"] += 1
          logging.warning(
              "video %s: %g frames/s against %g feature steps/s has no whole-frame window start "
              "within %d steps; each window gets the frame nearest its start (off by at most "
              "half a frame)", video_id, video.frames.fps, video.feature_fps,
              windowing.MAX_FRAME_QUANTUM)
    windows = windowing.plan_windows(video.num_steps, window_steps, window_overlap, quantum)
    state = _VideoState(video, len(windows))
    for start, length in windows:
      batch.append((state, start, length))
      if len(batch) >= batch_size:
        flush()
    if progress_every and stats["videos"] % progress_every == 0:
      logging.info("%d videos, %d windows, %.1f s", stats["videos"], stats["windows"],
                   time.time() - start_time)
  flush()
  for video_id, reason in skipped.items():
    logging.warning("video %s skipped: %s", video_id, reason)
  stats["seconds"] = time.time() - start_time
  return InferenceResult(detections, proposals, skipped, dict(stats))


def to_results(detections, id_to_name):
  """{video_id: {segments, scores, classes}} -> {video_id: {segments, labels, scores}} for
  `tal_tf.evaluation.io.write_results` (unknown ids become 'class_<id>')."""
  out = {}
  for video_id, det in detections.items():
    labels = [id_to_name.get(int(c), f"class_{int(c)}") for c in det["classes"]]
    out[video_id] = dict(segments=det["segments"], labels=labels, scores=det["scores"])
  return out
