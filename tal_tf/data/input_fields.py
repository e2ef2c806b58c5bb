"""The input fields a model can ask for: one table row per field.

Each `InputField` row says, for one `InputFields` key, everything the data layer does with
it: which record keys it reads (`tf.io` parse specs), how its tensor is decoded from the
parsed record (one decoder serves the single-record and the batched parsers: the batched
tensors just carry a leading batch axis), its padded shape and pad value in a batch, how a
temporal crop changes it. The SequenceExample parsers, the temporal crop and the input
pipeline's padding all read this table, so a new field is one new row in `FIELDS`.

A meta-architecture declares the fields it trains on (`input_fields`: table keys, checked
by `resolve`; `model.loss` receives exactly those); `resolve` adds the
fields every batch carries (`ALWAYS`), the segment ground truth evaluation always needs
(`EVAL_GROUNDTRUTH`) and the fields a row's decoder or crop rule reads (`requires`).
"""

import collections

import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import InputFields as F
from tal_tf.core.standard_fields import SequenceExampleFields as SEF


class CropWindow:
  """One crop of one (unbatched) decoded video, computed once and read by every crop rule.

  Attributes: offset / end / num_steps (int32 scalars: first step, end step and length of
  the kept window), decoded (the uncropped dict), and, when the video's segments were
  decoded, keep (bool [G]: which segments survive) and segments (float [G', 2] kept segments
  in window steps).
  """

  def __init__(self, decoded, offset, window_steps, min_kept_fraction):
    self.decoded = decoded
    self.offset = tf.cast(offset, tf.int32)
    num_steps = tf.cast(decoded[F.num_steps], tf.int32)
    self.end = tf.minimum(self.offset + tf.cast(window_steps, tf.int32), num_steps)
    self.num_steps = tf.maximum(self.end - self.offset, 0)
    self.keep = None
    self.segments = None
    if F.segments in decoded:
      segments = decoded[F.segments]
      lo = tf.cast(self.offset, segments.dtype)
      hi = tf.cast(self.end, segments.dtype)
      starts = tf.maximum(segments[:, 0], lo)
      ends = tf.minimum(segments[:, 1], hi)
      clipped_len = ends - starts
      orig_len = segments[:, 1] - segments[:, 0]
      # Zero-length segments (the converter drops them) have clipped_len <= 0 and are
      # dropped here too; the maximum() only keeps the division finite for them.
      kept_fraction = clipped_len / tf.maximum(orig_len, 1e-6)
      self.keep = tf.logical_and(clipped_len > 0, kept_fraction >= min_kept_fraction)
      kept = tf.boolean_mask(tf.stack([starts, ends], axis=-1) - lo, self.keep)
      self.segments = tf.reshape(kept, [-1, 2])

  def require_segments(self, key):
    """Raises when a crop rule needs the segments and they were not decoded."""
    if self.keep is None:
      raise ValueError(f"cropping field {key!r} needs {F.segments!r} in the decoded dict")


# ------------------------------------------------------------------ decoding helpers
def _dense(sparse):
  return tf.sparse.to_dense(sparse)


def _per_example_count(sparse):
  """Number of values per record of a VarLen feature: [] unbatched, [B] batched."""
  if sparse.dense_shape.shape[0] == 1:
    return tf.size(sparse.values, out_type=tf.int32)
  rows = tf.cast(sparse.indices[:, 0], tf.int32)
  batch = tf.cast(sparse.dense_shape[0], tf.int32)
  return tf.math.bincount(rows, minlength=batch, maxlength=batch, dtype=tf.int32)


def _check_ids(ids, num_classes, what):
  """ids (any shape) checked in 1..num_classes (ids outside would be silently dropped)."""
  return [
      tf.debugging.assert_greater_equal(ids, tf.constant(1, ids.dtype),
                                        message=f"{what} ids must be >= 1"),
      tf.debugging.assert_less_equal(ids, tf.constant(num_classes, ids.dtype),
                                     message=f"{what} ids must be <= num_classes="
                                             f"{num_classes}")]


