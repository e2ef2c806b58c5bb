"""Video -> per-snippet features [T, D] per stream (rgb, optical flow), streamed.

Sampling. A video is decoded at `fps` (tal_tf/video/decoding.py), each frame resized so
its short side is `resize_short_side` (default input_size * 256 / 224) and center-cropped to
`input_size` x `input_size`. Snippet t covers frames [t * stride, t * stride + snippet_frames)
(`snippet_stride`, default snippet_frames); snippets start at every multiple of the stride
before the last frame, so a video of N frames gives T = ceil(N / stride) steps at
feature_fps = fps / stride (a last, partial snippet repeats the video's last frame). E.g.
16-frame snippets at 10 fps: 0.625 steps/s, as the TAL-Net features.

Streams. 'rgb' feeds the frames; 'flow' feeds optical-flow images computed with OpenCV
between consecutive decoded frames (frame t's flow is from frame t-1 to t; frame 0's is
zero): DIS (default, fast preset) or Farneback, on the grayscale crops, encoded as an RGB
image (x and y displacement mapped linearly from [-flow_bound, flow_bound] pixels to
[0, 255], magnitude / flow_bound in the third channel), the usual way of feeding flow to an
image network.

Backbones (one per stream; `Backbone` objects map uint8 [N, H, W, 3] to float32 [N, D]):
  * `GardenResNet`: Model Garden's ResNet (official.vision backbones, model id 18/34/50/
    101/152, optional depth_multiplier) applied per frame, global-average-pooled; the
    `frames_per_snippet` frames sampled uniformly from each snippet are averaged. Weights
    come from a local checkpoint (`checkpoint`): a Model Garden image-classification
    checkpoint (its `model.backbone`) or a backbone-only `tf.train.Checkpoint(backbone=...)`;
    random weights only with `random_init=True` (tests, smoke runs).
  * `SavedModelBackbone`: any image SavedModel (frames [N, H, W, 3] -> output [N, D]) or
    video SavedModel (`input_kind='clip'`: [S, L, H, W, 3] -> [S, D]), called through a
    signature, reading the output named `output_tensor`.
Nothing is downloaded: where weights come from is up to the user (see the README).

`FeatureExtractor.from_spec(spec)` rebuilds an extractor from the JSON written beside the
features (`feature_extractor.json`), so inference on a new video uses exactly the settings
the training features were made with.
"""

import collections
import json
import math
import os

import numpy as np

from tal_tf.video import decoding

SPEC_NAME = "feature_extractor.json"
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
STREAMS = ("rgb", "flow")


# --------------------------------------------------------------------------- backbones
class GardenResNet:
  """Model Garden ResNet per frame + global average pooling: uint8 [N, H, W, 3] -> [N, D]."""

  input_kind = "image"

  def __init__(self, model_id=50, depth_multiplier=1.0, checkpoint=None, random_init=False,
               seed=0, mean_rgb=IMAGENET_MEAN_RGB, std_rgb=IMAGENET_STD_RGB):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tf_keras  # pylint: disable=g-import-not-at-top
    check_weights_source(checkpoint, random_init, "GardenResNet")
    tf_keras.utils.set_random_seed(int(seed))
    self.model = build_garden_resnet(model_id, depth_multiplier)
    self.model(tf.zeros([1, 64, 64, 3]), training=False)  # Creates the variables.
    if checkpoint:
      restore_backbone(self.model, checkpoint)
    self._mean = tf.constant(mean_rgb, tf.float32)
    self._std = tf.constant(std_rgb, tf.float32)
    top = top_level(self.model)
    self.dim = int(self.model.output_specs[top][-1])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def embed(frames):
      x = (tf.cast(frames, tf.float32) - self._mean) / self._std
      endpoints = self.model(x, training=False)
      return tf.reduce_mean(endpoints[top], axis=[1, 2])
    self._embed = embed

  def __call__(self, frames):
    return self._embed(np.asarray(frames, np.uint8)).numpy()


def check_weights_source(checkpoint, random_init, what):
  """Raises ValueError unless exactly one of a checkpoint and random_init is given: a
  pretrained backbone must not silently start from random weights."""
  if not checkpoint and not random_init:
    raise ValueError(f"{what} needs weights: give a checkpoint (see the README for where to "
                     "get one) or random_init=True for tests")
  if checkpoint and random_init:
    raise ValueError(f"{what}: give a checkpoint or random_init, not both")


