"""tf.data input pipeline over frame records: JPEG frames -> batches of clips.

Frame records are written by `tal_tf.dataset_tools.create_frame_records` (one or more
SequenceExamples per video, feature list `frames/jpeg`). Any model that learns from pixels
(S-CNN's C3D on 16-frame clips, ETP's frame-level ResNet actionness network) reads them with

  dataset = frame_pipeline.build_frame_dataset(
      "records/frames_train-*.tfrecord", batch_size=8, is_training=True,
      clip_frames=16, window_frames=(16, 32, 64), clips_per_record=4,
      crop_size=(112, 112), mean_rgb=C3D_MEAN_RGB)

API
  `build_frame_dataset(file_pattern, batch_size, is_training, clip_frames=16,
  window_frames=16, window_stride=None, clips_per_record=1, crop_size=(112, 112),
  random_flip=None, mean_rgb=IMAGENET_MEAN_RGB, std_rgb=None, num_parallel_reads=4,
  shuffle_buffer=256, input_context=None, repeat=None, seed=None, skip_corrupt=False,
  max_segments=None)` -> tf.data.Dataset of dicts (keys in FrameFields):
    clips          float32 [B, clip_frames, crop_h, crop_w, 3]: (pixel - mean_rgb) / std_rgb,
                   RGB order, pixels in 0..255;
    clip_start / clip_end  float32 [B]: the window's time span in the video (seconds);
    frame_times    float32 [B, clip_frames]: time of each sampled frame (seconds);
    frame_labels   int32 [B, clip_frames]: label id of the ground-truth segment containing
                   each sampled frame (0 = background; the shortest segment when nested);
    clip_label / clip_iou  int32 / float32 [B]: label of the ground-truth segment with the
                   highest tIoU with the window, and that tIoU (0 / 0.0 when none overlaps);
    video_id [B], groundtruth_segments_seconds [B, G, 2], groundtruth_labels [B, G] (0 pad),
    num_groundtruth_segments [B] (the whole video's ground truth, for models that assign
    their own targets).

Sampling. A window spans `window_frames` consecutive record frames (one scale, or a list of
scales: S-CNN's multi-scale windows); `clip_frames` frames are taken uniformly from it
(frame start + floor((i + 0.5) * window / clip_frames); a window of clip_frames frames takes
every frame; clip_frames=1 gives single frames). Training draws `clips_per_record` windows
per record at random positions and scales; evaluation walks every scale over each record
with `window_stride` (default: the window length). Frames past a record's end repeat its
last frame. Windows do not cross record boundaries (a long video's records are cut every
`--max_frames_per_record` frames).

Augmentation. Training: one random crop_size crop per clip (same position in all its
frames), horizontal flip with probability 1/2 (`random_flip`, default on in training).
Evaluation: the center crop. Frames smaller than the crop are first resized up (aspect
kept). `crop_size=None` keeps whole frames. JPEG decoding runs in parallel map calls.

Sharding follows `input_pipeline.build_dataset`: files per input pipeline
(`input_context`), shuffled files and clips in training, files read in parallel with the
same end-of-file integrity check (`skip_corrupt`).
"""

import tensorflow as tf

from tal_tf.core import segment_ops
from tal_tf.core.standard_fields import InputFields
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import input_pipeline

# Per-channel means in 0..255 RGB. ImageNet (torchvision / Model Garden ResNets) and the
# per-channel average of C3D's Sports-1M mean volume (the C3D release ships the full
# volume; a per-channel mean is what a 112x112 random crop can use).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
C3D_MEAN_RGB = (101.4, 97.7, 90.2)


class FrameFields:
  """Keys of frame-pipeline elements (besides the shared InputFields ground-truth keys)."""
  clips = "clips"
  clip_start = "clip_start"
  clip_end = "clip_end"
  frame_times = "frame_times"
  frame_labels = "frame_labels"
  clip_label = "clip_label"
  clip_iou = "clip_iou"


