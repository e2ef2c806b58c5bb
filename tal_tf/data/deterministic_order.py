"""A resumable training order: the records read are a function of (seed, epoch, position).

TensorFlow 2.17 cannot checkpoint a multi-replica distributed iterator, so a resumed
multi-replica run would restart its data order (seeing the first batches twice and some
records never). Here the order needs no iterator state: each epoch is a fixed permutation
drawn from (seed, epoch), and a run that consumed `position` records (a checkpointed
counter) starts at epoch `position // N`, skipping `position % N` records of it, where N is
the number of records (counted once from the TFRecord framing, without reading payloads).

One epoch (of one input pipeline):
  files in a stateless permutation of (seed, epoch) -> records of `cycle_length` files
  interleaved in that order (deterministic) -> consecutive windows of `shuffle_window`
  records, each permuted by a stateless draw of (seed, epoch, window) -> (record, crop seed).
Epochs follow each other without mixing, so every record is used exactly once per epoch.

Each record carries its own stateless crop seed, a function of (seed, epoch, file, record
within file): a video gets the same random window whichever worker reads it, so training
is identical for any number of workers that shard by data.

Sharding across input pipelines (one per worker), chosen by `choose_sharding`:
  * "file": each pipeline reads its own files (assigned largest-first to the least loaded
    pipeline) and orders them as above. Chosen when there are at least as many files as
    pipelines and the pipelines' record totals differ by at most `max_file_imbalance`
    (records of a smaller share would otherwise be seen more often). Each worker reads 1/W
    of the bytes.
  * "data": every pipeline orders all records identically and keeps every W-th (offset by
    its id). Chosen otherwise (few or unbalanced files). Every worker reads all bytes (only
    its share is decoded); the global batch of step k is records [kB, (k+1)B) of the single
    global order, exactly what one process would train on.
"""

import collections

import tensorflow as tf

from tal_tf.data import input_pipeline

_HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length.
_FOOTER_BYTES = 4  # uint32 masked CRC of the data.

Sharding = collections.namedtuple("Sharding", ["mode", "files", "reason"])


def record_spans(path, file=None):
  """(payload offset, payload length) of each whole record of a TFRecord file, from its
  length headers (payloads are skipped with seeks; a truncated last record is not
  listed). `file`: an open binary file of `path` to read (default: opened here)."""
  size = tf.io.gfile.stat(path).length
  f = file if file is not None else tf.io.gfile.GFile(path, "rb")
  try:
    offset = 0
    while offset + _HEADER_BYTES <= size:
      f.seek(offset)
      header = f.read(8)
      if len(header) < 8:
        break
      length = int.from_bytes(header, "little")
      end = offset + _HEADER_BYTES + length + _FOOTER_BYTES
      if end > size:
        break
      yield offset + _HEADER_BYTES, length
      offset = end
  finally:
    if file is None:
      f.close()


def count_records(path):
  """Number of whole records in a TFRecord file, from its length headers (payloads are
  skipped with seeks; a truncated last record is not counted)."""
  return sum(1 for _ in record_spans(path))


def choose_sharding(record_counts, num_pipelines, pipeline_id, max_file_imbalance=0.05):
  """How pipeline `pipeline_id` of `num_pipelines` shards the files.

  Args:
    record_counts: records per file, in file order (list of int).
    num_pipelines: number of input pipelines (workers); pipeline_id: this one's index.
    max_file_imbalance: largest allowed (max - min) / max of the pipelines' record totals
      for sharding by file.
  Returns:
    Sharding(mode "none" | "file" | "data", files: indices of the files this pipeline
    reads, reason: a sentence for the log).
  """
  n = len(record_counts)
  if num_pipelines <= 1:
    return Sharding("none", list(range(n)), "one input pipeline")
  if n < num_pipelines:
    return Sharding("data", list(range(n)),
                    f"{n} files < {num_pipelines} workers: every worker reads all files and "
                    "keeps every n-th record")
  # Largest file first to the least loaded pipeline (ties: lowest index): deterministic.
  loads = [0] * num_pipelines
  owned = [[] for _ in range(num_pipelines)]
  for i in sorted(range(n), key=lambda i: (-record_counts[i], i)):
    target = min(range(num_pipelines), key=lambda p: (loads[p], p))
    loads[target] += record_counts[i]
    owned[target].append(i)
  imbalance = (max(loads) - min(loads)) / max(max(loads), 1)
  if min(loads) > 0 and imbalance <= max_file_imbalance:
    return Sharding("file", sorted(owned[pipeline_id]),
                    f"{n} files give {num_pipelines} workers {min(loads)}-{max(loads)} "
                    f"records each (imbalance {imbalance:.1%} <= {max_file_imbalance:.0%})")
  return Sharding("data", list(range(n)),
                  f"{n} files would give {num_pipelines} workers {min(loads)}-{max(loads)} "
                  f"records each (imbalance {imbalance:.1%} > {max_file_imbalance:.0%}); "
                  "every worker reads all files and keeps every n-th record")


