"""tf.data input pipeline: sharded TFRecords of SequenceExamples -> padded batches.

Order of operations (training): list files -> shard per input pipeline -> shuffle files ->
repeat -> parallel interleave of per-file readers (each checked for corruption) -> shuffle
records -> decode -> random window crop -> pad + batch (static shapes where configured) ->
prefetch. Evaluation keeps whole videos, a fixed order and the last partial batch.

Corrupt or truncated files: each file is read through an integrity check that adds up the
bytes of the records it yields (TFRecord framing: 16 bytes + payload per record) and
compares the total with the file size when the file ends. A file whose read stops early
(bad CRC, cut length, truncation) fails with an InvalidArgumentError naming the file
(TensorFlow's own DataLossError does not name it). With `skip_corrupt=True` the rest of
such a file is skipped instead (records before the damage have already been used) and a
line naming the file is printed to stderr each time it is read. A caller that wants a count
passes `corrupt_counter` (a tf.Variable int64 scalar, see `make_corrupt_counter`, also
available as `dataset.corrupt_counter`), incremented once per damaged file read. Without one
the pipeline holds no variable, so its iterator can be saved in a checkpoint (the trainer's
input position): an iterator whose functions assign a variable cannot be serialized.
"""

import sys

import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import InputFields
from tal_tf.data import class_aware_sampler
from tal_tf.data import input_fields
from tal_tf.data import sequence_example
from tal_tf.data import temporal_crop

_RECORD_OVERHEAD_BYTES = 16  # uint64 length + uint32 length CRC + uint32 data CRC.


def list_files(file_pattern):
  """Expands a glob pattern (or a list of patterns / paths) into a sorted file list."""
  patterns = [file_pattern] if isinstance(file_pattern, (str, bytes)) else list(file_pattern)
  if not patterns:
    raise ValueError("file_pattern is empty; expected a glob such as 'data/train-*.tfrecord'")
  files = []
  for pattern in patterns:
    pattern = pattern.decode() if isinstance(pattern, bytes) else str(pattern)
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise ValueError(f"file_pattern {pattern!r} matched no files")
    files.extend(matched)
  return sorted(set(files))


def make_corrupt_counter():
  """Creates the int64 scalar variable that counts skipped corrupt TFRecord files."""
  return tf.Variable(0, dtype=tf.int64, trainable=False, name="corrupt_tfrecord_files")


def checked_records(filename, file_size, skip_corrupt, corrupt_counter):
  """Dataset of one file's serialized records, with the end-of-file integrity check."""
  records = tf.data.TFRecordDataset(filename).ignore_errors()
  records = records.map(lambda r: (r, False))
  end_marker = tf.data.Dataset.from_tensors((tf.constant(b""), True))

  def account(consumed, element):
    record, is_end = element
    size = tf.cast(tf.strings.length(record), tf.int64) + _RECORD_OVERHEAD_BYTES
    consumed = consumed + tf.where(is_end, tf.constant(0, tf.int64), size)
    return consumed, (record, is_end, consumed)

  scanned = records.concatenate(end_marker).scan(tf.constant(0, tf.int64), account)

  def check(record, is_end, consumed):
    intact = tf.logical_or(tf.logical_not(is_end), tf.equal(consumed, file_size))
    if skip_corrupt:
      def report():
        printed = tf.print("Skipping the rest of corrupt or truncated TFRecord file", filename,
                           "(read", consumed, "of", file_size, "bytes)",
                           output_stream=sys.stderr)
        effects = [printed]
        if corrupt_counter is not None:
          effects.append(corrupt_counter.assign_add(1))
        with tf.control_dependencies(effects):
          return tf.constant(1, tf.int64)
      done = tf.cond(intact, lambda: tf.constant(0, tf.int64), report)
      with tf.control_dependencies([done]):
        return tf.identity(record), is_end
    assertion = tf.debugging.Assert(
        intact, ["Corrupt or truncated TFRecord file", filename, "read", consumed, "of",
                 file_size, "bytes; pass skip_corrupt=True to skip damaged files"])
    with tf.control_dependencies([assertion]):
      return tf.identity(record), is_end

  checked = scanned.map(check)
  return checked.filter(lambda record, is_end: tf.logical_not(is_end)).map(
      lambda record, is_end: record)


