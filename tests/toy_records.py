"""The contract test's toy model on a few converted synthetic videos: the shared set-up of the
training tests that need real records but no particular content (phases, faults, data checks,
multi-worker)."""
import glob
import os

from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import synthetic_thumos
from tal_tf.utils import config_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "tests", "contract", "toy_model.config")
NUM_CLASSES = 20  # synthetic_thumos's classes, the toy config's num_classes


def make_records(root, num_videos, num_shards):
  """Synthetic videos (rgb 6-d, flow 4-d, 1 feature/s) converted to `num_shards` shards.

  Returns {root, train (the shards' glob), files (the shards, sorted), label_map}.
  """
  root = str(root)
  paths = synthetic_thumos.generate_dataset(
      os.path.join(root, "data"), subsets=("validation",), num_videos=num_videos,
      stream_dims={"rgb": 6, "flow": 4}, feature_fps=1.0, seed=0)
  source = feature_readers.NpyDirSource(paths["features"], None)
  create_tfrecord.convert_dataset(
      paths["annotations"], os.path.join(root, "train"), paths["label_map"], source,
      subset="validation", num_shards=num_shards, feature_fps=1.0,
      ignore_classes=("Ambiguous",), progress_stream=None)
  pattern = os.path.join(root, "train-*.tfrecord")
  return dict(root=root, train=pattern, files=sorted(glob.glob(pattern)),
              label_map=paths["label_map"])


def toy_config(records, override=""):
  """The toy config (with `override`) training on `records`, without an eval reader."""
  config = config_util.load_pipeline_config(TOY_CONFIG, override)
  config.ClearField("eval_input_reader")
  reader = config.train_input_reader
  reader.input_path[:] = [records["train"]]
  reader.label_map_path = records["label_map"]
  return config
