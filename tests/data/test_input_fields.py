"""The field table: model-declared inputs, what is parsed, kept, padded and cropped."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core.standard_fields import InputFields as F
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import input_fields
from tal_tf.data import input_pipeline
from tal_tf.data import sequence_example as se

DIMS = {"rgb": 3}
FPS = 2.0
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Four videos: two with segments (long, so crops happen), one weak-only, one plain."""
  rng = np.random.default_rng(0)
  path = str(tmp_path_factory.mktemp("fields") / "r-00000-of-00001.tfrecord")
  videos = [
      ("a", 40, [[1.0, 3.0], [14.0, 18.0]], [1, 2], None),
      ("b", 30, [[2.0, 5.0]], [3], [3]),
      ("weak", 25, [], [], [1, 3]),
      ("c", 12, [[0.5, 1.5]], [2], None),
  ]
  with tf.io.TFRecordWriter(path) as writer:
    for vid, steps, segments, labels, video_labels in videos:
      example = se.make_sequence_example(
          vid, steps / FPS, FPS, {"rgb": rng.normal(size=(steps, 3))},
          np.asarray(segments).reshape(-1, 2), labels, ["x"] * len(labels), video_labels)
      writer.write(example.SerializeToString())
  return path, videos


def test_resolve_adds_always_eval_groundtruth_and_requirements():
  out, parsed = input_fields.resolve((F.video_labels,), is_training=True, num_classes=5)
  assert set(out) == set(input_fields.ALWAYS) | {F.video_labels}
  # A weakly supervised model's records are read without their segments: parsed == output.
  assert set(parsed) == set(out)
  out, _ = input_fields.resolve((F.video_labels,), is_training=False, num_classes=5)
  assert set(out) == (set(input_fields.ALWAYS) | {F.video_labels}
                      | set(input_fields.EVAL_GROUNDTRUTH))
  out, _ = input_fields.resolve(None, is_training=True, num_classes=None)
  assert set(out) == set(input_fields.FIELDS) - {F.video_labels}
  out, _ = input_fields.resolve(None, is_training=True, num_classes=2)
  assert set(out) == set(input_fields.FIELDS)
  with pytest.raises(ValueError, match="unknown input field.*'bogus'"):
    input_fields.resolve(("bogus",))
  with pytest.raises(ValueError, match="video_labels.*needs num_classes"):
    input_fields.resolve((F.video_labels,), num_classes=None)


def _batches(dataset, n):
  return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(n)]


def test_pipeline_keeps_only_the_model_fields(records):
  path, videos = records
  # A weakly supervised model: video labels only, cropped training windows.
  train = input_pipeline.build_dataset(path, DIMS, NUM_CLASSES, batch_size=2,
                                       is_training=True, max_steps=10, seed=1,
                                       fields=(F.video_labels,))
  for batch in _batches(train, 6):
    assert set(batch) == set(input_fields.ALWAYS) | {F.video_labels}
    assert batch[F.features]["rgb"].shape == (2, 10, 3)
    assert batch[F.video_labels].shape == (2, NUM_CLASSES)
  # Evaluation of the same model still gets the segment ground truth.
  evaluation = input_pipeline.build_dataset(path, DIMS, NUM_CLASSES, batch_size=4,
                                            is_training=False, fields=(F.video_labels,))
  (batch,) = _batches(evaluation, 1)
  assert set(batch) >= set(input_fields.EVAL_GROUNDTRUTH) | {F.video_labels}
  order = [v.decode() for v in batch[F.video_id]]
  by_id = {v[0]: v for v in videos}
  for row, vid in enumerate(order):
    _, _, segments, labels, video_labels = by_id[vid]
    np.testing.assert_allclose(batch[F.segments_seconds][row][:len(labels)],
                               np.asarray(segments).reshape(-1, 2))
    expected = np.zeros(NUM_CLASSES)
    expected[np.asarray(video_labels or labels, int) - 1] = 1
    np.testing.assert_array_equal(batch[F.video_labels][row], expected)


def test_cropped_training_video_labels_follow_kept_segments(records):
  """Every cropped window's video labels = classes of its kept segments + weak-only ones."""
  path, videos = records
  train = input_pipeline.build_dataset(path, DIMS, NUM_CLASSES, batch_size=1,
                                       is_training=True, max_steps=8, seed=3,
                                       min_kept_fraction=0.5)
  by_id = {v[0]: v for v in videos}
  seen_drop = False
  for batch in _batches(train, 40):
    vid = batch[F.video_id][0].decode()
    _, _, segments, labels, video_labels = by_id[vid]
    kept = set(batch[F.labels][0][:batch[F.num_segments][0]].tolist())
    full = set(video_labels or labels)
    expected = {c for c in full if c in kept or c not in set(labels)}
    got = {c + 1 for c in np.flatnonzero(batch[F.video_labels][0])}
    assert got == expected, (vid, batch[F.window_offset][0])
    seen_drop |= got != full
  assert seen_drop  # The crops did cut some class away.


def test_a_new_field_is_one_table_row(records, monkeypatch):
  """Appending one row makes a field parse, crop, pad and batch with no other change."""
  path, _ = records
  row = input_fields.InputField(
      "num_video_labels", {SEF.video_labels: tf.io.VarLenFeature(tf.int64)},
      lambda c, s, l, d, n: input_fields._per_example_count(c[SEF.video_labels]),  # pylint: disable=protected-access
      lambda t, g, n, d: [], -1, tf.int32, lambda value, window: value, ())
  table = collections.OrderedDict(input_fields.FIELDS)
  table[row.key] = row
  monkeypatch.setattr(input_fields, "FIELDS", table)
  dataset = input_pipeline.build_dataset(path, DIMS, None, batch_size=4, is_training=True,
                                         max_steps=6, seed=0, fields=("num_video_labels",))
  (batch,) = _batches(dataset, 1)
  counts = {v.decode(): n for v, n in zip(batch[F.video_id], batch["num_video_labels"])}
  expected = {"a": 2, "b": 1, "weak": 2, "c": 1}
  assert counts == {v: expected[v] for v in counts}
  parsed = se.parse_sequence_example_batch(
      tf.constant([r for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]), DIMS,
      fields=("num_video_labels",))
  np.testing.assert_array_equal(parsed["num_video_labels"].numpy(), [2, 1, 2, 1])

