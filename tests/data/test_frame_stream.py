"""Frames as an input stream of the shared input pipeline (FeatureStream type FRAMES): JPEG
frame records -> uint8 [B, T, H, W, 3] batches, one step per record frame, cropped before
decoding; chunked records as crops of their video; config and data checks. Frames are
compared with OpenCV's decoding of the same JPEGs, segments with hand-worked values."""
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import InputFields as F
from tal_tf.data import data_checks
from tal_tf.data import input_pipeline
from tal_tf.data import sequence_example
from tal_tf.dataset_tools import create_frame_records
from tal_tf.utils import config_util

H, W, FPS = 12, 16, 10.0
SPEC = {"frames": stream_spec.FrameStream(H, W)}


def _images(n, seed):
  """Smooth random RGB frames (JPEG keeps them close), uint8 [n, H, W, 3]."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, size=(n, 3, 4, 3)).astype(np.float32)
  return np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_LINEAR)
                   for f in small]).astype(np.uint8)


def _write(path, records):
  with tf.io.TFRecordWriter(path) as writer:
    for r in records:
      writer.write(r.SerializeToString())


def _reference(jpegs):
  """Each stored JPEG decoded on its own, [n, H, W, 3] (checked against OpenCV's RGB
  decoding within JPEG decoders' rounding: channel order and frame order are right)."""
  frames = np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in jpegs])
  opencv = np.stack([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                     for j in jpegs])
  # libjpeg builds differ in chroma upsampling by a few levels; a swapped channel or frame
  # order differs by tens.
  assert np.abs(frames.astype(int) - opencv).mean() < 2.0
  return frames


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("frame_stream")
  # Video a: 20 frames at 10 fps, segments [0.5, 1.0] s (frames 5-10) and [1.0, 1.6] s
  # (frames 10-16), labels 1 and 2. Written whole and as two records (frames 0-7, 8-19).
  jpegs = [create_frame_records.encode_jpeg(f) for f in _images(20, 0)]
  segments, labels, names = [[0.5, 1.0], [1.0, 1.6]], [1, 2], ["a", "b"]
  whole = sequence_example.make_frame_sequence_example(
      "a", 2.0, FPS, jpegs, segments, labels, names, height=H, width=W)
  first = sequence_example.make_frame_sequence_example(
      "a", 2.0, FPS, jpegs[:8], segments, labels, names, first_frame=0, num_frames=20,
      height=H, width=W)
  second = sequence_example.make_frame_sequence_example(
      "a", 2.0, FPS, jpegs[8:], segments, labels, names, first_frame=8, num_frames=20,
      height=H, width=W)
  # Video b: 6 frames, no segments.
  jpegs_b = [create_frame_records.encode_jpeg(f) for f in _images(6, 1)]
  video_b = sequence_example.make_frame_sequence_example(
      "b", 0.6, FPS, jpegs_b, [], [], [], height=H, width=W)
  _write(str(root / "whole.tfrecord"), [whole, video_b])
  _write(str(root / "chunked.tfrecord"), [first, second])
  return dict(root=root, jpegs=jpegs, jpegs_b=jpegs_b, whole=str(root / "whole.tfrecord"),
              chunked=str(root / "chunked.tfrecord"))


def _batches(pattern, **kwargs):
  kwargs.setdefault("batch_size", 2)
  dataset = input_pipeline.build_dataset(pattern, SPEC, num_classes=2, shuffle_buffer=0,
                                         **kwargs)
  return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset]


def test_eval_batches_hold_decoded_frames_one_step_per_frame(data):
  (batch,) = _batches(data["whole"], is_training=False)
  frames = batch[F.features]["frames"]
  assert frames.dtype == np.uint8 and frames.shape == (2, 20, H, W, 3)
  np.testing.assert_array_equal(batch[F.num_steps], [20, 6])
  np.testing.assert_allclose(batch[F.feature_fps], [FPS, FPS])
  ref_a, ref_b = _reference(data["jpegs"]), _reference(data["jpegs_b"])
  np.testing.assert_array_equal(frames[0], ref_a)
  np.testing.assert_array_equal(frames[1, :6], ref_b)
  assert not frames[1, 6:].any()  # padding
  # Segments in frame steps: seconds x fps.
  np.testing.assert_allclose(batch[F.segments][0], [[5, 10], [10, 16]], atol=1e-5)
  np.testing.assert_allclose(batch[F.segments_seconds][0], [[0.5, 1.0], [1.0, 1.6]])
  np.testing.assert_array_equal(batch[F.num_segments], [2, 0])
  np.testing.assert_array_equal(batch[F.window_offset], [0, 0])


