"""Class-aware batching: the K-classes x >= M-videos constraint on every batch, determinism,
checkpointable iterators and clear errors when the data cannot satisfy it."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from tal_tf.builders import input_reader_builder
from tal_tf.core.standard_fields import InputFields as F
from tal_tf.data import class_aware_sampler
from tal_tf.data import input_pipeline
from tal_tf.data import sequence_example as se
from tal_tf.protos import input_reader_pb2

DIMS = {"rgb": 2}
NUM_CLASSES = 6
FPS = 1.0


def _write(directory, labels_per_video, num_shards=3, name="r"):
  """One record per video; video i has video-level label ids labels_per_video[i]."""
  rng = np.random.default_rng(1)
  paths = [os.path.join(directory, f"{name}-{i:05d}-of-{num_shards:05d}.tfrecord")
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i, ids in enumerate(labels_per_video):
    steps = int(rng.integers(3, 9))
    example = se.make_sequence_example(
        f"v{i:03d}", steps / FPS, FPS, {"rgb": rng.normal(size=(steps, 2))},
        np.zeros((0, 2)), [], [], video_labels=list(ids))
    writers[i % num_shards].write(example.SerializeToString())
  for w in writers:
    w.close()
  return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Single-label videos: class c (1..6) has 4 + c videos; plus 6 two-label videos."""
  labels = [(c,) for c in range(1, NUM_CLASSES + 1) for _ in range(4 + c)]
  labels += [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 1)]
  directory = str(tmp_path_factory.mktemp("class_aware"))
  return labels, _write(directory, labels), directory


def _id_batches(dataset, n):
  return [[v.decode() for v in b[F.video_id].numpy()] for b in dataset.take(n)]


def _assign(batch_ids, labels_by_id, k, m):
  """True if the batch's videos can be split into k classes with >= m videos each, every
  video counted for one class it carries (bipartite check by brute force over classes)."""
  import itertools  # pylint: disable=g-import-not-at-top
  classes = sorted({c for v in batch_ids for c in labels_by_id[v]})
  for chosen in itertools.combinations(classes, k):
    # Greedy is not exact for multi-label; small sizes: try every assignment via flow.
    need = {c: m for c in chosen}
    if _max_flow_fill(batch_ids, labels_by_id, need):
      return True
  return False


def _max_flow_fill(videos, labels_by_id, need):
  """Augmenting-path matching: can every class c get need[c] distinct videos carrying it?"""
  slots = [c for c, n in need.items() for _ in range(n)]
  match = {}  # video -> slot index

  def try_slot(s, seen):
    for v in videos:
      if slots[s] in labels_by_id[v] and v not in seen:
        seen.add(v)
        if v not in match or try_slot(match[v], seen):
          match[v] = s
          return True
    return False

  return all(try_slot(s, set()) for s in range(len(slots)))


@pytest.mark.parametrize("batch_size,k,m", [(20, 4, 5), (10, 3, 3)])
def test_every_batch_meets_the_constraint(data, batch_size, k, m):
  labels, paths, _ = data
  labels_by_id = {f"v{i:03d}": set(ids) for i, ids in enumerate(labels)}
  dataset = input_pipeline.build_dataset(paths, DIMS, NUM_CLASSES, batch_size=batch_size,
                                         is_training=True, seed=5, class_aware=(k, m),
                                         fields=(F.video_labels,))
  batches = _id_batches(dataset, 60)
  class_counts = collections.Counter()
  for ids in batches:
    assert len(ids) == batch_size and len(set(ids)) == batch_size  # no video twice
    assert _assign(ids, labels_by_id, k, m), ids
    for v in ids:
      class_counts.update(labels_by_id[v])
  # Over many batches every class is drawn (randomness over classes, not a fixed subset).
  assert set(class_counts) == set(range(1, NUM_CLASSES + 1))


def test_single_label_batches_are_exactly_k_classes(tmp_path):
  labels = [(c,) for c in range(1, 6) for _ in range(7)]
  paths = _write(str(tmp_path), labels, num_shards=2)
  dataset = input_pipeline.build_dataset(paths, DIMS, NUM_CLASSES, batch_size=11,
                                         is_training=True, seed=0, class_aware=(3, 3))
  for batch in dataset.take(40):
    ids = [v.decode() for v in batch[F.video_id].numpy()]
    per_class = collections.Counter(labels[int(v[1:])][0] for v in ids)
    # 11 videos over 3 classes: shares 4, 4, 3 (>= M = 3), each class from its own videos.
    assert sorted(per_class.values()) == [3, 4, 4], per_class
    multi_hot = batch[F.video_labels].numpy()
    assert multi_hot.sum(axis=1).tolist() == [1.0] * 11


