"""Raw videos as an inference feature source: decode -> features -> `feature_readers.Video`.

`VideoSource(videos, extractor, stream_dims)` iterates like the feature-file sources
(`(video_id, Video or FeatureError)`), extracting each video's features with a
`tal_tf.video.feature_extraction.FeatureExtractor` (usually rebuilt from the
feature_extractor.json written beside the training features, so a new video gets exactly
the features the detector was trained on). A video the decoder refuses is reported as a
FeatureError naming the file and the reason; the others go on. Only one video's features
([T, D] per stream, small) are held at a time.

`write_timeline_png` draws a results dict over each video's time axis (the drawing of the
TensorBoard detection timelines) into a PNG.
"""

import collections

from tal_tf.dataset_tools import feature_readers
from tal_tf.video import decoding


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
    self.files = decoding.list_videos(videos)
    if video_ids:
      self.files = {v: p for v, p in self.files.items() if v in set(video_ids)}
      if not self.files:
        raise ValueError(f"none of --video_ids {list(video_ids)} is a video in {videos!r}")
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