def test_training_crop_slices_frames_and_shifts_segments(data):
  batches = _batches(data["whole"], is_training=True, repeat=False, max_steps=8,
                     batch_size=1, seed=5)
  ref = _reference(data["jpegs"])
  seen = 0
  for batch in batches:
    if batch[F.video_id][0] != b"a":
      continue
    seen += 1
    frames = batch[F.features]["frames"][0]
    assert frames.shape == (8, H, W, 3)  # static time dim = max_steps
    offset = int(batch[F.window_offset][0])
    assert 0 <= offset <= 12 and batch[F.num_steps][0] == 8
    np.testing.assert_array_equal(frames, ref[offset:offset + 8])
    # Hand-worked: each segment clipped to [offset, offset + 8), kept if >= half survives.
    expected = []
    for s, e in ((5, 10), (10, 16)):
      lo, hi = max(s, offset), min(e, offset + 8)
      if hi > lo and (hi - lo) / (e - s) >= 0.5:
        expected.append([lo - offset, hi - offset])
    g = int(batch[F.num_segments][0])
    np.testing.assert_allclose(batch[F.segments][0][:g], np.reshape(expected, (-1, 2)),
                               atol=1e-5)
  assert seen == 1


def test_a_chunked_video_trains_on_each_record_as_a_crop(data):
  batches = _batches(data["chunked"], is_training=False, batch_size=1)
  assert len(batches) == 2
  first, second = batches
  ref = _reference(data["jpegs"])
  assert first[F.num_steps][0] == 8 and second[F.num_steps][0] == 12
  np.testing.assert_array_equal(second[F.features]["frames"][0], ref[8:])
  np.testing.assert_array_equal([first[F.window_offset][0], second[F.window_offset][0]],
                                [0, 8])
  # Record 1 (frames 0-8): [5, 10] keeps 3 of 5 frames (kept), [10, 16] nothing.
  np.testing.assert_allclose(first[F.segments][0][:first[F.num_segments][0]], [[5, 8]],
                             atol=1e-5)
  # Record 2 (frames 8-20): [5, 10] keeps 2 of 5 (< 0.5: dropped); [10, 16] -> [2, 8].
  assert second[F.num_segments][0] == 1
  np.testing.assert_allclose(second[F.segments][0][:1], [[2, 8]], atol=1e-5)
  np.testing.assert_allclose(second[F.segments_seconds][0][:1], [[0.2, 0.8]], atol=1e-6)
  np.testing.assert_array_equal(second[F.labels][0][:1], [2])


def test_single_and_batched_record_parsers_decode_frames(data):
  raw = list(tf.data.TFRecordDataset(data["whole"]).as_numpy_iterator())
  single = sequence_example.parse_sequence_example(tf.constant(raw[1]), SPEC)
  ref_b = _reference(data["jpegs_b"])
  np.testing.assert_array_equal(single[F.features]["frames"].numpy(), ref_b)
  batched = sequence_example.parse_sequence_example_batch(tf.constant(raw), SPEC)
  frames = batched[F.features]["frames"].numpy()
  assert frames.shape == (2, 20, H, W, 3)
  np.testing.assert_array_equal(frames[1, :6], ref_b)
  assert not frames[1, 6:].any()


def test_frame_stream_config_and_data_checks_name_the_field(data, tmp_path):
  config = config_util.load_pipeline_config(
      os.path.join(os.path.dirname(__file__), "..", "contract", "toy_model.config"))
  reader = config.train_input_reader
  del reader.streams[:]
  stream = reader.streams.add(name="frames", type="FRAMES", frame_height=H)
  with pytest.raises(config_util.ConfigError,
                     match=r"train_input_reader.streams\[0\].frame_width"):
    config_util.validate_input_reader(reader, "x.config", "train_input_reader")
  stream.frame_width = W
  config_util.validate_input_reader(reader, "x.config", "train_input_reader")
  assert config_util.stream_dims(reader) == SPEC
  with pytest.raises(data_checks.DataMismatchError, match=r"12x16.*frame_height x "
                     r"frame_width is 12x20"):
    data_checks.check_first_records([data["whole"]], {"frames": stream_spec.FrameStream(H, 20)},
                                    2, field="train_input_reader")
  data_checks.check_first_records([data["whole"]], SPEC, 2, field="train_input_reader")
  # Feature records read as frames: named as such.
  feature_record = sequence_example.make_sequence_example(
      "c", 1.0, 1.0, {"rgb": np.zeros((2, 3))}, [], [], [])
  path = str(tmp_path / "features.tfrecord")
  _write(path, [feature_record])
  with pytest.raises(data_checks.DataMismatchError, match="no frames/jpeg"):
    data_checks.check_first_records([path], SPEC, 2, field="train_input_reader")
