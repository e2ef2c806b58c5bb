"""Class-aware batching: every batch holds N videos of K classes, at least M of each.

Metric-learning losses (e.g. the weakly supervised model's triplet / contrastive terms) need
several videos of the same class in a batch. The sampler:

1. scans the records once when the pipeline is built: each record's file, byte offset and
   length (from the TFRecord framing) and its video-level labels (`video/labels`);
2. draws each batch as a pure function of a per-batch seed (tf.data, stateless random ops,
   so the order is reproducible from the pipeline seed and the iterator can be saved in a
   checkpoint): a random order of the eligible classes; walking it, a class is accepted when
   it still has enough videos not already in the batch, and gets its share of videos drawn
   uniformly without replacement; K classes are accepted per batch;
3. reads each chosen record directly at its offset (a one-record FixedLengthRecordDataset
   window over the file: the record's CRCs were verified by the scan).

Shares: N // K videos per class, the first N % K accepted classes one more; N // K must be at
least M. A class is eligible when it has at least ceil(N / K) videos. A multi-label video
counts for the class it was drawn for and appears at most once per batch. Batches are drawn
independently (with replacement across batches), so there are no epochs.
"""

import collections
import os
import struct

import numpy as np
import tensorflow as tf

from tal_tf.core.standard_fields import SequenceExampleFields as SEF

_LENGTH_HEADER = 12   # uint64 length + uint32 masked CRC of the length.
_DATA_FOOTER = 4      # uint32 masked CRC of the data.

RecordIndex = collections.namedtuple(
    "RecordIndex", ["files", "file_index", "offsets", "lengths", "file_sizes", "labels",
                    "video_ids"])
RecordIndex.__doc__ = """Where each record is and its video-level label ids.

files: list of paths; file_index / offsets / lengths: int64 [R] (offset of the record's
length header, payload bytes); file_sizes: int64 [F]; labels: list of R sorted id tuples;
video_ids: list of R str."""


def _record_positions(path):
  """[(offset, length)] of the records of one TFRecord file, from the framing alone."""
  size = os.path.getsize(path)
  out = []
  with open(path, "rb") as f:
    offset = 0
    while offset < size:
      header = f.read(_LENGTH_HEADER)
      if len(header) < _LENGTH_HEADER:
        raise ValueError(f"{path}: truncated TFRecord header at byte {offset}")
      (length,) = struct.unpack("<Q", header[:8])
      end = offset + _LENGTH_HEADER + length + _DATA_FOOTER
      if end > size:
        raise ValueError(f"{path}: record at byte {offset} announces {length} bytes, past "
                         f"the end of the file ({size} bytes)")
      out.append((offset, length))
      f.seek(end)
      offset = end
  return out


def _ids_and_labels(serialized, context_spec):
  context, _ = tf.io.parse_single_sequence_example(serialized, context_features=context_spec)
  return context[SEF.video_id], context[SEF.video_labels].values


def scan_records(files):
  """RecordIndex of TFRecord `files` of SequenceExamples (reads each file once)."""
  file_index, offsets, lengths, labels, video_ids = [], [], [], [], []
  context_spec = {SEF.video_id: tf.io.FixedLenFeature([], tf.string),
                  SEF.video_labels: tf.io.VarLenFeature(tf.int64)}
  for index, path in enumerate(files):
    positions = _record_positions(path)
    parsed = tf.data.TFRecordDataset(path).map(
        lambda r: _ids_and_labels(r, context_spec), num_parallel_calls=tf.data.AUTOTUNE)
    count = 0
    try:
      for record in parsed.as_numpy_iterator():
        if count < len(positions):
          offsets.append(positions[count][0])
          lengths.append(positions[count][1])
        file_index.append(index)
        labels.append(tuple(sorted(set(record[1].tolist()))))
        video_ids.append(record[0].decode("utf-8"))
        count += 1
    except tf.errors.OpError as e:
      raise ValueError(f"{path}: cannot read record {count} for class-aware batching "
                       f"({type(e).__name__}: {e.message.splitlines()[0]})") from None
    if count != len(positions):
      raise ValueError(f"{path}: {count} readable records but {len(positions)} framed ones")
  return RecordIndex(list(files), np.asarray(file_index, np.int64),
                     np.asarray(offsets, np.int64), np.asarray(lengths, np.int64),
                     np.asarray([os.path.getsize(f) for f in files], np.int64), labels,
                     video_ids)


