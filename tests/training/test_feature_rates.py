"""The training feature rates record: what it holds for records at known rates (feature and
frame records, several rates, a video split over records) and what a resumed run does."""
import json
import os

from absl import logging
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.data import sequence_example
from tal_tf.dataset_tools import create_frame_records
from tal_tf.utils import feature_rates

# 16 frames per step of 25 and 30 fps videos (a converter run with --frames_per_step 16).
RATE_25, RATE_30 = 25.0 / 16, 30.0 / 16


def _feature_record(video_id, rate, num_steps, dim=3):
  values = {"rgb": np.random.default_rng(len(video_id)).normal(
      size=(num_steps, dim)).astype(np.float32)}
  return sequence_example.make_sequence_example(
      video_id, num_steps / rate, rate, values, [[0.0, 1.0]], [1], ["Jump"])


def _write(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
  return str(path)


@pytest.fixture()
def two_rates(tmp_path):
  """Three videos over two files: a and b at 25 fps, c at 30 fps (16 frames per step)."""
  _write(tmp_path / "train-0.tfrecord", [_feature_record("a", RATE_25, 40),
                                         _feature_record("c", RATE_30, 7)])
  _write(tmp_path / "train-1.tfrecord", [_feature_record("b", RATE_25, 12)])
  return str(tmp_path / "train-*.tfrecord")


def test_record_contexts_equal_the_full_parse(two_rates):
  for path in tf.io.gfile.glob(two_rates):
    full = [tf.train.SequenceExample.FromString(r.numpy()).context
            for r in tf.data.TFRecordDataset(path)]
    assert list(feature_rates.record_contexts(path)) == full


def test_summary_of_two_rates(two_rates, tmp_path):
  model_dir = str(tmp_path / "run")
  os.makedirs(model_dir)
  summary = feature_rates.record_training_rates(model_dir, [two_rates])
  expected = dict(min=1.5625, max=1.875, videos=3,
                  rates=[dict(fps=1.5625, videos=2), dict(fps=1.875, videos=1)],
                  since_step=0, input_path=[two_rates])
  assert summary == expected
  with open(os.path.join(model_dir, feature_rates.SUMMARY_NAME)) as f:
    assert json.load(f) == expected
  assert feature_rates.read_summary(model_dir) == expected
  # Written atomically: no temporary left beside it.
  assert sorted(os.listdir(model_dir)) == [feature_rates.SUMMARY_NAME]


def test_frame_records_give_the_frame_rate_and_split_videos_count_once(tmp_path):
  """Frame records (feature_fps = the frame rate); a long video cut into two records is one
  video."""
  jpegs = [create_frame_records.encode_jpeg(np.full((8, 8, 3), v, np.uint8))
           for v in (10, 90, 170, 250)]

  def frames(video_id, fps, first, count):
    return sequence_example.make_frame_sequence_example(
        video_id, 4 / fps, fps, jpegs[first:first + count], [[0.0, 0.5]], [1], ["Jump"],
        first_frame=first, num_frames=4, height=8, width=8)
  pattern = _write(tmp_path / "frames.tfrecord",
                   [frames("long", 4.0, 0, 2), frames("long", 4.0, 2, 2),
                    frames("short", 5.0, 0, 4)])
  summary = feature_rates.summarize(feature_rates.scan_rates([pattern]))
  assert summary == dict(min=4.0, max=5.0, videos=2,
                         rates=[dict(fps=4.0, videos=1), dict(fps=5.0, videos=1)])


def test_a_record_without_a_rate_is_named(tmp_path):
  example = _feature_record("a", RATE_25, 5)
  del example.context.feature["video/feature_fps"]
  path = _write(tmp_path / "bad.tfrecord", [_feature_record("b", RATE_25, 5), example])
  with pytest.raises(ValueError, match=r"bad.tfrecord\[record 1\]: video/feature_fps"):
    feature_rates.scan_rates([path])


def test_resume_keeps_widens_or_starts_the_record(two_rates, tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  model_dir = str(tmp_path / "run")
  os.makedirs(model_dir)
  path = os.path.join(model_dir, feature_rates.SUMMARY_NAME)
  first = feature_rates.record_training_rates(model_dir, [two_rates], step=0)
  written = os.stat(path).st_mtime_ns
  # Resumed on the same data: the record stands, untouched.
  assert feature_rates.record_training_rates(model_dir, [two_rates], step=30,
                                             resumed=True) == first
  assert os.stat(path).st_mtime_ns == written and not warnings
  # Resumed on other data (a 50 fps video, and 25 fps ones): the union.
  other = _write(tmp_path / "other.tfrecord", [_feature_record("d", 50.0 / 16, 9),
                                               _feature_record("a", RATE_25, 40)])
  union = feature_rates.record_training_rates(model_dir, [other], step=60, resumed=True)
  assert (union["min"], union["max"], union["videos"]) == (1.5625, 3.125, 4)
  assert union["rates"] == [dict(fps=1.5625, videos=2), dict(fps=1.875, videos=1),
                            dict(fps=3.125, videos=1)]
  assert union["since_step"] == 0 and union["input_path"] == sorted([two_rates, other])
  assert feature_rates.read_summary(model_dir) == union
  assert len(warnings) == 1 and "union 1.5625..3.125 steps/s over 4 videos" in warnings[0]
  # A fresh run (no checkpoint) in the same model_dir replaces it.
  assert feature_rates.record_training_rates(model_dir, [other], step=0)["min"] == 1.5625
  assert feature_rates.read_summary(model_dir)["max"] == 3.125
  assert feature_rates.read_summary(model_dir)["videos"] == 2
  # A run trained before the record existed, resumed at step 40: from step 40 on.
  os.remove(path)
  late = feature_rates.record_training_rates(model_dir, [two_rates], step=40, resumed=True)
  assert late["since_step"] == 40 and late["videos"] == 3
  assert "from step 40 on" in warnings[-1]