def multi_hot(ids, num_classes):
  """Multi-hot float32 [num_classes] of label ids [N] (id k -> column k-1; 0 = padding and
  out-of-range ids add nothing)."""
  one_hot = tf.one_hot(tf.cast(ids, tf.int32) - 1, depth=num_classes, dtype=tf.float32)
  # Sum then clip (not max) so an empty id list gives zeros rather than -inf.
  return tf.minimum(tf.reduce_sum(one_hot, axis=0), 1.0)


def _sparse_multi_hot(sparse, num_classes, what):
  """Multi-hot [C] (unbatched) or [B, C] (batched) of a VarLen int64 id feature."""
  with tf.control_dependencies(_check_ids(sparse.values, num_classes, what)):
    one_hot = tf.one_hot(sparse.values - 1, depth=num_classes, dtype=tf.float32)
  if sparse.dense_shape.shape[0] == 1:
    summed = tf.reduce_sum(one_hot, axis=0)
  else:
    summed = tf.math.unsorted_segment_sum(one_hot, tf.cast(sparse.indices[:, 0], tf.int32),
                                          tf.cast(sparse.dense_shape[0], tf.int32))
  return tf.minimum(summed, 1.0)


def _segments_seconds(context):
  """[..., G, 2] (start, end) seconds, checked: as many starts as ends and labels."""
  starts = _dense(context[SEF.segment_start])
  ends = _dense(context[SEF.segment_end])
  counts = _per_example_count(context[SEF.segment_start])
  checks = [
      tf.debugging.assert_equal(
          counts, _per_example_count(context[SEF.segment_end]),
          message="segment/start and segment/end have different lengths"),
      tf.debugging.assert_equal(
          counts, _per_example_count(context[SEF.segment_label]),
          message="segment/start and segment/label have different lengths"),
  ]
  with tf.control_dependencies(checks):
    segments = tf.stack([starts, ends], axis=-1)
  if starts.shape.rank == 1:
    return tf.reshape(segments, [-1, 2])
  return segments


def _sequence_key(stream, spec):
  """The feature list a stream reads: features/<stream>, or frames/jpeg for frames."""
  return SEF.frames_jpeg if stream_spec.is_frames(spec) else SEF.feature_key(stream)


def _decode_features(context, sequences, lengths, stream_dims):
  """{stream: [..., T, D]} (frame streams: JPEG strings [..., T], see `decode_frames`),
  checked against video/num_steps."""
  num_steps = tf.cast(context[SEF.num_steps], tf.int32)
  out = {}
  for stream, spec in stream_dims.items():
    key = _sequence_key(stream, spec)
    values = sequences[key]
    length = (tf.cast(lengths[key], tf.int32) if lengths is not None
              else tf.shape(values, out_type=tf.int32)[0])
    check = tf.debugging.assert_equal(
        length, num_steps, message=f"features/{stream} length differs from video/num_steps")
    with tf.control_dependencies([check]):
      out[stream] = tf.identity(values)
  return out


# ------------------------------------------------------------------ crop rules
def _crop_unchanged(value, window):
  del window
  return value


def _crop_features(value, window):
  return {stream: v[window.offset:window.end] for stream, v in value.items()}


def _crop_num_steps(value, window):
  del value
  return window.num_steps


def _crop_window_offset(value, window):
  # Offsets add up: a frame record that is a piece of its video starts at its first frame.
  return value + window.offset


def _crop_segments(value, window):
  del value
  window.require_segments(F.segments)
  return window.segments


def _crop_segments_seconds(value, window):
  window.require_segments(F.segments_seconds)
  fps = tf.cast(window.decoded[F.feature_fps], window.segments.dtype)
  return tf.cast(window.segments / fps, value.dtype)


def _crop_per_segment(value, window):
  window.require_segments(F.labels)
  return tf.boolean_mask(value, window.keep)


def _crop_num_segments(value, window):
  window.require_segments(F.num_segments)
  return tf.reduce_sum(tf.cast(window.keep, value.dtype))