def class_shares(batch_size, num_classes_per_batch, min_videos_per_class):
  """Videos per accepted class [K] (N // K, the first N % K one more); checks N // K >= M."""
  n, k, m = int(batch_size), int(num_classes_per_batch), int(min_videos_per_class)
  if k < 1:
    raise ValueError(f"class_aware_batching.num_classes_per_batch must be >= 1, got {k}")
  if m < 1:
    raise ValueError(f"class_aware_batching.min_videos_per_class must be >= 1, got {m}")
  if n // k < m:
    raise ValueError(f"class_aware_batching: batch_size {n} cannot hold "
                     f"num_classes_per_batch={k} classes with min_videos_per_class={m} "
                     f"videos each (needs batch_size >= {k * m})")
  return np.asarray([n // k + (i < n % k) for i in range(k)], np.int32)


def membership(index, num_classes, shares, where="input"):
  """(eligible class ids [E], bool [E, R] record-has-class) after checking there are enough.

  Raises ValueError naming the classes' video counts when fewer than K classes have the
  largest share of videos."""
  num_records = len(index.labels)
  table = np.zeros((int(num_classes), num_records), bool)
  for r, ids in enumerate(index.labels):
    for class_id in ids:
      if not 1 <= class_id <= num_classes:
        raise ValueError(f"{index.files[index.file_index[r]]}: video {index.video_ids[r]!r} "
                         f"has video/labels id {class_id}, outside 1..{num_classes}")
      table[class_id - 1, r] = True
  counts = table.sum(axis=1)
  need = int(shares.max())
  eligible = np.flatnonzero(counts >= need)
  if len(eligible) < len(shares):
    present = {int(c) + 1: int(n) for c, n in enumerate(counts) if n}
    raise ValueError(
        f"class_aware_batching: {where} has {len(eligible)} class(es) with >= {need} videos "
        f"(batch_size / num_classes_per_batch rounded up), fewer than "
        f"num_classes_per_batch={len(shares)}; videos per class id: {present}")
  return eligible + 1, table[eligible]


def _sample_batch(seed, member, shares):
  """Record indices int64 [N] of one batch drawn with `seed` (int64 [2])."""
  num_eligible, num_records = member.shape
  k = len(shares)
  max_share = int(shares.max())
  member = tf.constant(member)
  shares_t = tf.constant(shares, tf.int32)
  seed = tf.cast(seed, tf.int64)
  class_order = tf.argsort(tf.random.stateless_uniform([num_eligible], seed))

  def body(i, accepted, taken, picks, valid):
    row = class_order[i]
    available = tf.logical_and(member[row], tf.logical_not(taken))
    share = shares_t[tf.minimum(accepted, k - 1)]
    enough = tf.reduce_sum(tf.cast(available, tf.int32)) >= share
    keys = tf.random.stateless_uniform([num_records], seed + tf.cast(i + 1, tf.int64) * 7919)
    keys = tf.where(available, keys, -1.0)
    chosen = tf.math.top_k(keys, k=max_share).indices
    slot_valid = tf.range(max_share) < share

    def accept():
      mark = tf.scatter_nd(chosen[:, None], tf.cast(slot_valid, tf.int32), [num_records])
      return (accepted + 1, tf.logical_or(taken, mark > 0),
              tf.tensor_scatter_nd_update(picks, [[accepted]], chosen[None]),
              tf.tensor_scatter_nd_update(valid, [[accepted]], slot_valid[None]))

    accepted, taken, picks, valid = tf.cond(
        enough, accept, lambda: (accepted, taken, picks, valid))
    return i + 1, accepted, taken, picks, valid

  _, accepted, _, picks, valid = tf.while_loop(
      lambda i, accepted, *_: tf.logical_and(i < num_eligible, accepted < k),
      body,
      (tf.constant(0), tf.constant(0), tf.zeros([num_records], tf.bool),
       tf.zeros([k, max_share], tf.int32), tf.zeros([k, max_share], tf.bool)))
  check = tf.debugging.Assert(
      accepted >= k,
      ["class_aware_batching: could not fill a batch with", k, "classes of distinct videos "
       "(multi-label videos overlap too much); accepted", accepted])
  with tf.control_dependencies([check]):
    indices = tf.boolean_mask(picks, valid)
  return tf.cast(tf.reshape(indices, [int(shares.sum())]), tf.int64)


def record_dataset(index, member, shares, seed=None):
  """Infinite dataset of serialized records, N = sum(shares) consecutive ones per batch."""
  files = tf.constant(index.files, tf.string)
  file_index = tf.constant(index.file_index)
  offsets = tf.constant(index.offsets)
  lengths = tf.constant(index.lengths)
  file_sizes = tf.constant(index.file_sizes)
  batches = tf.data.Dataset.random(seed=seed).batch(2).map(
      lambda s: _sample_batch(s, member, shares))

  def read(record):
    f = file_index[record]
    header = offsets[record] + _LENGTH_HEADER
    length = lengths[record]
    return tf.data.FixedLengthRecordDataset(
        files[f], record_bytes=length, header_bytes=header,
        footer_bytes=file_sizes[f] - header - length)

  return batches.unbatch().interleave(
      read, cycle_length=int(shares.sum()), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