def crop_seed(seed, epoch, file_index, record_index):
  """Stateless seed int64 [2] of one record in one epoch (any int64 tensors or ints)."""
  seed, epoch, file_index, record_index = (
      tf.cast(x, tf.int64) for x in (seed, epoch, file_index, record_index))
  return tf.stack([seed * (1 << 24) + epoch, file_index * (1 << 32) + record_index])


def epoch_records(files, sizes, file_ids, seed, epoch, shuffle, shuffle_window,
                  cycle_length, skip_corrupt=False, corrupt_counter=None):
  """One epoch of `files` in its (seed, epoch) order: dataset of (serialized string, crop
  seed int64 [2]). `file_ids` are the files' global indices (for crop seeds); `epoch` may
  be a scalar tensor."""
  epoch = tf.cast(epoch, tf.int64)
  seed = tf.constant(int(seed), tf.int64)
  files = tf.constant(files, tf.string)
  sizes = tf.constant(sizes, tf.int64)
  file_ids = tf.constant(file_ids, tf.int64)
  if shuffle:
    keys = tf.random.stateless_uniform([tf.size(files)], seed=tf.stack([seed, epoch]))
    order = tf.argsort(keys)
    files, sizes, file_ids = (tf.gather(x, order) for x in (files, sizes, file_ids))

  def read(name, size, file_id):
    records = input_pipeline.checked_records(name, size, skip_corrupt, corrupt_counter)
    return records.enumerate().map(
        lambda index, record: (record, crop_seed(seed, epoch, file_id, index)))

  dataset = tf.data.Dataset.from_tensor_slices((files, sizes, file_ids)).interleave(
      read, cycle_length=cycle_length, block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shuffle and shuffle_window > 1:

    def permute(window, batch):
      records, seeds = batch
      keys = tf.random.stateless_uniform(
          [tf.shape(records)[0]], seed=tf.stack([seed * (1 << 24) + epoch, -1 - window]))
      order = tf.argsort(keys)
      return tf.data.Dataset.from_tensor_slices(
          (tf.gather(records, order), tf.gather(seeds, order)))

    dataset = dataset.batch(int(shuffle_window)).enumerate().flat_map(permute)
  return dataset


def ordered_records(files, sizes, seed, start_position, shuffle=True, shuffle_window=256,
                    num_parallel_reads=4, input_context=None, skip_corrupt=False,
                    corrupt_counter=None, record_counts=None, log_fn=None):
  """The endless training order from global position `start_position` on.

  Args:
    files: sorted TFRecord paths; sizes: their byte sizes.
    seed: int seed of the order (None = 0).
    start_position: records already consumed by all pipelines together (a multiple of the
      number of pipelines: the global batch is).
    shuffle: permute files and windows per epoch (else file order, every epoch the same).
    shuffle_window: records per shuffled window.
    num_parallel_reads: files read at once (interleave cycle length).
    input_context: tf.distribute.InputContext or None (one pipeline).
    skip_corrupt, corrupt_counter: as in input_pipeline.build_dataset.
    record_counts: records per file (counted from the files when None).
    log_fn: called with one line saying how this pipeline shards and where it starts.
  Returns:
    tf.data.Dataset of (serialized SequenceExample, crop seed int64 [2]), endless.
  """
  seed = int(seed or 0)
  counts = list(record_counts) if record_counts is not None else [
      count_records(f) for f in files]
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  start_position = int(start_position)
  if start_position % num_pipelines:
    raise ValueError(f"input position {start_position} is not a multiple of the "
                     f"{num_pipelines} input pipelines (was the global batch size changed?)")
  sharding = choose_sharding(counts, num_pipelines, pipeline_id)
  mine = sharding.files
  per_epoch = sum(counts[i] for i in mine)
  if per_epoch == 0:
    raise ValueError(f"no records in {[files[i] for i in mine][:5]} (input pipeline "
                     f"{pipeline_id} of {num_pipelines})")
  # Position in this pipeline's own stream ("data" orders all records, then shards).
  position = start_position if sharding.mode == "data" else start_position // num_pipelines
  first_epoch, offset = divmod(position, per_epoch)
  if log_fn:
    log_fn(f"input pipeline {pipeline_id}/{num_pipelines}: sharding by {sharding.mode} "
           f"({sharding.reason}); {per_epoch} records per epoch; starting at epoch "
           f"{first_epoch} record {offset}")
  cycle_length = max(1, min(int(num_parallel_reads), len(mine)))

  def epoch_fn(epoch):
    return epoch_records([files[i] for i in mine], [sizes[i] for i in mine], mine, seed,
                         epoch, shuffle, shuffle_window, cycle_length, skip_corrupt,
                         corrupt_counter)

  dataset = tf.data.Dataset.range(first_epoch, tf.int64.max).flat_map(epoch_fn)
  dataset = dataset.skip(offset)
  if sharding.mode == "data":
    dataset = dataset.shard(num_pipelines, pipeline_id)
  return dataset
