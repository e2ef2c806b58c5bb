"""Raw videos as an inference feature source: decode -> features -> `feature_readers.Video`.

`VideoSource(videos, extractor, stream_dims)` iterates like the feature-file sources
(`(video_id, Video or FeatureError)`), extracting each video's features with a
`tal_tf.video.feature_extraction.FeatureExtractor` (usually rebuilt from the
feature_extractor.json written beside the training features, so a new video gets exactly
the features the detector was trained on). A video the decoder refuses is reported as a
FeatureError naming the file and the reason; the others go on. Only one video's features
([T, D] per stream, small) are held at a time.

`FrameVideoSource(videos, stream_dims)` serves a model that reads frames (an exported model
whose stream is frames, e.g. S-CNN's C3D): each video is decoded at the model's frame rate
and frame size (model_info.json) and kept as JPEGs, encoded and decoded exactly as the frame
records the model was trained on (create_frame_records, tf.io.decode_jpeg), so memory holds
one video's JPEGs plus one window of decoded frames.

`MixedVideoSource(features, videos, stream_dims)` serves a model reading feature streams
and one frames stream (ETP with the frame Actionness Network): the feature source's videos
matched by id with the video files, each decoded as FrameVideoSource does.

`write_timeline_png` draws a results dict over each video's time axis (the drawing of the
TensorBoard detection timelines) into a PNG.
"""

import collections

from tal_tf.core import stream_spec
from tal_tf.dataset_tools import feature_readers
from tal_tf.video import decoding


def _video_files(videos, video_ids=None):
  """{video_id: path} of a video file or folder, narrowed to `video_ids` when given."""
  files = decoding.list_videos(videos)
  if video_ids:
    files = {v: p for v, p in files.items() if v in set(video_ids)}
    if not files:
      raise ValueError(f"none of --video_ids {list(video_ids)} is a video in {videos!r}")
  return files


class VideoSource:
  """Videos (a file or a directory) -> features on the fly; see the module doc."""

  def __init__(self, videos, extractor, stream_dims, video_ids=None):
    """videos: path; extractor: FeatureExtractor; stream_dims: the detector's {stream: D}."""
    self.extractor = extractor
    self.stream_dims = collections.OrderedDict(stream_dims)
    got = dict(extractor.stream_dims)
    if got != dict(self.stream_dims):
      raise ValueError(f"the feature extractor gives streams {got}, the model reads "
                       f"{dict(self.stream_dims)}: use the extractor the training features "
                       "were made with")
    self.files = _video_files(videos, video_ids)
    self.durations = {}

  def __iter__(self):
    for video_id, path in self.files.items():
      try:
        features = self.extractor.extract(path)
      except decoding.VideoError as e:
        yield video_id, feature_readers.FeatureError(f"{e.kind}: {e.message}")
        continue
      num_steps = min(v.shape[0] for v in features.values())
      fps = self.extractor.feature_fps
      self.durations[video_id] = num_steps / fps

      def read(a, b, features=features):
        return {s: features[s][a:b] for s in self.stream_dims}
      yield video_id, feature_readers.Video(video_id, num_steps, fps, read, path)


class FrameVideoSource:
  """Videos (a file or a directory) -> JPEG frames at the model's rate and size; see the
  module doc. Yields (video_id, feature_readers.Video whose read(a, b) gives {stream: uint8
  [b - a, H, W, 3]}, feature_fps = the frame rate) or a FeatureError."""

  def __init__(self, videos, stream_dims, fps=None, video_ids=None, jpeg_quality=90):
    """stream_dims: the detector's {stream: FrameStream}; fps: frames per second (default
    the model's recorded frame rate)."""
    frames = {s: d for s, d in stream_dims.items() if stream_spec.is_frames(d)}
    if len(frames) != 1 or len(stream_dims) != 1:
      raise ValueError(f"a frame source serves a model reading one frame stream, got "
                       f"{dict(stream_dims)}")
    (self.stream, self.spec), = frames.items()
    self.fps = float(fps or self.spec.fps or 0.0)
    if not self.fps > 0:
      raise ValueError("the model does not record the frame rate it was trained on: give "
                       "--frame_rate")
    self.stream_dims = dict(stream_dims)
    self.jpeg_quality = int(jpeg_quality)
    self.files = _video_files(videos, video_ids)
    self.durations = {}

  def __iter__(self):
    for video_id, path in self.files.items():
      try:
        frames = _DecodedFrames(self.stream, self.spec, path, self.fps, self.jpeg_quality)
      except decoding.VideoError as e:
        yield video_id, feature_readers.FeatureError(f"{e.kind}: {e.message}")
        continue
      self.durations[video_id] = frames.num_frames / self.fps
      yield video_id, feature_readers.Video(video_id, frames.num_frames, self.fps,
                                            frames.read, path)