def _crop_video_labels(value, window):
  """Drops a class from the video-level labels when the video has segments of that class
  but the crop keeps none of them. A class with no segment in the whole video (its label
  came only from the annotation's video-level "labels", e.g. weakly labelled videos) cannot
  be located, so it is kept: nothing says the crop lost it.

  Only where the segments were decoded, i.e. for a model that also asks for segments and
  labels (or for every field): a weakly supervised model asks for video_labels alone, so
  its records' segments are never parsed and its labels stay the whole video's, as in
  weak supervision (the segments must not leak into training through the crop)."""
  if window.keep is None or F.labels not in window.decoded:
    return value
  labels = window.decoded[F.labels]
  num_classes = value.shape[-1]
  anywhere = multi_hot(labels, num_classes)
  kept = multi_hot(tf.boolean_mask(labels, window.keep), num_classes)
  lost = anywhere * (1.0 - kept)
  return value * (1.0 - lost)


# ------------------------------------------------------------------ the table
class InputField(collections.namedtuple("InputField", [
    "key", "context_specs", "decode", "pad_shape", "pad_value", "dtype", "crop",
    "requires"])):
  """One row of the field table.

  key: InputFields key. context_specs: {SequenceExample context key: tf.io spec} it reads.
  decode(context, sequences, lengths, stream_dims, num_classes) -> tensor (leading batch axis
    when the record was parsed batched; `lengths` is None for a single record).
  pad_shape(time_dim, max_segments, num_classes, stream_dims) -> padded shape of one video.
  pad_value / dtype: padding value in a batch and its dtype. crop(value, CropWindow) ->
  cropped value. requires: other fields the decoder or crop rule reads (parsed along,
  dropped from the output unless asked for).
  """


def _scalar(*unused):
  return []


def _segment_slots(time_dim, max_segments, num_classes, stream_dims):
  del time_dim, num_classes, stream_dims
  return [max_segments]


FIELDS = collections.OrderedDict((row.key, row) for row in [
    InputField(
        F.video_id, {SEF.video_id: tf.io.FixedLenFeature([], tf.string)},
        lambda c, s, l, d, n: c[SEF.video_id], _scalar, "", tf.string, _crop_unchanged,
        ()),
    InputField(
        F.duration, {SEF.duration: tf.io.FixedLenFeature([], tf.float32)},
        lambda c, s, l, d, n: c[SEF.duration], _scalar, 0.0, tf.float32, _crop_unchanged,
        ()),
    InputField(
        F.feature_fps, {SEF.feature_fps: tf.io.FixedLenFeature([], tf.float32)},
        lambda c, s, l, d, n: c[SEF.feature_fps], _scalar, 0.0, tf.float32, _crop_unchanged,
        ()),
    InputField(
        F.num_steps, {SEF.num_steps: tf.io.FixedLenFeature([], tf.int64)},
        lambda c, s, l, d, n: tf.cast(c[SEF.num_steps], tf.int32), _scalar, 0, tf.int32,
        _crop_num_steps, ()),
    InputField(
        F.features, {SEF.num_steps: tf.io.FixedLenFeature([], tf.int64)},
        lambda c, s, l, d, n: _decode_features(c, s, l, d),
        lambda t, g, n, d: {stream: [t] + stream_spec.step_shape(spec)
                            for stream, spec in d.items()},
        0.0, tf.float32, _crop_features, ()),
    InputField(
        # Feature records hold whole videos (offset 0); a frame record of a long video
        # holds frames from video/first_frame on.
        F.window_offset, {SEF.first_frame: tf.io.FixedLenFeature([], tf.int64,
                                                                 default_value=0)},
        lambda c, s, l, d, n: tf.cast(c[SEF.first_frame], tf.int32), _scalar, 0,
        tf.int32, _crop_window_offset, ()),
    InputField(
        F.segments,
        {SEF.segment_start: tf.io.VarLenFeature(tf.float32),
         SEF.segment_end: tf.io.VarLenFeature(tf.float32),
         SEF.segment_label: tf.io.VarLenFeature(tf.int64),
         SEF.feature_fps: tf.io.FixedLenFeature([], tf.float32)},
        lambda c, s, l, d, n: _segments_seconds(c) * c[SEF.feature_fps][..., None, None],
        lambda t, g, n, d: [g, 2], 0.0, tf.float32, _crop_segments, ()),
    InputField(
        F.segments_seconds,
        {SEF.segment_start: tf.io.VarLenFeature(tf.float32),
         SEF.segment_end: tf.io.VarLenFeature(tf.float32),
         SEF.segment_label: tf.io.VarLenFeature(tf.int64)},
        lambda c, s, l, d, n: _segments_seconds(c),
        lambda t, g, n, d: [g, 2], 0.0, tf.float32, _crop_segments_seconds,
        (F.segments, F.feature_fps)),
    InputField(
        F.labels, {SEF.segment_label: tf.io.VarLenFeature(tf.int64)},
        lambda c, s, l, d, n: tf.cast(_dense(c[SEF.segment_label]), tf.int32),
        _segment_slots, 0, tf.int32, _crop_per_segment, (F.segments,)),
    InputField(
        F.num_segments, {SEF.segment_label: tf.io.VarLenFeature(tf.int64)},
        lambda c, s, l, d, n: _per_example_count(c[SEF.segment_label]), _scalar, 0, tf.int32,
        _crop_num_segments, (F.segments,)),
    InputField(
        F.video_labels, {SEF.video_labels: tf.io.VarLenFeature(tf.int64)},
        lambda c, s, l, d, n: _sparse_multi_hot(c[SEF.video_labels], n, "video/labels"),
        lambda t, g, n, d: [n], 0.0, tf.float32, _crop_video_labels, ()),
])