def parse_frame_record(serialized):
  """One serialized frame record -> dict: video_id, duration, fps, num_steps (frames in the
  record), first_frame, num_frames, height, width (int32 scalars), jpeg [N] string,
  groundtruth_segments_seconds [G, 2], groundtruth_labels [G] int32."""
  context_spec = {
      SEF.video_id: tf.io.FixedLenFeature([], tf.string),
      SEF.duration: tf.io.FixedLenFeature([], tf.float32),
      SEF.feature_fps: tf.io.FixedLenFeature([], tf.float32),
      SEF.num_steps: tf.io.FixedLenFeature([], tf.int64),
      SEF.first_frame: tf.io.FixedLenFeature([], tf.int64),
      SEF.num_frames: tf.io.FixedLenFeature([], tf.int64),
      SEF.frame_height: tf.io.FixedLenFeature([], tf.int64),
      SEF.frame_width: tf.io.FixedLenFeature([], tf.int64),
      SEF.segment_start: tf.io.VarLenFeature(tf.float32),
      SEF.segment_end: tf.io.VarLenFeature(tf.float32),
      SEF.segment_label: tf.io.VarLenFeature(tf.int64),
  }
  sequence_spec = {SEF.frames_jpeg: tf.io.FixedLenSequenceFeature([], tf.string)}
  context, sequences = tf.io.parse_single_sequence_example(
      serialized, context_features=context_spec, sequence_features=sequence_spec)
  starts = tf.sparse.to_dense(context[SEF.segment_start])
  ends = tf.sparse.to_dense(context[SEF.segment_end])
  return {
      "video_id": context[SEF.video_id],
      "duration": context[SEF.duration],
      "fps": context[SEF.feature_fps],
      "num_steps": tf.cast(context[SEF.num_steps], tf.int32),
      "first_frame": tf.cast(context[SEF.first_frame], tf.int32),
      "num_frames": tf.cast(context[SEF.num_frames], tf.int32),
      "height": tf.cast(context[SEF.frame_height], tf.int32),
      "width": tf.cast(context[SEF.frame_width], tf.int32),
      "jpeg": sequences[SEF.frames_jpeg],
      InputFields.segments_seconds: tf.reshape(tf.stack([starts, ends], axis=-1), [-1, 2]),
      InputFields.labels: tf.cast(tf.sparse.to_dense(context[SEF.segment_label]), tf.int32),
  }


def sample_indices(start, window, clip_frames, num_frames):
  """Record-frame indices [clip_frames] taken uniformly from [start, start + window), clamped
  to num_frames - 1 (int32 scalars in, int32 out)."""
  i = tf.range(clip_frames, dtype=tf.float32)
  offsets = tf.cast(tf.floor((i + 0.5) * tf.cast(window, tf.float32) / clip_frames), tf.int32)
  return tf.minimum(start + offsets, num_frames - 1)


def frame_labels_at(times, segments, labels):
  """Label of the shortest segment containing each time: times [L], segments [G, 2] (s),
  labels [G] -> int32 [L] (0 where no segment contains the time)."""
  inside = tf.logical_and(times[:, None] >= segments[None, :, 0],
                          times[:, None] < segments[None, :, 1])
  lengths = segments[:, 1] - segments[:, 0]
  big = tf.reduce_max(tf.concat([lengths, [0.0]], 0)) + 1.0
  masked = tf.where(inside, lengths[None, :], big)
  best = tf.argmin(tf.concat([masked, tf.fill([tf.shape(times)[0], 1], big)], 1), axis=1,
                   output_type=tf.int32)
  padded = tf.concat([labels, [0]], 0)
  # Column G (the appended `big` column) is only the argmin when no segment contains the time.
  return tf.where(tf.reduce_any(inside, axis=1), tf.gather(padded, best), 0)


def _crop_window(height, width, crop_size, is_training, seed):
  """(y, x) top-left corner of the crop in a height x width frame (int32 scalars)."""
  crop_h, crop_w = crop_size
  if is_training:
    y = tf.random.stateless_uniform([], seed, 0, height - crop_h + 1, tf.int32)
    x = tf.random.stateless_uniform([], seed + [0, 1], 0, width - crop_w + 1, tf.int32)
    return y, x
  return (height - crop_h) // 2, (width - crop_w) // 2


