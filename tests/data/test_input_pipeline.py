"""Input pipeline: padding, cropping, batching, sharding and corrupt-file handling."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core.standard_fields import InputFields as F
from tal_tf.data import input_pipeline
from tal_tf.data import sequence_example as se

DIMS = {"rgb": 3, "flow": 2}
FPS = 2.0


def _videos(num_videos=7, seed=0):
  rng = np.random.default_rng(seed)
  videos = {}
  for i in range(num_videos):
    steps = int(rng.integers(5, 30))
    num_segments = i % 4
    starts = rng.uniform(0, steps - 1, size=num_segments) / FPS
    ends = np.minimum(starts + rng.uniform(0.5, 4, size=num_segments), steps / FPS)
    videos[f"v{i}"] = {
        "rgb": rng.normal(size=(steps, 3)).astype(np.float32),
        "flow": rng.normal(size=(steps, 2)).astype(np.float32),
        "segments": np.stack([starts, ends], -1).astype(np.float32).reshape(-1, 2),
        "labels": rng.integers(1, 4, size=num_segments),
    }
  return videos


def _write_shards(directory, videos, num_shards):
  paths = [os.path.join(directory, f"r-{i:05d}-of-{num_shards:05d}.tfrecord")
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for i, (vid, v) in enumerate(sorted(videos.items())):
    example = se.make_sequence_example(
        vid, v["rgb"].shape[0] / FPS, FPS, {"rgb": v["rgb"], "flow": v["flow"]},
        v["segments"], v["labels"], ["x"] * len(v["labels"]))
    writers[i % num_shards].write(example.SerializeToString())
  for w in writers:
    w.close()
  return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("records"))
  videos = _videos()
  return videos, _write_shards(directory, videos, 3), directory


def _batches(dataset, limit=None):
  out = []
  for i, batch in enumerate(dataset):
    if limit is not None and i >= limit:
      break
    out.append(tf.nest.map_structure(lambda t: t.numpy(), batch))
  return out


def _multi_hot(labels, num_classes):
  out = np.zeros(num_classes, np.float32)
  for l in labels:
    out[l - 1] = 1
  return out


def test_eval_keeps_whole_videos_padded_per_batch(shards):
  videos, paths, directory = shards
  dataset = input_pipeline.build_dataset(os.path.join(directory, "r-*"), DIMS, num_classes=3,
                                         batch_size=3, is_training=False)
  batches = _batches(dataset)
  assert [len(b[F.video_id]) for b in batches] == [3, 3, 1]  # last partial batch kept
  seen = []
  for b in batches:
    max_steps = max(videos[v.decode()]["rgb"].shape[0] for v in b[F.video_id])
    max_segments = max(len(videos[v.decode()]["labels"]) for v in b[F.video_id])
    assert b[F.features]["rgb"].shape[1] == max_steps
    assert b[F.segments].shape[1] == max_segments
    for j, vid in enumerate(b[F.video_id]):
      v = videos[vid.decode()]
      steps, count = v["rgb"].shape[0], len(v["labels"])
      seen.append(vid.decode())
      assert b[F.num_steps][j] == steps and b[F.window_offset][j] == 0
      np.testing.assert_array_equal(b[F.features]["rgb"][j, :steps], v["rgb"])
      np.testing.assert_array_equal(b[F.features]["flow"][j, :steps], v["flow"])
      assert not b[F.features]["rgb"][j, steps:].any()  # zero padding
      assert b[F.num_segments][j] == count
      np.testing.assert_array_equal(b[F.segments_seconds][j, :count], v["segments"])
      np.testing.assert_allclose(b[F.segments][j, :count], v["segments"] * FPS, rtol=1e-6)
      np.testing.assert_array_equal(b[F.labels][j, :count], v["labels"])
      assert not b[F.labels][j, count:].any() and not b[F.segments][j, count:].any()
      np.testing.assert_array_equal(b[F.video_labels][j], _multi_hot(v["labels"], 3))
  assert sorted(seen) == sorted(videos)


def test_training_crops_to_static_window_and_repeats(shards):
  videos, paths, _ = shards
  max_steps, min_kept = 8, 0.5
  dataset = input_pipeline.build_dataset(paths, DIMS, num_classes=3, batch_size=2,
                                         is_training=True, max_steps=max_steps,
                                         min_kept_fraction=min_kept, max_segments=4, seed=7,
                                         shuffle_buffer=4)
  spec = dataset.element_spec
  assert spec[F.features]["rgb"].shape.as_list() == [2, max_steps, 3]
  assert spec[F.segments].shape.as_list() == [2, 4, 2]
  batches = _batches(dataset, limit=12)  # 24 videos > 7: repeats.
  assert len(batches) == 12
  for b in batches:
    for j, vid in enumerate(b[F.video_id]):
      v = videos[vid.decode()]
      offset, n = int(b[F.window_offset][j]), int(b[F.num_steps][j])
      total = v["rgb"].shape[0]
      assert n == min(total, max_steps) and 0 <= offset <= max(total - max_steps, 0)
      np.testing.assert_array_equal(b[F.features]["rgb"][j, :n], v["rgb"][offset:offset + n])
      assert not b[F.features]["rgb"][j, n:].any()
      # Loop reference of the segment clipping rule.
      expected, expected_labels = [], []
      for (s, e), label in zip(v["segments"] * FPS, v["labels"]):
        cs, ce = max(s, offset), min(e, offset + n)
        if ce > cs and (ce - cs) / (e - s) >= min_kept:
          expected.append([cs - offset, ce - offset])
          expected_labels.append(label)
      count = int(b[F.num_segments][j])
      assert count == len(expected)
      np.testing.assert_allclose(b[F.segments][j, :count], np.reshape(expected, (-1, 2)),
                                 atol=1e-5)
      np.testing.assert_array_equal(b[F.labels][j, :count], expected_labels)
      np.testing.assert_allclose(b[F.segments_seconds][j, :count],
                                 np.reshape(expected, (-1, 2)) / FPS, atol=1e-5)


def test_seeded_training_is_deterministic(shards):
  _, paths, _ = shards

  def first_ids():
    ds = input_pipeline.build_dataset(paths, DIMS, 3, 2, True, max_steps=6, seed=11,
                                      shuffle_buffer=8)
    return [b[F.video_id].tolist() + b[F.window_offset].tolist() for b in _batches(ds, 4)]

  assert first_ids() == first_ids()


def test_training_without_shuffle_reads_in_interleaved_file_order(shards):
  _, paths, _ = shards
  ds = input_pipeline.build_dataset(paths, DIMS, 3, 2, True, shuffle_buffer=0)
  ids = [v.decode() for b in _batches(ds, 5) for v in b[F.video_id]]
  # Shards hold v0,v3,v6 / v1,v4 / v2,v5; one record per file in turn, then repeat.
  assert ids == ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v0", "v1", "v2"]


def test_max_segments_overflow_is_an_error(shards):
  _, paths, _ = shards
  dataset = input_pipeline.build_dataset(paths, DIMS, 3, 7, False, max_segments=2)
  with pytest.raises(tf.errors.InvalidArgumentError, match="more than max_segments=2"):
    _batches(dataset)


@pytest.mark.parametrize("num_files", [3, 1])
def test_input_context_shards_and_splits_batch(shards, tmp_path, num_files):
  videos, paths, _ = shards
  if num_files == 1:
    paths = _write_shards(str(tmp_path), videos, 1)
  seen = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    dataset = input_pipeline.build_dataset(paths, DIMS, 3, batch_size=4, is_training=False,
                                           input_context=context)
    ids = []
    for b in _batches(dataset):
      assert len(b[F.video_id]) <= 2  # per-replica batch = 4 / 2
      ids.extend(v.decode() for v in b[F.video_id])
    assert ids
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(videos)


def _damaged_copy(src, dst, mode):
  with open(src, "rb") as f:
    data = bytearray(f.read())
  if mode == "truncate":
    data = data[:len(data) - 50]
  else:  # flip a byte inside the second record's payload (CRC mismatch)
    first_len = int.from_bytes(data[:8], "little")
    data[first_len + 16 + 12 + 5] ^= 0xFF
  with open(dst, "wb") as f:
    f.write(bytes(data))


@pytest.mark.parametrize("mode", ["truncate", "corrupt"])
def test_damaged_file_error_names_the_file(shards, tmp_path, mode):
  _, paths, _ = shards
  bad = os.path.join(str(tmp_path), f"damaged_{mode}.tfrecord")
  _damaged_copy(paths[0], bad, mode)
  dataset = input_pipeline.build_dataset([paths[1], bad], DIMS, 3, 2, False)
  with pytest.raises(tf.errors.InvalidArgumentError) as err:
    _batches(dataset)
  assert bad in str(err.value) and "Corrupt or truncated TFRecord file" in str(err.value)


def test_damaged_file_skipped_and_counted(shards, tmp_path):
  videos, paths, _ = shards
  bad = os.path.join(str(tmp_path), "damaged.tfrecord")
  _damaged_copy(paths[0], bad, "corrupt")  # paths[0] holds v0, v3, v6: v0 survives.
  counter = input_pipeline.make_corrupt_counter()
  dataset = input_pipeline.build_dataset([bad, paths[1], paths[2]], DIMS, 3, 2, False,
                                          skip_corrupt=True, corrupt_counter=counter)
  ids = sorted(v.decode() for b in _batches(dataset) for v in b[F.video_id])
  assert ids == ["v0", "v1", "v2", "v4", "v5"]
  assert int(counter.numpy()) == 1
  assert dataset.corrupt_counter is counter
  # Without a counter the pipeline holds no variable: a training iterator that skips a
  # damaged file can still be saved in a checkpoint and restored at the same position.
  default = input_pipeline.build_dataset([bad, paths[1]], DIMS, 3, 1, True, skip_corrupt=True,
                                         seed=3)
  assert default.corrupt_counter is None
  iterator = iter(default)
  next(iterator)
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  path = checkpoint.save(os.path.join(str(tmp_path), "position"))
  expected = [next(iterator)[F.video_id].numpy() for _ in range(4)]
  restored_iterator = iter(input_pipeline.build_dataset([bad, paths[1]], DIMS, 3, 1, True,
                                                        skip_corrupt=True, seed=3))
  tf.train.Checkpoint(iterator=restored_iterator).restore(path)
  assert [next(restored_iterator)[F.video_id].numpy() for _ in range(4)] == expected


def test_argument_errors(shards, tmp_path):
  _, paths, _ = shards
  with pytest.raises(ValueError, match="matched no files"):
    input_pipeline.build_dataset(os.path.join(str(tmp_path), "none-*"), DIMS, 3, 2, False)
  with pytest.raises(ValueError, match="stream_dims"):
    input_pipeline.build_dataset(paths, {}, 3, 2, False)
  with pytest.raises(ValueError, match="min_kept_fraction"):
    input_pipeline.build_dataset(paths, DIMS, 3, 2, True, min_kept_fraction=1.5)
