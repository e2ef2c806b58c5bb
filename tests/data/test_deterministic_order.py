"""The resumable training order: a function of (seed, epoch, position), any sharding."""
import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.data import deterministic_order

# Four files with 3, 5, 4 and 4 records: 16 records per epoch.
COUNTS = (3, 5, 4, 4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("order")
  paths = []
  for f, n in enumerate(COUNTS):
    path = str(root / f"part-{f}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      for r in range(n):
        writer.write(f"f{f}r{r}".encode() + b"x" * (7 * r))  # Varying record sizes.
    paths.append(path)
  return paths


def _sizes(paths):
  return [os.path.getsize(p) for p in paths]


def _context(num, index):
  return tf.distribute.InputContext(num_input_pipelines=num, input_pipeline_id=index,
                                    num_replicas_in_sync=num)


def _take(paths, start, n, seed=3, context=None, window=5, **kwargs):
  dataset = deterministic_order.ordered_records(
      paths, _sizes(paths), seed, start, shuffle_window=window, input_context=context,
      num_parallel_reads=2, **kwargs)
  return [(r.decode().rstrip("x"), tuple(s)) for r, s in dataset.take(n).as_numpy_iterator()]


def test_count_records_reads_framing_and_ignores_a_truncated_tail(files, tmp_path):
  for path, n in zip(files, COUNTS):
    assert deterministic_order.count_records(path) == n
  with open(files[1], "rb") as f:
    data = f.read()
  cut = str(tmp_path / "cut.tfrecord")
  with open(cut, "wb") as f:
    f.write(data[:-3])  # The last record loses its CRC bytes.
  assert deterministic_order.count_records(cut) == COUNTS[1] - 1


def test_every_epoch_uses_every_record_once_in_a_new_order(files):
  stream = [r for r, _ in _take(files, 0, 3 * 16)]
  epochs = [stream[i * 16:(i + 1) * 16] for i in range(3)]
  everything = sorted(f"f{f}r{r}" for f, n in enumerate(COUNTS) for r in range(n))
  for epoch in epochs:
    assert sorted(epoch) == everything
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
  # Same seed, same order; another seed, another order.
  assert [r for r, _ in _take(files, 0, 16)] == epochs[0]
  assert [r for r, _ in _take(files, 0, 16, seed=4)] != epochs[0]


def test_unshuffled_order_is_file_order_every_epoch(files):
  stream = [r for r, _ in _take(files, 0, 32, shuffle=False, window=1)]
  # Two files interleaved record by record; a finished file's slot takes the next file
  # (tf.data moves on to the other slot when it finds a file finished).
  first = ["f0r0", "f1r0", "f0r1", "f1r1", "f0r2", "f1r2", "f1r3", "f2r0", "f1r4", "f2r1",
           "f2r2", "f3r0", "f2r3", "f3r1", "f3r2", "f3r3"]
  assert stream == first + first, stream


@pytest.mark.parametrize("start", [7, 37])
def test_starting_at_a_position_continues_the_same_stream(files, start):
  full = _take(files, 0, start + 12)
  assert _take(files, start, 12) == full[start:]


@pytest.mark.parametrize("counts,num,mode", [
    ((3, 5, 4, 4), 2, "file"),   # 8 + 8 records: balanced.
    ((3, 5, 4, 4), 3, "data"),   # 5 / 5 / 6 at best: 17% apart.
    ((10, 1), 2, "data"),        # One big file.
    ((4,), 2, "data"),           # Fewer files than workers.
    ((4, 4), 1, "none"),
])
def test_sharding_choice(counts, num, mode):
  shards = [deterministic_order.choose_sharding(list(counts), num, i) for i in range(num)]
  assert {s.mode for s in shards} == {mode}
  if mode == "file":
    owned = [i for s in shards for i in s.files]
    assert sorted(owned) == list(range(len(counts)))
    totals = [sum(counts[i] for i in s.files) for s in shards]
    assert max(totals) - min(totals) <= 0.05 * max(totals)


@pytest.mark.parametrize("num", [2, 3])
def test_workers_resume_their_share_and_cover_each_epoch_once(files, num):
  """Per worker: the stream from a global position continues its stream from 0; together
  the workers use each record once per epoch (by file for 2 workers, by data for 3)."""
  per_worker = 8 if num == 2 else 16 // num + 1
  steps = 2 * 16 // num  # Two epochs' worth per worker.
  streams = [_take(files, 0, steps, context=_context(num, w)) for w in range(num)]
  for w in range(num):
    start = 3 * num  # Three records per worker consumed.
    resumed = _take(files, start, steps - 3, context=_context(num, w))
    assert resumed == streams[w][3:]
  if num == 2:  # By file: each worker cycles through its own 8 records.
    for w in range(2):
      first, second = streams[w][:per_worker], streams[w][per_worker:2 * per_worker]
      assert sorted(r for r, _ in first) == sorted(r for r, _ in second)
      assert len({r for r, _ in first}) == per_worker
    assert not {r for r, _ in streams[0]} & {r for r, _ in streams[1]}
  else:  # By data: worker w holds global records w, w + num, ...: one global order.
    single = _take(files, 0, steps * num)
    merged = [streams[i % num][i // num] for i in range(steps * num)]
    assert merged == single


def test_crop_seeds_belong_to_the_record_and_epoch_not_the_worker(files):
  seeds = collections.defaultdict(set)
  for num in (1, 2, 3):
    for w in range(num):
      for i, (record, seed) in enumerate(_take(files, 0, 16 // num, context=(
          _context(num, w) if num > 1 else None))):
        seeds[record].add(seed)
  # Every record of epoch 0 has one seed, whoever read it; records differ.
  assert all(len(s) == 1 for s in seeds.values())
  assert len({next(iter(s)) for s in seeds.values()}) == len(seeds)
  expected = deterministic_order.crop_seed(3, 0, 1, 4).numpy()
  np.testing.assert_array_equal(next(iter(seeds["f1r4"])), expected)
  epoch1 = dict(_take(files, 16, 16))
  assert tuple(epoch1["f1r4"]) != tuple(expected)


def test_position_not_a_multiple_of_the_workers_fails_clearly(files):
  with pytest.raises(ValueError, match="not a multiple of the 2 input pipelines"):
    _take(files, 3, 1, context=_context(2, 0))
