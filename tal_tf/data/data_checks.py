"""Checks a config against the data it names, before any graph is built.

A class count that disagrees with the label map, or a stream name or dim that disagrees with
the records, otherwise surfaces tens of seconds later as a shape or one-hot error deep in a
graph that names neither the file nor the field. These checks read the label map and the
first record of every input file (cheap: one record per shard) and raise `DataMismatchError`
(a ValueError) with one line naming the file, the field and both values.
"""

import tensorflow as tf

from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import input_pipeline
from tal_tf.data import label_map_util


class DataMismatchError(ValueError):
  """The config disagrees with the data files it names."""


def check_label_map(label_map_path, num_classes, field="label_map_path",
                    num_classes_field="num_classes"):
  """Checks the label map at `label_map_path` names every id 1..num_classes and no other.

  `field` / `num_classes_field` name the config fields in the error.
  """
  items = label_map_util.load_label_map(label_map_path)
  ids = sorted({item.id for item in items})
  beyond = [i for i in ids if i > num_classes]
  if beyond:
    raise DataMismatchError(
        f"{label_map_path}: label map ids {_short(beyond)} exceed {num_classes_field} = "
        f"{num_classes} (from {field}); raise {num_classes_field} to {max(ids)} or remove "
        "those classes")
  missing = sorted(set(range(1, num_classes + 1)) - set(ids))
  if missing:
    raise DataMismatchError(
        f"{label_map_path}: label map names no class for ids {_short(missing)} of 1.."
        f"{num_classes} ({num_classes_field} = {num_classes}, from {field}); set "
        f"{num_classes_field} to {max(ids) if ids else 0} or add the classes")


def _short(values, limit=8):
  shown = ", ".join(str(v) for v in values[:limit])
  return f"[{shown}{', ...' if len(values) > limit else ''}] ({len(values)})" \
      if len(values) > limit else f"[{shown}]"


def first_record(path):
  """The first serialized record of a TFRecord file, or None for an empty file.

  Raises tf.errors.DataLossError (or another OpError) when that record is damaged.
  """
  for record in tf.data.TFRecordDataset(path).take(1):
    return record.numpy()
  return None


def check_first_records(file_patterns, stream_dims, num_classes=None, field="input_reader",
                        skip_corrupt=False, id_to_name=None):
  """Checks the first record of every file matched by `file_patterns` against the config.

  Args:
    file_patterns: list of glob patterns (the reader's input_path).
    stream_dims: {stream: dim} in declaration order (the reader's streams).
    num_classes: the model's class count (segment label ids must be <= it), or None.
    field: the reader's config field name for messages (e.g. 'train_input_reader').
    skip_corrupt: pass over files whose first record cannot be read (the reader skips
      damaged files then) instead of failing.
    id_to_name: {id: class name} of the reader's label map, or None. The records carry each
      segment's class name beside its id; a label map that names an id otherwise (records
      converted with another label map) would train and report every class under a wrong
      name, so it is refused.
  Returns:
    the number of files whose first record was checked.
  """
  try:
    files = input_pipeline.list_files(list(file_patterns))
  except ValueError as e:
    raise DataMismatchError(f"{field}.input_path: {e}") from None
  checked = 0
  for path in files:
    try:
      record = first_record(path)
    except tf.errors.OpError as e:
      if skip_corrupt:
        continue
      raise DataMismatchError(
          f"{path}: the first record cannot be read ({type(e).__name__}: "
          f"{e.message.splitlines()[0]}); set {field}.skip_corrupt_records: true to skip "
          "damaged files") from None
    if record is None:
      continue
    _check_record(path, record, stream_dims, num_classes, field, id_to_name)
    checked += 1
  return checked


