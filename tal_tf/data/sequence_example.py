"""The on-disk record: one `tf.train.SequenceExample` per video, and its graph-mode decoder.

Context: video id, duration (s), feature rate (steps/s), number of steps, segment starts and
ends (s), segment label ids and names, video-level label ids. Feature lists: one per stream
(`features/<stream>`), one float vector per feature step. Keys come from
`tal_tf.core.standard_fields.SequenceExampleFields`.
"""

import numpy as np
import tensorflow as tf

from tal_tf.core.standard_fields import InputFields
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import input_fields


def _varint(n):
  """Protobuf base-128 varint encoding of a non-negative int."""
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def encode_float_feature_list(values):
  """Serializes a float32 [T, D] array as a `tf.train.FeatureList` wire string.

  Why by hand: building T x D floats through the protobuf Python API costs ~50 ms per
  1024-d stream of a few hundred steps, which dominates conversion. The bytes written are
  the standard proto3 encoding (FeatureList.feature = 1, Feature.float_list = 2,
  FloatList.value = 1 packed little-endian float32), so any protobuf parser reads them.
  """
  values = np.ascontiguousarray(values, dtype="<f4")
  if values.ndim != 2:
    raise ValueError(f"feature list values must be [T, D], got shape {values.shape}")
  num_steps, dim = values.shape
  payload = 4 * dim
  float_list = b"\x0a" + _varint(payload)                       # FloatList.value, packed
  feature_head = b"\x12" + _varint(len(float_list) + payload)    # Feature.float_list
  step_head = b"\x0a" + _varint(len(feature_head) + len(float_list) + payload)
  prefix = step_head + feature_head + float_list
  raw = values.tobytes()
  if dim == 0:
    return prefix * num_steps
  parts = []
  for t in range(num_steps):
    parts.append(prefix)
    parts.append(raw[t * payload:(t + 1) * payload])
  return b"".join(parts)


def make_sequence_example(video_id, duration, feature_fps, features, segments_seconds,
                          labels, label_texts, video_labels=None):
  """Builds the SequenceExample of one video.

  Args:
    video_id: str.
    duration: video length in seconds (float > 0).
    feature_fps: feature steps per second (float > 0).
    features: dict stream name -> array [T, D_stream] (cast to float32); same T everywhere.
    segments_seconds: [G, 2] (start, end) in seconds.
    labels: [G] label-map ids (>= 1).
    label_texts: G class names.
    video_labels: video-level ids; default = the sorted unique `labels`.
  Returns:
    tf.train.SequenceExample.
  """
  if not features:
    raise ValueError(f"video {video_id}: features must map at least one stream to [T, D]")
  arrays = {}
  num_steps = None
  for stream, values in features.items():
    values = np.asarray(values)
    if values.ndim != 2:
      raise ValueError(f"video {video_id}: features[{stream!r}] must be [T, D], got shape "
                       f"{values.shape}")
    if num_steps is None:
      num_steps = values.shape[0]
    elif values.shape[0] != num_steps:
      raise ValueError(f"video {video_id}: features[{stream!r}] has {values.shape[0]} steps, "
                       f"expected {num_steps} like the other streams")
    arrays[stream] = values.astype(np.float32, copy=False)
  example = tf.train.SequenceExample()
  fill_context(example, video_id, duration, feature_fps, num_steps, segments_seconds, labels,
               label_texts, video_labels)
  for stream, values in arrays.items():
    example.feature_lists.feature_list[SEF.feature_key(stream)].MergeFromString(
        encode_float_feature_list(values))
  return example