def _decode_clip(jpegs, height, width, crop_size, is_training, seed):
  """JPEGs [L] -> uint8 [L, crop_h, crop_w, 3] (or whole frames when crop_size is None)."""
  if crop_size is None:
    return tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), jpegs,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  crop_h, crop_w = crop_size
  fits = tf.logical_and(height >= crop_h, width >= crop_w)

  def fitting():
    # Whole-frame decode then slice: tf.image.decode_and_crop_jpeg would skip some work
    # but its chroma upsampling at the crop border differs from a full decode by a few
    # levels, and crops must equal the frames any other reader sees.
    frames = tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), jpegs,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    y, x = _crop_window(height, width, crop_size, is_training, seed)
    return frames[:, y:y + crop_h, x:x + crop_w]

  def upscaled():
    # Frames smaller than the crop: resize (aspect kept) so they cover it, then crop.
    frames = tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), jpegs,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    scale = tf.maximum(crop_h / tf.cast(height, tf.float32), crop_w / tf.cast(width, tf.float32))
    new_h = tf.maximum(crop_h, tf.cast(tf.math.ceil(tf.cast(height, tf.float32) * scale),
                                       tf.int32))
    new_w = tf.maximum(crop_w, tf.cast(tf.math.ceil(tf.cast(width, tf.float32) * scale),
                                       tf.int32))
    frames = tf.cast(tf.image.resize(frames, tf.stack([new_h, new_w])) + 0.5, tf.uint8)
    y, x = _crop_window(new_h, new_w, crop_size, is_training, seed)
    return frames[:, y:y + crop_h, x:x + crop_w]

  return tf.cond(fits, fitting, upscaled)


def make_clip(record, start, window, clip_frames, crop_size, is_training, random_flip,
              mean_rgb, std_rgb, seed):
  """One clip element (FrameFields + ground-truth keys, unbatched) from a parsed record, a
  window start (record frame) and length; seed: int64 [2] stateless seed."""
  num = record["num_steps"]
  idx = sample_indices(start, window, clip_frames, num)
  frames = _decode_clip(tf.gather(record["jpeg"], idx), record["height"], record["width"],
                        crop_size, is_training, seed)
  clip = tf.cast(frames, tf.float32)
  if random_flip:
    flip = tf.random.stateless_uniform([], seed + [1, 0]) < 0.5
    clip = tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
  clip = clip - tf.constant(mean_rgb, tf.float32)
  if std_rgb is not None:
    clip = clip / tf.constant(std_rgb, tf.float32)
  fps = record["fps"]
  first = record["first_frame"]
  times = tf.cast(first + idx, tf.float32) / fps
  clip_start = tf.cast(first + start, tf.float32) / fps
  clip_end = tf.cast(first + start + window, tf.float32) / fps
  segments = record[InputFields.segments_seconds]
  labels = record[InputFields.labels]
  ious = segment_ops.pairwise_tiou(tf.reshape(tf.stack([clip_start, clip_end]), [1, 2]),
                                   segments)[0]
  ious_padded = tf.concat([ious, [0.0]], 0)
  best = tf.argmax(ious_padded, output_type=tf.int32)
  best_iou = ious_padded[best]
  return {
      FrameFields.clips: clip,
      FrameFields.clip_start: clip_start,
      FrameFields.clip_end: clip_end,
      FrameFields.frame_times: times,
      FrameFields.frame_labels: frame_labels_at(times, segments, labels),
      FrameFields.clip_label: tf.where(best_iou > 0, tf.concat([labels, [0]], 0)[best], 0),
      FrameFields.clip_iou: best_iou,
      InputFields.video_id: record["video_id"],
      InputFields.segments_seconds: segments,
      InputFields.labels: labels,
      InputFields.num_segments: tf.size(labels, out_type=tf.int32),
  }


def _windows(record, scales, is_training, clips_per_record, window_stride, seed):
  """Dataset of (start, window) pairs for one parsed record."""
  num = record["num_steps"]
  scales_t = tf.constant(scales, tf.int32)
  if is_training:
    pick = tf.random.stateless_uniform([clips_per_record], seed, 0, len(scales), tf.int32)
    window = tf.gather(scales_t, pick)
    room = tf.maximum(num - window, 0) + 1
    u = tf.random.stateless_uniform([clips_per_record], seed + [0, 7])
    start = tf.minimum(tf.cast(u * tf.cast(room, tf.float32), tf.int32), room - 1)
    return tf.data.Dataset.from_tensor_slices((start, window))
  parts = []
  for scale in scales:
    stride = int(window_stride or scale)
    last = tf.maximum(num - scale, 0)
    starts = tf.range(0, last + 1, stride)
    parts.append(tf.stack([starts, tf.fill(tf.shape(starts), scale)], axis=1))
  pairs = tf.concat(parts, 0)
  return tf.data.Dataset.from_tensor_slices((pairs[:, 0], pairs[:, 1]))