# Fields of every batch, whatever the model asks for.
ALWAYS = (F.video_id, F.duration, F.feature_fps, F.num_steps, F.features, F.window_offset)
# Segment ground truth: the evaluator scores detections against it, for every model.
EVAL_GROUNDTRUTH = (F.segments, F.segments_seconds, F.labels, F.num_segments)


def _check_known(fields):
  unknown = [f for f in fields if f not in FIELDS]
  if unknown:
    raise ValueError(f"unknown input field(s) {unknown}; known: {list(FIELDS)} (add a row "
                     f"to tal_tf/data/input_fields.py FIELDS for a new one)")


def resolve(fields=None, is_training=True, num_classes=None):
  """Which fields a pipeline outputs and which it parses.

  Args:
    fields: InputFields keys a model trains on (its `input_fields`), or None for every known
      field (video_labels only when num_classes is given).
    is_training: evaluation also outputs EVAL_GROUNDTRUTH.
    num_classes: width of video_labels; required when video_labels is wanted.
  Returns:
    (output keys, parsed keys): tuples in table order; parsed adds what rows require.
  """
  if fields is None:
    wanted = set(FIELDS) - ({F.video_labels} if num_classes is None else set())
  else:
    fields = [fields] if isinstance(fields, str) else list(fields)
    _check_known(fields)
    wanted = set(ALWAYS) | set(fields)
  if not is_training:
    wanted |= set(EVAL_GROUNDTRUTH)
  if F.video_labels in wanted and num_classes is None:
    raise ValueError(f"input field {F.video_labels!r} needs num_classes (the width of the "
                     "multi-hot video labels)")
  parsed = set(wanted)
  pending = list(wanted)
  while pending:
    for dep in FIELDS[pending.pop()].requires:
      if dep not in parsed:
        parsed.add(dep)
        pending.append(dep)
  order = list(FIELDS)
  return (tuple(k for k in order if k in wanted), tuple(k for k in order if k in parsed))