class _DecodedFrames:
  """One video decoded at `fps` and the frame size of `spec`, held as JPEGs (encoded and
  decoded exactly as the frame records the model was trained on: create_frame_records,
  tf.io.decode_jpeg); raises decoding.VideoError."""

  def __init__(self, stream, spec, path, fps, jpeg_quality):
    from tal_tf.dataset_tools import create_frame_records  # pylint: disable=g-import-not-at-top
    self.stream, self.spec, self.fps = stream, spec, float(fps)
    size = (int(spec.width), int(spec.height))
    self._jpegs = [create_frame_records.encode_jpeg(f.image, jpeg_quality)
                   for f in decoding.iter_frames(path, fps=self.fps, size=size)]
    self.num_frames = len(self._jpegs)

  def read(self, a, b):
    """{stream: uint8 [b - a, H, W, 3]} of frames [a, b)."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    decoded = [tf.io.decode_jpeg(j, channels=3).numpy() for j in self._jpegs[a:b]]
    shape = [0] + stream_spec.step_shape(self.spec)
    return {self.stream: np.stack(decoded) if decoded else np.zeros(shape, np.uint8)}


class MixedVideoSource:
  """Feature files plus decoded frames for a model reading feature streams and one frames
  stream (e.g. ETP with the frame Actionness Network): each video of `features` (a
  feature_readers source of the feature streams) is matched by id with the video file of
  `videos`, decoded at the model's frame rate and size. Yields (video_id,
  feature_readers.Video with a `frames` attribute: an object with stream, fps, num_frames
  and read(a, b) -> {stream: uint8 [b - a, H, W, 3]}) or a FeatureError naming the missing
  part (no video file, no features, undecodable video)."""

  def __init__(self, features, videos, stream_dims, fps=None, video_ids=None,
               jpeg_quality=90):
    """features: feature source of the feature streams; videos: a file or folder;
    stream_dims: the detector's {stream: D or FrameStream}; fps: frames per second (default
    the model's recorded frame rate)."""
    frames = {s: d for s, d in stream_dims.items() if stream_spec.is_frames(d)}
    if len(frames) != 1 or len(stream_dims) < 2:
      raise ValueError(f"a mixed source serves a model reading feature streams and one frame "
                       f"stream, got {dict(stream_dims)}")
    (self.stream, self.spec), = frames.items()
    self.fps = float(fps or self.spec.fps or 0.0)
    if not self.fps > 0:
      raise ValueError("the model does not record the frame rate it was trained on: give "
                       "--frame_rate")
    self.features = features
    self.videos = videos
    self.jpeg_quality = int(jpeg_quality)
    self.files = _video_files(videos, video_ids)
    self.durations = {}

  def __iter__(self):
    seen = set()
    for video_id, video in self.features:
      seen.add(video_id)
      if isinstance(video, Exception):
        yield video_id, video
        continue
      path = self.files.get(video_id)
      if path is None:
        yield video_id, feature_readers.FeatureError(
            "video_missing", f"video {video_id}: features but no video file in --video "
            f"{self.videos!r}")
        continue
      try:
        video.frames = _DecodedFrames(self.stream, self.spec, path, self.fps,
                                      self.jpeg_quality)
      except decoding.VideoError as e:
        yield video_id, feature_readers.FeatureError(e.kind, f"{path}: {e.message}")
        continue
      if video.feature_fps:
        self.durations[video_id] = video.num_steps / video.feature_fps
      # The decoded video's own length, against which the features' num_steps / rate is
      # checked (feature_rates.RateCheck).
      video.duration = video.frames.num_frames / self.fps
      video.duration_source = path
      yield video_id, video
    for video_id, path in self.files.items():
      if video_id not in seen:
        yield video_id, feature_readers.FeatureError(
            "features_missing", f"video {video_id}: video file {path} but no features in "
            "the feature source")


def write_timeline_png(path, results_by_video, durations=None, top_k=10,
                       groundtruth=None):
  """Draws each video's top_k detections over its time axis into a PNG at `path`.

  results_by_video: {video_id: {segments [N, 2] s, labels [N], scores [N]}} (what
  `inference_lib.to_results` returns); durations: {video_id: seconds} for the axis;
  groundtruth: optional {video_id: {segments, labels}} (evaluation.io.load_annotations) drawn
  in the row above.
  """
  from matplotlib import image as mpimg  # pylint: disable=g-import-not-at-top
  from tal_tf.evaluation import visualization  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import atomic_files  # pylint: disable=g-import-not-at-top
  video_ids = sorted(results_by_video)
  picture = visualization.plot_detection_timelines(groundtruth or {}, results_by_video,
                                                   video_ids,
                                                   top_k=top_k, durations=durations)
  with atomic_files.atomic_output(path) as tmp:
    mpimg.imsave(tmp, picture, format="png")
  return picture.shape