def test_deterministic_given_a_seed_and_checkpointable(data):
  _, paths, _ = data

  def build(seed):
    return input_pipeline.build_dataset(paths, DIMS, NUM_CLASSES, batch_size=8,
                                        is_training=True, seed=seed, class_aware=(2, 4),
                                        max_steps=4)

  first, second, other = (_id_batches(build(s), 5) for s in (3, 3, 4))
  assert first == second and first != other
  iterator = iter(build(3))
  next(iterator)
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  path = checkpoint.save(os.path.join(paths[0] + "_ckpt", "c"))
  after = [next(iterator)[F.video_id].numpy().tolist() for _ in range(2)]
  checkpoint.restore(path)
  again = [next(iterator)[F.video_id].numpy().tolist() for _ in range(2)]
  assert after == again


def test_clear_errors_when_the_data_cannot_satisfy_it(data, tmp_path):
  _, paths, _ = data
  # Class c has 4 + c single-label and 2 two-label videos: 7..12; only 4, 5, 6 have >= 10.
  with pytest.raises(ValueError, match=r"3 class\(es\) with >= 10 videos.*fewer than "
                                       r"num_classes_per_batch=4.*\{1: 7, 2: 8, 3: 9, 4: 10"):
    input_pipeline.build_dataset(paths, DIMS, NUM_CLASSES, batch_size=40, is_training=True,
                                 class_aware=(4, 10))
  with pytest.raises(ValueError, match="batch_size 10 cannot hold num_classes_per_batch=4 "
                                       "classes with min_videos_per_class=3"):
    input_pipeline.build_dataset(paths, DIMS, NUM_CLASSES, batch_size=10, is_training=True,
                                 class_aware=(4, 3))
  with pytest.raises(ValueError, match="needs num_classes"):
    input_pipeline.build_dataset(paths, DIMS, None, batch_size=4, is_training=True,
                                 class_aware=(2, 2))
  with pytest.raises(ValueError, match="outside 1..3"):
    input_pipeline.build_dataset(paths, DIMS, 3, batch_size=4, is_training=True,
                                 class_aware=(2, 2))
  truncated = str(tmp_path / "cut.tfrecord")
  with open(paths[0], "rb") as f:
    raw = f.read()
  with open(truncated, "wb") as f:
    f.write(raw[:len(raw) - 10])
  with pytest.raises(ValueError, match="cut.tfrecord.*past the end of the file"):
    input_pipeline.build_dataset(truncated, DIMS, NUM_CLASSES, batch_size=4,
                                 is_training=True, class_aware=(2, 2))


def test_builder_reads_the_proto_option(data):
  _, paths, directory = data
  reader = text_format.Parse(f"""
      input_path: "{directory}/r-*.tfrecord"
      streams {{ name: "rgb" dim: 2 }}
      batch_size: 20
      class_aware_batching {{ num_classes_per_batch: 4 min_videos_per_class: 5 }}
  """, input_reader_pb2.InputReader())
  labels, _, _ = data
  labels_by_id = {f"v{i:03d}": set(ids) for i, ids in enumerate(labels)}
  dataset = input_reader_builder.build(reader, NUM_CLASSES, is_training=True, seed=1)
  for ids in _id_batches(dataset, 5):
    assert len(set(ids)) == 20 and _assign(ids, labels_by_id, 4, 5)
  # Evaluation ignores the option: every video once, in file order.
  evaluation = input_reader_builder.build(reader, NUM_CLASSES, is_training=False)
  seen = [v for ids in _id_batches(evaluation, 100) for v in ids]
  assert sorted(seen) == sorted(labels_by_id)


def test_shares_and_membership_by_hand():
  np.testing.assert_array_equal(class_aware_sampler.class_shares(20, 4, 5), [5, 5, 5, 5])
  np.testing.assert_array_equal(class_aware_sampler.class_shares(11, 3, 2), [4, 4, 3])
  index = class_aware_sampler.RecordIndex(
      ["f"], np.zeros(4, np.int64), np.zeros(4, np.int64), np.ones(4, np.int64),
      np.ones(1, np.int64), [(1,), (1, 2), (2,), (3,)], ["a", "b", "c", "d"])
  eligible, member = class_aware_sampler.membership(index, 3, np.asarray([2]))
  np.testing.assert_array_equal(eligible, [1, 2])
  np.testing.assert_array_equal(member, [[1, 1, 0, 0], [0, 1, 1, 0]])