def parse_specs(keys, stream_dims):
  """(context, sequence) tf.io parse specs reading the record keys of `keys` fields."""
  if not stream_dims:
    raise ValueError("stream_dims must name at least one stream, e.g. {'rgb': 1024}")
  _check_known(keys)
  context = {}
  for key in keys:
    context.update(FIELDS[key].context_specs)
  sequence = {}
  if F.features in keys:
    for stream, spec in stream_dims.items():
      if stream_spec.is_frames(spec):
        sequence[SEF.frames_jpeg] = tf.io.FixedLenSequenceFeature([], tf.string)
      else:
        sequence[SEF.feature_key(stream)] = tf.io.FixedLenSequenceFeature([int(spec)],
                                                                          tf.float32)
  return context, sequence


def decode(keys, context, sequences, lengths, stream_dims, num_classes):
  """Decoded tensors {key: value} of `keys` from parsed context / sequence dicts."""
  return {key: FIELDS[key].decode(context, sequences, lengths, stream_dims, num_classes)
          for key in keys}


def crop(decoded, offset, window_steps, min_kept_fraction=0.5):
  """Applies every field's crop rule to one decoded video (see temporal_crop.crop_window)."""
  _check_known(decoded)
  window = CropWindow(decoded, offset, window_steps, min_kept_fraction)
  out = {key: FIELDS[key].crop(value, window) for key, value in decoded.items()}
  if F.window_offset not in out:
    out[F.window_offset] = window.offset
  return out


def frame_record_as_crop(decoded, min_kept_fraction=0.5):
  """A frame record holding frames [first, first + n) of its video (decoded window_offset =
  first, num_steps = n) seen as a crop of the video: segments (steps and seconds) become
  record-relative and those mostly outside the record are dropped, as `crop` does. A
  whole-video record (first 0) only loses degenerate segments. Features are untouched."""
  _check_known(decoded)
  first = tf.cast(decoded[F.window_offset], tf.int32)
  count = tf.cast(decoded[F.num_steps], tf.int32)
  video = {k: v for k, v in decoded.items() if k not in (F.features, F.window_offset)}
  video[F.num_steps] = first + count
  out = crop(video, first, count, min_kept_fraction)
  if F.features in decoded:
    out[F.features] = decoded[F.features]
  return out


def _decode_jpegs(jpegs, spec):
  """JPEG strings [N] -> uint8 [N, H, W, 3]; empty strings (batch padding) -> zeros."""
  shape = stream_spec.step_shape(spec)

  def one(data):
    return tf.cond(tf.strings.length(data) > 0,
                   lambda: tf.ensure_shape(tf.io.decode_jpeg(data, channels=3), shape),
                   lambda: tf.zeros(shape, tf.uint8))

  return tf.map_fn(one, jpegs, fn_output_signature=tf.TensorSpec(shape, tf.uint8))


def decode_frames(features, stream_dims):
  """Decodes the frame streams of a features dict: JPEG strings [..., T] -> uint8
  [..., T, H, W, 3] (frames of another size than the stream declares fail); feature
  streams pass through. Core TF ops (the exported tf_example signature uses it)."""
  out = dict(features)
  for stream, spec in stream_dims.items():
    if stream not in out or not stream_spec.is_frames(spec):
      continue
    jpegs = out[stream]
    flat = tf.reshape(jpegs, [-1])
    frames = _decode_jpegs(flat, spec)
    frames = tf.reshape(frames, tf.concat([tf.shape(jpegs), stream_spec.step_shape(spec)], 0))
    out[stream] = tf.ensure_shape(frames, jpegs.shape.concatenate(stream_spec.step_shape(spec)))
  return out


def pad_shapes(keys, stream_dims, time_dim=None, max_segments=None, num_classes=None):
  """padded_shapes of one video's `keys` fields for tf.data padded_batch."""
  return {key: FIELDS[key].pad_shape(time_dim, max_segments, num_classes, stream_dims)
          for key in keys}


def pad_values(keys, stream_dims):
  """padding_values of `keys` fields for tf.data padded_batch (typed constants)."""
  out = {}
  for key in keys:
    row = FIELDS[key]
    if key == F.features:
      out[key] = {stream: tf.constant(0, stream_spec.dtype(spec))
                  for stream, spec in stream_dims.items()}
    else:
      out[key] = tf.constant(row.pad_value, row.dtype)
  return out