def build_dataset(file_pattern, stream_dims, num_classes, batch_size, is_training,
                  max_steps=None, min_kept_fraction=0.5, shuffle_buffer=256,
                  num_parallel_reads=4, skip_corrupt=False, max_segments=None,
                  input_context=None, repeat=None, seed=None, corrupt_counter=None,
                  fields=None, class_aware=None, start_position=None, log_fn=None):
  """Builds the batched input dataset from TFRecords of SequenceExamples.

  Args:
    file_pattern: glob str or list of globs / paths of TFRecord files.
    stream_dims: dict stream -> feature dim, e.g. {'rgb': 1024, 'flow': 1024}, or
      stream_spec.FrameStream(height, width) for the JPEG frames of frame records (decoded
      uint8 [B, T, H, W, 3]; one step = one record frame; see protos/input_reader.proto).
    num_classes: number of foreground classes (multi-hot video_labels width), or None.
    batch_size: global batch size (divided per replica when input_context is given).
    is_training: shuffle, repeat, random crop and drop the last partial batch.
    max_steps: training: crop videos longer than this to a random window and pad time to
      exactly max_steps (static shape). Eval ignores it: whole videos, padded to the batch max.
    min_kept_fraction: keep a cropped segment only if >= this fraction of it is in the window.
    shuffle_buffer: record shuffle buffer (training); 0 disables shuffling of files and
      records (training then reads files in sorted order, interleaved).
    num_parallel_reads: files read in parallel (interleave cycle length).
    skip_corrupt: skip (and count) damaged files instead of failing; see module doc.
    max_segments: pad ground truth to this static count (error if a video has more), or
      None for the batch max.
    input_context: tf.distribute.InputContext: shard by input_pipeline_id and use the
      per-replica batch size.
    repeat: repeat forever; defaults to is_training.
    seed: seed for file/record shuffling and cropping (deterministic given the seed).
    corrupt_counter: optional tf.Variable int64 scalar incremented per skipped file
      (skip_corrupt), exposed as `dataset.corrupt_counter`; its iterator then cannot be
      checkpointed (see the module doc), so training passes none.
    fields: InputFields keys the model trains on (its `input_fields`), or None for every
      known field (see input_fields.resolve: evaluation always adds the segment ground truth,
      every batch carries features, num_steps, video_id, duration, feature_fps and
      window_offset).
    class_aware: training only: (num_classes_per_batch K, min_videos_per_class M) to draw
      every batch as K classes with >= M videos each by video-level labels (see
      class_aware_sampler; needs num_classes; replaces file/record shuffling and always
      repeats), or None.
    start_position: training only: read endlessly in the resumable order of
      `deterministic_order.ordered_records` (crops seeded per record and epoch), starting
      after this many records consumed by all input pipelines together; or None.
      Class-aware batching takes precedence (its draws are not resumable).
    log_fn: called with a line saying how the resumable order shards and starts.
  Returns:
    tf.data.Dataset of dicts (InputFields keys, the resolved `fields`): features
    {stream: [B, T, D]}, num_steps [B], groundtruth_segments / _seconds [B, G, 2] (window
    coordinates), groundtruth_labels [B, G] (0 = padding), num_groundtruth_segments [B],
    video_labels [B, C] (if num_classes), video_id [B], duration [B], feature_fps [B],
    window_offset [B].
  """
  if not stream_dims:
    raise ValueError("stream_dims must name at least one stream, e.g. {'rgb': 1024}")
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if max_steps is not None and int(max_steps) < 1:
    raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
  if not 0.0 <= float(min_kept_fraction) <= 1.0:
    raise ValueError(f"min_kept_fraction must be in [0, 1], got {min_kept_fraction}")
  if max_segments is not None and int(max_segments) < 1:
    raise ValueError(f"max_segments must be >= 1 or None, got {max_segments}")
  if repeat is None:
    repeat = is_training
  output_keys, parsed_keys = input_fields.resolve(fields, is_training, num_classes)
  files = list_files(file_pattern)
  sizes = [tf.io.gfile.stat(f).length for f in files]

  per_replica_batch = int(batch_size)
  if input_context is not None:
    per_replica_batch = input_context.get_per_replica_batch_size(int(batch_size))
  if is_training and class_aware is not None:
    dataset = _class_aware_records(files, num_classes, per_replica_batch, class_aware,
                                   skip_corrupt, input_context, seed)
    shuffle = False
    if start_position is not None and log_fn:
      log_fn("class-aware batches are drawn afresh on resume (not from the saved position)")
  elif is_training and start_position is not None:
    # Records paired with their own crop seeds, a function of (seed, epoch, position).
    # (Imported here: deterministic_order reads files through this module.)
    from tal_tf.data import deterministic_order  # pylint: disable=g-import-not-at-top
    dataset = deterministic_order.ordered_records(
        files, sizes, seed, start_position,
        shuffle=bool(shuffle_buffer and int(shuffle_buffer) > 0),
        shuffle_window=int(shuffle_buffer or 1), num_parallel_reads=num_parallel_reads,
        input_context=input_context, skip_corrupt=skip_corrupt,
        corrupt_counter=corrupt_counter, log_fn=log_fn)
    shuffle = False  # The order is fixed: decoding may keep it.
  else:
    dataset, shuffle = _records(files, sizes, is_training, shuffle_buffer, num_parallel_reads,
                                skip_corrupt, input_context, repeat, seed, corrupt_counter)
  dataset = _decode_and_batch(dataset, stream_dims, num_classes, per_replica_batch,
                              is_training, max_steps, min_kept_fraction, max_segments, seed,
                              output_keys, parsed_keys, shuffle,
                              seeded=is_training and start_position is not None and
                              class_aware is None)
  dataset.corrupt_counter = corrupt_counter
  return dataset