def _check_record(path, record, stream_dims, num_classes, field, id_to_name=None):
  try:
    example = tf.train.SequenceExample.FromString(record)
  except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError varies by backend)
    raise DataMismatchError(f"{path}: the first record is not a tf.train.SequenceExample "
                            f"(is {field}.input_path pointing at feature records?)") from None
  context = example.context.feature
  video = context[SEF.video_id].bytes_list.value[0].decode("utf-8", "replace") \
      if SEF.video_id in context and context[SEF.video_id].bytes_list.value else "?"
  lists = example.feature_lists.feature_list
  available = sorted(k[len(SEF.feature_prefix):] for k in lists
                     if k.startswith(SEF.feature_prefix))
  for i, (stream, dim) in enumerate(stream_dims.items()):
    if stream_spec.is_frames(dim):
      _check_frames(path, example, video, stream, dim, f"{field}.streams[{i}]")
      continue
    key = SEF.feature_key(stream)
    if key not in lists:
      raise DataMismatchError(
          f"{path}: record of video {video!r} has no stream {stream!r} ({key}) that "
          f"{field}.streams[{i}] declares; the records hold streams {available}")
    steps = lists[key].feature
    if steps:
      have = len(steps[0].float_list.value)
      if have != dim:
        raise DataMismatchError(
            f"{path}: stream {stream!r} has dim {have} in the records (video {video!r}), "
            f"but {field}.streams[{i}].dim is {dim}")
  if num_classes is not None:
    labels = list(context[SEF.segment_label].int64_list.value) \
        if SEF.segment_label in context else []
    labels += list(context[SEF.video_labels].int64_list.value) \
        if SEF.video_labels in context else []
    bad = sorted({int(l) for l in labels if l < 1 or l > num_classes})
    if bad:
      raise DataMismatchError(
          f"{path}: video {video!r} has label ids {bad} outside 1..{num_classes} (the "
          f"model's num_classes; {field} reads these records)")
  if id_to_name is not None:
    _check_label_names(path, context, video, id_to_name, field)


def _check_label_names(path, context, video, id_to_name, field):
  """Each segment's (id, class name) in the record must agree with the label map."""
  ids = context[SEF.segment_label].int64_list.value if SEF.segment_label in context else []
  texts = context[SEF.segment_label_text].bytes_list.value \
      if SEF.segment_label_text in context else []
  texts = [t.decode("utf-8", "replace") for t in texts]
  for label_id, text in zip(ids, texts):
    name = id_to_name.get(int(label_id))
    if name is not None and name != text:
      raise DataMismatchError(
          f"{path}: video {video!r} has a segment of class {text!r} with id {label_id}, but "
          f"{field}.label_map_path names id {label_id} {name!r}; the records were converted "
          "with another label map (convert again, or point label_map_path at that one)")


def _check_frames(path, example, video, stream, spec, where):
  """A FRAMES stream needs frame records (frames/jpeg) of the declared frame size."""
  lists = example.feature_lists.feature_list
  if SEF.frames_jpeg not in lists:
    raise DataMismatchError(
        f"{path}: record of video {video!r} has no {SEF.frames_jpeg} feature list, which "
        f"{where} (stream {stream!r}, type FRAMES) reads; write frame records with "
        f"tal_tf.dataset_tools.create_frame_records")
  context = example.context.feature
  have = tuple(int(context[k].int64_list.value[0]) if k in context and
               context[k].int64_list.value else 0
               for k in (SEF.frame_height, SEF.frame_width))
  if have != (int(spec.height), int(spec.width)):
    raise DataMismatchError(
        f"{path}: frames of video {video!r} are {have[0]}x{have[1]} (height x width), but "
        f"{where}.frame_height x frame_width is {spec.height}x{spec.width}")
  fps = context[SEF.feature_fps].float_list.value[0] \
      if SEF.feature_fps in context and context[SEF.feature_fps].float_list.value else 0.0
  if spec.fps and abs(fps - spec.fps) > 1e-3 * spec.fps:
    raise DataMismatchError(
        f"{path}: frames of video {video!r} are at {fps:g} fps, but {where}.frame_rate is "
        f"{spec.fps:g}")