def build_frame_dataset(file_pattern, batch_size, is_training, clip_frames=16,
                        window_frames=16, window_stride=None, clips_per_record=1,
                        crop_size=(112, 112), random_flip=None, mean_rgb=IMAGENET_MEAN_RGB,
                        std_rgb=None, num_parallel_reads=4, shuffle_buffer=256,
                        input_context=None, repeat=None, seed=None, skip_corrupt=False,
                        max_segments=None):
  """Batches of clips from frame records; arguments and outputs in the module docstring."""
  scales = [int(window_frames)] if isinstance(window_frames, int) else \
      [int(w) for w in window_frames]
  if not scales or min(scales) < 1:
    raise ValueError(f"window_frames must be >= 1 (or a list of such), got {window_frames}")
  if int(clip_frames) < 1:
    raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
  if int(batch_size) < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if is_training and int(clips_per_record) < 1:
    raise ValueError(f"clips_per_record must be >= 1, got {clips_per_record}")
  if crop_size is not None:
    crop_size = (int(crop_size[0]), int(crop_size[1]))
  if len(mean_rgb) != 3 or (std_rgb is not None and len(std_rgb) != 3):
    raise ValueError(f"mean_rgb / std_rgb must have 3 values, got {mean_rgb} / {std_rgb}")
  if random_flip is None:
    random_flip = is_training
  if repeat is None:
    repeat = is_training
  clip_frames = int(clip_frames)
  files = input_pipeline.list_files(file_pattern)
  sizes = [tf.io.gfile.stat(f).length for f in files]
  counter = input_pipeline.make_corrupt_counter() if skip_corrupt else None

  per_replica_batch = int(batch_size)
  dataset = tf.data.Dataset.from_tensor_slices(
      (tf.constant(files, tf.string), tf.constant(sizes, tf.int64)))
  shard_records = False
  if input_context is not None:
    per_replica_batch = input_context.get_per_replica_batch_size(int(batch_size))
    if len(files) >= input_context.num_input_pipelines:
      dataset = dataset.shard(input_context.num_input_pipelines,
                              input_context.input_pipeline_id)
    else:
      shard_records = True
  shuffle = bool(is_training and shuffle_buffer)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.interleave(
      lambda f, n: input_pipeline.checked_records(f, n, skip_corrupt, counter),
      cycle_length=max(1, min(int(num_parallel_reads), len(files))), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shard_records:
    dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  # One stateless seed pair per record (windows) and per clip (crop, flip): reproducible for
  # a given `seed` although clips are decoded in parallel.
  dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed=seed).batch(2)))
  # The functions below use explicit tf.cond / tf.where only: skipping AutoGraph's source
  # conversion saves seconds of tracing per pipeline.
  plain = tf.autograph.experimental.do_not_convert
  dataset = dataset.map(plain(lambda s, k: (parse_frame_record(s), k)),
                        num_parallel_calls=tf.data.AUTOTUNE)

  def windows(record, key):
    pairs = _windows(record, scales, is_training, int(clips_per_record), window_stride, key)
    # Clip i of the record gets the seed key + (i + 1, 0): distinct per clip and record.
    return pairs.enumerate().map(plain(
        lambda i, p: (record, p[0], p[1], key + tf.stack([i + 1, tf.constant(0, tf.int64)]))))

  dataset = dataset.flat_map(plain(windows))
  dataset = dataset.map(
      plain(lambda record, start, window, key: make_clip(
          record, start, window, clip_frames, crop_size, is_training, random_flip, mean_rgb,
          std_rgb, key)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle or seed is not None)
  if shuffle and int(shuffle_buffer) > 1:
    dataset = dataset.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
  crop = [crop_size[0], crop_size[1]] if crop_size is not None else [None, None]
  g = int(max_segments) if max_segments is not None else None
  padded_shapes = {
      FrameFields.clips: [clip_frames] + crop + [3],
      FrameFields.clip_start: [], FrameFields.clip_end: [],
      FrameFields.frame_times: [clip_frames], FrameFields.frame_labels: [clip_frames],
      FrameFields.clip_label: [], FrameFields.clip_iou: [],
      InputFields.video_id: [], InputFields.segments_seconds: [g, 2],
      InputFields.labels: [g], InputFields.num_segments: [],
  }
  dataset = dataset.padded_batch(per_replica_batch, padded_shapes=padded_shapes,
                                 drop_remainder=bool(is_training))
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  if counter is not None:
    dataset.corrupt_counter = counter
  return dataset