def fill_context(example, video_id, duration, feature_fps, num_steps, segments_seconds,
                 labels, label_texts, video_labels=None):
  """Checks and writes the context of one video's record (shared by feature and frame
  records) into `example` (a tf.train.SequenceExample); arguments as make_sequence_example,
  num_steps = length of the record's feature lists."""
  if not isinstance(video_id, str) or not video_id:
    raise ValueError(f"video_id must be a non-empty str, got {video_id!r}")
  duration = float(duration)
  feature_fps = float(feature_fps)
  if not np.isfinite(duration) or duration <= 0:
    raise ValueError(f"video {video_id}: duration must be > 0 seconds, got {duration}")
  if not np.isfinite(feature_fps) or feature_fps <= 0:
    raise ValueError(f"video {video_id}: feature_fps must be > 0, got {feature_fps}")
  segments = np.asarray(segments_seconds, dtype=np.float64).reshape(-1, 2) \
      if np.size(segments_seconds) else np.zeros((0, 2))
  labels = np.asarray(labels, dtype=np.int64).reshape(-1)
  label_texts = list(label_texts)
  if not (len(segments) == len(labels) == len(label_texts)):
    raise ValueError(f"video {video_id}: got {len(segments)} segments, {len(labels)} labels "
                     f"and {len(label_texts)} label_texts; expected equal counts")
  if len(labels) and labels.min() < 1:
    raise ValueError(f"video {video_id}: label ids must be >= 1, got {labels.tolist()}")
  if video_labels is None:
    video_labels = np.unique(labels)
  video_labels = np.asarray(video_labels, dtype=np.int64).reshape(-1)
  ctx = example.context.feature
  ctx[SEF.video_id].bytes_list.value.append(video_id.encode("utf-8"))
  ctx[SEF.duration].float_list.value.append(duration)
  ctx[SEF.feature_fps].float_list.value.append(feature_fps)
  ctx[SEF.num_steps].int64_list.value.append(int(num_steps))
  ctx[SEF.segment_start].float_list.value.extend(segments[:, 0].tolist())
  ctx[SEF.segment_end].float_list.value.extend(segments[:, 1].tolist())
  ctx[SEF.segment_label].int64_list.value.extend(labels.tolist())
  ctx[SEF.segment_label_text].bytes_list.value.extend(
      [str(t).encode("utf-8") for t in label_texts])
  ctx[SEF.video_labels].int64_list.value.extend(video_labels.tolist())
  return example


def make_frame_sequence_example(video_id, duration, fps, jpeg_frames, segments_seconds,
                                labels, label_texts, video_labels=None, first_frame=0,
                                num_frames=None, height=0, width=0):
  """Builds a frame record: the context of make_sequence_example (feature_fps = fps frames
  per second, num_steps = len(jpeg_frames)) plus frames/jpeg (one JPEG bytes per frame),
  video/first_frame (index of jpeg_frames[0] in the video), video/num_frames (frames of the
  whole video, default first_frame + len(jpeg_frames)), video/frame_height / _width."""
  jpeg_frames = list(jpeg_frames)
  example = tf.train.SequenceExample()
  fill_context(example, video_id, duration, fps, len(jpeg_frames), segments_seconds, labels,
               label_texts, video_labels)
  if num_frames is None:
    num_frames = int(first_frame) + len(jpeg_frames)
  ctx = example.context.feature
  ctx[SEF.first_frame].int64_list.value.append(int(first_frame))
  ctx[SEF.num_frames].int64_list.value.append(int(num_frames))
  ctx[SEF.frame_height].int64_list.value.append(int(height))
  ctx[SEF.frame_width].int64_list.value.append(int(width))
  frames = example.feature_lists.feature_list[SEF.frames_jpeg].feature
  for data in jpeg_frames:
    frames.add().bytes_list.value.append(bytes(data))
  return example


