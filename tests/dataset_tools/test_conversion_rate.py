"""A feature rate that disagrees with every video (a wrong --feature_fps) stops the
conversion with one line giving the measured rate; one disagreeing video stays a quirk."""

import glob
import os

import numpy as np
import pytest

from tal_tf.dataset_tools import create_tfrecord
from tal_tf.dataset_tools import feature_readers
from tal_tf.dataset_tools import synthetic_thumos

FPS = 2.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("rate"))
  return synthetic_thumos.generate_dataset(
      os.path.join(root, "data"), subsets=("test",), num_videos=3,
      stream_dims={"rgb": 4, "flow": 4}, feature_fps=FPS, seed=0)


def _convert(dataset, prefix, **kwargs):
  source = feature_readers.NpyDirSource(dataset["features"], None)
  return create_tfrecord.convert_dataset(
      dataset["annotations"], prefix, dataset["label_map"], source, subset="test",
      ignore_classes=("Ambiguous",), progress_stream=None, **kwargs)


def test_a_rate_wrong_for_every_video_is_an_error_and_writes_nothing(dataset, tmp_path):
  prefix = str(tmp_path / "records" / "test")
  with pytest.raises(create_tfrecord.ConversionError) as info:
    _convert(dataset, prefix, feature_fps=10 * FPS)
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith("--feature_fps=20: all 3 converted videos have num_steps far "
                            "from duration x rate (e.g. video_test_")
  assert "the features run at about 2 steps/s" in message
  assert os.listdir(tmp_path / "records") == []   # No shard, no summary, no temporary.


def test_frames_per_step_wrong_for_every_video_is_an_error(dataset, tmp_path):
  # The JSON's videos are at 30 fps: 15 frames per step is 2 steps/s, 1.5 is 20.
  with pytest.raises(create_tfrecord.ConversionError, match=r"^--frames_per_step: all 3 "):
    _convert(dataset, str(tmp_path / "test"), frames_per_step=1.5)
  assert _convert(dataset, str(tmp_path / "ok"), frames_per_step=15.0).num_written == 3


def test_the_right_rate_or_a_wide_tolerance_converts(dataset, tmp_path):
  summary = _convert(dataset, str(tmp_path / "right"), feature_fps=FPS)
  assert summary.num_written == 3
  assert summary.report.counts["length_inconsistent"] == 0
  # Told to accept the difference, the conversion proceeds (and the quirk is gone).
  wide = _convert(dataset, str(tmp_path / "wide"), feature_fps=10 * FPS, length_tolerance=10.0)
  assert wide.num_written == 3
  assert len(glob.glob(str(tmp_path / "wide-*.tfrecord"))) == 1


def test_one_video_off_stays_a_counted_quirk(dataset, tmp_path):
  # Cut one video's features to a third: its length disagrees, the others agree.
  features = {s: str(tmp_path / "features" / s) for s in dataset["features"]}
  ids = sorted(os.path.basename(p)[:-4]
               for p in glob.glob(os.path.join(dataset["features"]["rgb"], "*.npy")))
  for stream, directory in features.items():
    os.makedirs(directory)
    for i, video_id in enumerate(ids):
      values = np.load(os.path.join(dataset["features"][stream], video_id + ".npy"))
      np.save(os.path.join(directory, video_id + ".npy"),
              values[:len(values) // 3] if i == 0 else values)
  source = feature_readers.NpyDirSource(features, None)
  summary = create_tfrecord.convert_dataset(
      dataset["annotations"], str(tmp_path / "one_off"), dataset["label_map"], source,
      subset="test", feature_fps=FPS, ignore_classes=("Ambiguous",), progress_stream=None)
  assert summary.num_written == 3
  assert summary.report.videos("length_inconsistent") == [ids[0]]
