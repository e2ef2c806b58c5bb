"""The inference-side names of the feature readers (one family: tal_tf/dataset_tools/
feature_readers.py, shared with the converter).

Iterating a source yields `(video_id, Video or FeatureError)` pairs, so one bad video is
reported without stopping the others; `Video.read(start, stop)` returns {stream: float32
[stop - start, D]} and raises `FeatureError` naming the file, video and steps when the values
are not finite.
"""

from tal_tf.dataset_tools.feature_readers import FeatureError  # noqa: F401
from tal_tf.dataset_tools.feature_readers import Hdf5Source  # noqa: F401
from tal_tf.dataset_tools.feature_readers import NpyDirSource  # noqa: F401
from tal_tf.dataset_tools.feature_readers import NpyRows  # noqa: F401
from tal_tf.dataset_tools.feature_readers import TfRecordSource  # noqa: F401
from tal_tf.dataset_tools.feature_readers import Video  # noqa: F401