def parse_sequence_example(serialized, stream_dims, num_classes=None, fields=None,
                           decode_frames=True):
  """Decodes one serialized SequenceExample (scalar string tensor) into tensors.

  Core TF ops only (used by the exported `tf_example` serving signature). What is parsed
  and how comes from the field table (tal_tf/data/input_fields.py).
  Args:
    serialized: scalar tf.string.
    stream_dims: dict stream name -> feature dim D (the streams to read).
    num_classes: if given, adds multi-hot `video_labels` [num_classes] (id k -> column k-1)
      when `fields` is None.
    fields: InputFields keys to decode (None = every known field); the fields every batch
      carries (input_fields.ALWAYS) are always decoded.
    decode_frames: frame streams (stream_spec.FrameStream) come back decoded, uint8
      [T, H, W, 3]; False leaves their JPEG strings [T] (the input pipeline crops first).
  Returns:
    dict keyed by InputFields: features {stream: [T, D] float32}, num_steps int32 [],
    groundtruth_segments [G, 2] float32 in feature steps (seconds * feature_fps),
    groundtruth_segments_seconds [G, 2], groundtruth_labels [G] int32,
    num_groundtruth_segments int32 [], duration, feature_fps float32 [], video_id string [],
    window_offset int32 [] (0), video_labels [num_classes] float32 (when asked for).
  """
  keys, _ = input_fields.resolve(fields, is_training=True, num_classes=num_classes)
  context_spec, sequence_spec = input_fields.parse_specs(keys, stream_dims)
  with tf.name_scope("parse_sequence_example"):
    context, sequences = tf.io.parse_single_sequence_example(
        serialized, context_features=context_spec, sequence_features=sequence_spec)
    decoded = input_fields.decode(keys, context, sequences, None, stream_dims, num_classes)
    if decode_frames:
      decoded[InputFields.features] = input_fields.decode_frames(
          decoded[InputFields.features], stream_dims)
    return decoded


def parse_sequence_example_batch(serialized, stream_dims, num_classes=None, fields=None):
  """Decodes a batch of serialized SequenceExamples [B] into padded batched tensors.

  Core TF ops only (for serving signatures that take a batch of records). Same keys and
  padding as the evaluation input pipeline: features {stream: [B, T_max, D]} zero padded,
  num_steps [B], groundtruth_segments / _seconds [B, G_max, 2], groundtruth_labels [B, G_max]
  (0 = padding), num_groundtruth_segments [B], video_id / duration / feature_fps [B],
  window_offset [B] (zeros), video_labels [B, num_classes] when num_classes is given.
  `fields` as in parse_sequence_example.
  """
  keys, _ = input_fields.resolve(fields, is_training=True, num_classes=num_classes)
  context_spec, sequence_spec = input_fields.parse_specs(keys, stream_dims)
  with tf.name_scope("parse_sequence_example_batch"):
    serialized = tf.reshape(serialized, [-1])
    context, sequences, lengths = tf.io.parse_sequence_example(
        serialized, context_features=context_spec, sequence_features=sequence_spec)
    decoded = input_fields.decode(keys, context, sequences, lengths, stream_dims, num_classes)
    # Frame streams: padded with empty JPEGs, decoded to zero frames.
    decoded[InputFields.features] = input_fields.decode_frames(
        decoded[InputFields.features], stream_dims)
    return decoded


def decode_sequence_example_numpy(serialized, stream_dims=None):
  """Host-side decoder (for tools and tests): bytes -> dict of numpy values, all streams."""
  example = tf.train.SequenceExample.FromString(serialized)
  ctx = example.context.feature
  streams = {}
  for key, feature_list in example.feature_lists.feature_list.items():
    if not key.startswith(SEF.feature_prefix):
      continue
    stream = key[len(SEF.feature_prefix):]
    if stream_dims is not None and stream not in stream_dims:
      continue
    rows = [np.asarray(f.float_list.value, np.float32) for f in feature_list.feature]
    dim = stream_dims[stream] if stream_dims else (len(rows[0]) if rows else 0)
    streams[stream] = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
  starts = np.asarray(ctx[SEF.segment_start].float_list.value, np.float32)
  ends = np.asarray(ctx[SEF.segment_end].float_list.value, np.float32)
  return {
      "video_id": ctx[SEF.video_id].bytes_list.value[0].decode("utf-8"),
      "duration": ctx[SEF.duration].float_list.value[0],
      "feature_fps": ctx[SEF.feature_fps].float_list.value[0],
      "num_steps": ctx[SEF.num_steps].int64_list.value[0],
      "segments_seconds": np.stack([starts, ends], axis=-1).reshape(-1, 2),
      "labels": np.asarray(ctx[SEF.segment_label].int64_list.value, np.int64),
      "label_texts": [t.decode("utf-8") for t in ctx[SEF.segment_label_text].bytes_list.value],
      "video_labels": np.asarray(ctx[SEF.video_labels].int64_list.value, np.int64),
      "features": streams,
  }