def build_garden_resnet(model_id=50, depth_multiplier=1.0):
  """Model Garden's ResNet (official.vision backbones) for images of any size: a Keras model
  float32 [N, H, W, 3] -> {level: [N, H / 2^level, W / 2^level, C]} (levels '2'..'5').
  model_id: 18, 34, 50, 101, 152, ...; depth_multiplier scales the widths."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  from official.vision.modeling.backbones import resnet  # pylint: disable=g-import-not-at-top
  return resnet.ResNet(model_id=int(model_id), depth_multiplier=float(depth_multiplier),
                       input_specs=tf_keras.layers.InputSpec(shape=[None, None, None, 3]))


def top_level(backbone):
  """Name of a Model Garden backbone's coarsest output level (e.g. '5')."""
  return str(max(int(k) for k in backbone.output_specs))


def restore_backbone(backbone, path):
  """Restores a Keras backbone from a checkpoint (file prefix or directory): a Model Garden
  classification checkpoint (`model.backbone`) or `tf.train.Checkpoint(backbone=...)`.
  Raises ValueError naming the path when neither layout matches all backbone variables."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
  if not prefix or not tf.io.gfile.exists(prefix + ".index"):
    raise ValueError(f"backbone checkpoint {path!r}: no checkpoint found")
  from tal_tf.training import checkpoint_util  # pylint: disable=g-import-not-at-top
  errors = []
  for layout in ("model.backbone", "backbone"):
    root = tf.train.Checkpoint(backbone=backbone)
    if layout == "model.backbone":
      root = tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=backbone))
    try:
      # A variable of another shape (another depth or width) fails inside read(); a damaged
      # file is named too (CheckpointReadError).
      checkpoint_util.restore_checked(root, prefix, what="backbone checkpoint")
      return layout
    except checkpoint_util.CheckpointReadError as e:
      errors.append(f"{layout}: {str(e).splitlines()[0]}")
  raise ValueError(f"backbone checkpoint {prefix!r} does not hold this backbone's variables "
                   f"(tried {'; '.join(errors)})")


class SavedModelBackbone:
  """A SavedModel signature as a backbone. input_kind 'image': [N, H, W, 3] -> [N, D];
  'clip': [S, L, H, W, 3] -> [S, D]. Pixels are passed as float32 scaled to
  [0, pixel_range] (TF Hub image convention: 1.0)."""

  def __init__(self, saved_model_dir, output_tensor=None, signature="serving_default",
               input_kind="image", pixel_range=1.0):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if input_kind not in ("image", "clip"):
      raise ValueError(f"input_kind must be 'image' or 'clip', got {input_kind!r}")
    self._tf = tf
    self.input_kind = input_kind
    self.pixel_range = float(pixel_range)
    self._loaded = tf.saved_model.load(saved_model_dir)
    if signature not in self._loaded.signatures:
      raise ValueError(f"SavedModel {saved_model_dir!r} has no signature {signature!r} "
                       f"(has {sorted(self._loaded.signatures)})")
    self._fn = self._loaded.signatures[signature]
    _, inputs = self._fn.structured_input_signature
    if len(inputs) != 1:
      raise ValueError(f"SavedModel {saved_model_dir!r} signature {signature!r} takes "
                       f"{sorted(inputs)}; expected a single image/clip input")
    self._input_name = next(iter(inputs))
    outputs = self._fn.structured_outputs
    if output_tensor is None:
      if len(outputs) != 1:
        raise ValueError(f"SavedModel {saved_model_dir!r} has outputs {sorted(outputs)}: "
                         "name one with --output_tensor")
      output_tensor = next(iter(outputs))
    if output_tensor not in outputs:
      raise ValueError(f"SavedModel {saved_model_dir!r} has no output {output_tensor!r} "
                       f"(has {sorted(outputs)})")
    self.output_tensor = output_tensor
    self.dim = int(outputs[output_tensor].shape[-1])

  def __call__(self, frames):
    tf = self._tf
    x = tf.constant(np.asarray(frames, np.float32) * (self.pixel_range / 255.0))
    out = self._fn(**{self._input_name: x})[self.output_tensor].numpy()
    return out.reshape(out.shape[0], -1)


def build_backbone(spec):
  """Backbone from a stream's spec dict (see FeatureExtractor.spec)."""
  kind = spec.get("backbone")
  if kind == "resnet":
    return GardenResNet(model_id=spec.get("model_id", 50),
                        depth_multiplier=spec.get("depth_multiplier", 1.0),
                        checkpoint=spec.get("checkpoint"),
                        random_init=spec.get("random_init", False), seed=spec.get("seed", 0))
  if kind == "saved_model":
    return SavedModelBackbone(spec["saved_model_dir"], spec.get("output_tensor"),
                              spec.get("signature", "serving_default"),
                              spec.get("input_kind", "image"), spec.get("pixel_range", 1.0))
  raise ValueError(f"unknown backbone {kind!r}; expected 'resnet' or 'saved_model'")