def _class_aware_records(files, num_classes, batch_size, class_aware, skip_corrupt,
                         input_context, seed):
  """Serialized records drawn batch by batch by class (class_aware_sampler)."""
  num_classes_per_batch, min_videos_per_class = class_aware
  if num_classes is None:
    raise ValueError("class-aware batching needs num_classes (video-level label ids)")
  if skip_corrupt:
    raise ValueError("class-aware batching reads records by offset after scanning them; "
                     "skip_corrupt is not supported with it (repair or remove damaged files)")
  shares = class_aware_sampler.class_shares(batch_size, num_classes_per_batch,
                                            min_videos_per_class)
  index = class_aware_sampler.scan_records(files)
  _, member = class_aware_sampler.membership(index, num_classes, shares,
                                             where=f"{len(files)} file(s) {files[:3]}")
  if seed is not None:
    # Its own stream (the crop seeds draw from `seed`); one per input pipeline.
    seed = int(seed) + 7919 * (1 + (input_context.input_pipeline_id if input_context else 0))
  return class_aware_sampler.record_dataset(index, member, shares, seed)


def _records(files, sizes, is_training, shuffle_buffer, num_parallel_reads, skip_corrupt,
             input_context, repeat, seed, corrupt_counter):
  """(serialized records of the files, whether they are shuffled)."""
  dataset = tf.data.Dataset.from_tensor_slices(
      (tf.constant(files, tf.string), tf.constant(sizes, tf.int64)))
  shard_records = False
  if input_context is not None:
    if len(files) >= input_context.num_input_pipelines:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    else:
      # Fewer files than pipelines: every pipeline reads all files and keeps every n-th
      # record instead, so no pipeline is left without data.
      shard_records = True
  shuffle = bool(is_training and shuffle_buffer and int(shuffle_buffer) > 0)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()

  # No more parallel readers than this pipeline has files: extra slots would only open the
  # next epoch's copy of a file that is already being read.
  files_here = len(files)
  if input_context is not None and not shard_records:
    files_here = -(-len(files) // input_context.num_input_pipelines)
  cycle_length = max(1, min(int(num_parallel_reads), files_here))
  dataset = dataset.interleave(
      lambda f, n: checked_records(f, n, skip_corrupt, corrupt_counter),
      cycle_length=cycle_length, block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shard_records:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  if shuffle and int(shuffle_buffer) > 1:
    dataset = dataset.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
  return dataset, shuffle


def _decode_and_batch(dataset, stream_dims, num_classes, per_replica_batch, is_training,
                      max_steps, min_kept_fraction, max_segments, seed, output_keys,
                      parsed_keys, shuffle, seeded=False):
  """Serialized records (or, `seeded`, (record, crop seed int64 [2]) pairs) -> decoded,
  cropped (training), padded batches."""
  crop = is_training and max_steps is not None

  if seeded:
    pass  # Each record carries its crop seed.
  elif crop:
    # One independent stateless seed per record: crops are reproducible for a given `seed`
    # even though decoding runs in parallel.
    dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed=seed).batch(2)))
  else:
    dataset = dataset.map(lambda serialized: (serialized, tf.zeros([2], tf.int64)))

  frames = stream_spec.has_frames(stream_dims)

  def decode(serialized, crop_seed):
    decoded = sequence_example.parse_sequence_example(serialized, stream_dims, num_classes,
                                                      fields=parsed_keys, decode_frames=False)
    if frames:
      # A frame record may be one piece of a long video: its segments become its own.
      decoded = input_fields.frame_record_as_crop(decoded, min_kept_fraction)
    if crop:
      decoded = temporal_crop.random_crop(decoded, max_steps, min_kept_fraction,
                                          stateless_seed=crop_seed)
    if frames:
      # JPEGs are decoded after the crop: a long video costs max_steps decoded frames.
      decoded[InputFields.features] = input_fields.decode_frames(
          decoded[InputFields.features], stream_dims)
    # Fields parsed only because a crop rule reads them are dropped here.
    decoded = {key: decoded[key] for key in output_keys}
    if max_segments is not None and InputFields.num_segments in decoded:
      count = decoded[InputFields.num_segments]
      check = tf.debugging.Assert(
          count <= max_segments,
          ["video", decoded[InputFields.video_id], "has", count,
           f"ground-truth segments, more than max_segments={max_segments}"])
      with tf.control_dependencies([check]):
        decoded[InputFields.num_segments] = tf.identity(count)
    return decoded

  dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=not shuffle or seed is not None)
  time_dim = int(max_steps) if crop else None
  padded_shapes = input_fields.pad_shapes(
      output_keys, stream_dims, time_dim,
      int(max_segments) if max_segments is not None else None, num_classes)
  dataset = dataset.padded_batch(per_replica_batch, padded_shapes=padded_shapes,
                                 padding_values=input_fields.pad_values(output_keys,
                                                                        stream_dims),
                                 drop_remainder=bool(is_training))
  return dataset.prefetch(tf.data.AUTOTUNE)
