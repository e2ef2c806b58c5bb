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
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tal_tf.dataset_tools import create_frame_records  # pylint: disable=g-import-not-at-top
    size = (int(self.spec.width), int(self.spec.height))
    for video_id, path in self.files.items():
      try:
        jpegs = [create_frame_records.encode_jpeg(f.image, self.jpeg_quality)
                 for f in decoding.iter_frames(path, fps=self.fps, size=size)]
      except decoding.VideoError as e:
        yield video_id, feature_readers.FeatureError(f"{e.kind}: {e.message}")
        continue
      self.durations[video_id] = len(jpegs) / self.fps

      def read(a, b, jpegs=jpegs):
        decoded = [tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs[a:b]]
        import numpy as np  # pylint: disable=g-import-not-at-top
        shape = [0] + stream_spec.step_shape(self.spec)
        return {self.stream: np.stack(decoded) if decoded else np.zeros(shape, np.uint8)}
      yield video_id, feature_readers.Video(video_id, len(jpegs), self.fps, read, path)


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