# --------------------------------------------------------------------------- flow
def flow_image(flow, bound=20.0):
  """Optical flow [H, W, 2] (pixels) -> uint8 RGB [H, W, 3]: x, y mapped from
  [-bound, bound] to [0, 255] and magnitude / bound (clipped to 1) * 255."""
  xy = np.clip(flow / bound, -1.0, 1.0)
  mag = np.minimum(np.sqrt(np.sum(flow * flow, axis=-1)) / bound, 1.0)
  out = np.empty(flow.shape[:2] + (3,), np.uint8)
  out[..., 0] = np.round(127.5 + 127.5 * xy[..., 0])
  out[..., 1] = np.round(127.5 + 127.5 * xy[..., 1])
  out[..., 2] = np.round(255.0 * mag)
  return out


class FlowComputer:
  """Consecutive-frame optical flow images (OpenCV DIS or Farneback), one per frame."""

  def __init__(self, method="dis", bound=20.0):
    import cv2  # pylint: disable=g-import-not-at-top
    self._cv2 = cv2
    if method == "dis":
      self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    elif method != "farneback":
      raise ValueError(f"flow method must be 'dis' or 'farneback', got {method!r}")
    self.method = method
    self.bound = float(bound)
    self._previous = None

  def __call__(self, image):
    """uint8 RGB [H, W, 3] -> flow image uint8 [H, W, 3] from the previous frame to it."""
    cv2 = self._cv2
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    previous, self._previous = self._previous, gray
    if previous is None:
      return flow_image(np.zeros(gray.shape + (2,), np.float32), self.bound)
    if self.method == "dis":
      flow = self._dis.calc(previous, gray, None)
    else:
      flow = cv2.calcOpticalFlowFarneback(previous, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return flow_image(flow, self.bound)


# --------------------------------------------------------------------------- snippets
def snippet_starts(num_frames, stride):
  """Start frames of the snippets of a num_frames video: 0, stride, ... < num_frames."""
  return list(range(0, int(num_frames), int(stride)))


def snippet_sample(start, snippet_frames, frames_per_snippet, num_frames):
  """Frame indices [frames_per_snippet] sampled uniformly in [start, start + L), clamped to
  the last frame (so a partial last snippet repeats it)."""
  i = np.arange(frames_per_snippet)
  idx = start + np.floor((i + 0.5) * snippet_frames / frames_per_snippet).astype(np.int64)
  return np.minimum(idx, num_frames - 1)


def center_crop(image, size):
  """uint8 [H, W, 3] -> its central size x size crop."""
  h, w = image.shape[:2]
  y, x = (h - size) // 2, (w - size) // 2
  return image[y:y + size, x:x + size]


class FeatureExtractor:
  """Streams a video into {stream: float32 [T, D]} (see the module doc)."""

  def __init__(self, backbones, fps=10.0, snippet_frames=16, snippet_stride=None,
               frames_per_snippet=None, input_size=224, resize_short_side=None,
               flow_method="dis", flow_bound=20.0, batch_snippets=8, specs=None):
    """backbones: {stream ('rgb' / 'flow'): Backbone}; the rest as the module doc."""
    unknown = [s for s in backbones if s not in STREAMS]
    if unknown or not backbones:
      raise ValueError(f"streams must be among {STREAMS}, got {list(backbones)}")
    self.backbones = collections.OrderedDict((s, backbones[s]) for s in STREAMS
                                             if s in backbones)
    self.fps = float(fps)
    self.snippet_frames = int(snippet_frames)
    self.snippet_stride = int(snippet_stride or snippet_frames)
    self.frames_per_snippet = int(frames_per_snippet or snippet_frames)
    if min(self.fps, self.snippet_frames, self.snippet_stride, self.frames_per_snippet) <= 0:
      raise ValueError("fps, snippet_frames, snippet_stride and frames_per_snippet must be > 0")
    self.input_size = int(input_size)
    self.resize_short_side = int(resize_short_side or round(self.input_size * 256 / 224))
    self.flow_method = flow_method
    self.flow_bound = float(flow_bound)
    self.batch_snippets = int(batch_snippets)
    self.feature_fps = self.fps / self.snippet_stride
    self.stream_dims = collections.OrderedDict((s, b.dim) for s, b in self.backbones.items())
    self._stream_specs = specs or {}

  @classmethod
  def from_spec(cls, spec):
    """Rebuilds the extractor described by a spec dict (or the path of its JSON file)."""
    if isinstance(spec, str):
      with open(spec, encoding="utf-8") as f:
        spec = json.load(f)
    streams = spec.get("streams") or {}
    if not streams:
      raise ValueError("feature extractor spec names no stream")
    backbones = {s: build_backbone(b) for s, b in streams.items()}
    return cls(backbones, fps=spec["fps"], snippet_frames=spec["snippet_frames"],
               snippet_stride=spec.get("snippet_stride"),
               frames_per_snippet=spec.get("frames_per_snippet"),
               input_size=spec.get("input_size", 224),
               resize_short_side=spec.get("resize_short_side"),
               flow_method=spec.get("flow_method", "dis"),
               flow_bound=spec.get("flow_bound", 20.0),
               batch_snippets=spec.get("batch_snippets", 8), specs=streams)

  def spec(self):
    """JSON-ready description (what from_spec reads; written beside the features)."""
    return {"fps": self.fps, "snippet_frames": self.snippet_frames,
            "snippet_stride": self.snippet_stride,
            "frames_per_snippet": self.frames_per_snippet, "input_size": self.input_size,
            "resize_short_side": self.resize_short_side, "flow_method": self.flow_method,
            "flow_bound": self.flow_bound, "batch_snippets": self.batch_snippets,
            "feature_fps": self.feature_fps, "stream_dims": dict(self.stream_dims),
            "streams": {s: self._stream_specs.get(s, {}) for s in self.backbones}}

  def num_steps(self, num_frames):
    """Feature steps for a video of num_frames decoded frames: ceil(N / stride)."""
    return int(math.ceil(num_frames / self.snippet_stride))

  def _inputs(self, path):
    """Yields (frame index, {stream: uint8 [S, S, 3] network input}) for every frame."""
    flow = FlowComputer(self.flow_method, self.flow_bound) if "flow" in self.backbones \
        else None
    for frame in decoding.iter_frames(path, fps=self.fps,
                                      short_side=self.resize_short_side):
      crop = center_crop(frame.image, self.input_size)
      inputs = {}
      if "rgb" in self.backbones:
        inputs["rgb"] = crop
      if flow is not None:
        inputs["flow"] = flow(crop)
      yield frame.index, inputs

  def extract(self, path, progress=None):
    """{stream: float32 [T, D]} of one video file; raises decoding.VideoError.

    Memory: the last snippet_frames network inputs plus batch_snippets snippets' sampled
    frames, whatever the video's length. progress(num_snippets_done) is called per batch.
    """
    window = collections.deque()          # (index, inputs) of the most recent frames.
    pending = []                          # (start, {stream: [m, S, S, 3]}) awaiting a batch.
    outputs = {s: [] for s in self.backbones}
    next_start = 0
    done = 0
    count = 0

    def run_batch():
      nonlocal done
      if not pending:
        return
      for stream, backbone in self.backbones.items():
        stack = np.stack([p[1][stream] for p in pending])   # [B, m, S, S, 3]
        if getattr(backbone, "input_kind", "image") == "clip":
          feats = backbone(stack)
        else:
          b, m = stack.shape[:2]
          feats = backbone(stack.reshape((b * m,) + stack.shape[2:]))
          feats = feats.reshape(b, m, -1).mean(axis=1)
        outputs[stream].append(np.asarray(feats, np.float32))
      done += len(pending)
      pending.clear()
      if progress is not None:
        progress(done)

    def take(start, last_index):
      """Queues the snippet starting at `start`, the video's frames ending at last_index."""
      idx = snippet_sample(start, self.snippet_frames, self.frames_per_snippet,
                           last_index + 1)
      by_index = dict(window)
      pending.append((start, {s: np.stack([by_index[i][s] for i in idx])
                              for s in self.backbones}))
      if len(pending) >= self.batch_snippets:
        run_batch()

    for index, inputs in self._inputs(path):
      count = index + 1
      window.append((index, inputs))
      while window[0][0] < index - self.snippet_frames + 1:
        window.popleft()
      # The snippet starting at next_start is complete once its last frame arrived.
      while next_start + self.snippet_frames - 1 <= index:
        take(next_start, index)
        next_start += self.snippet_stride
    while next_start < count:
      # Partial snippets at the end: frames past the end repeat the last one.
      while window and window[0][0] < next_start:
        window.popleft()
      take(next_start, count - 1)
      next_start += self.snippet_stride
    run_batch()
    return {s: (np.concatenate(v) if v else np.zeros((0, self.stream_dims[s]), np.float32))
            for s, v in outputs.items()}


def spec_for(stream_backbones, **settings):
  """A spec dict (FeatureExtractor.from_spec input) from per-stream backbone specs and the
  sampling settings (fps, snippet_frames, ...)."""
  spec = dict(settings)
  spec["streams"] = dict(stream_backbones)
  return spec
