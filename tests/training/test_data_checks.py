"""The config is checked against the label map and the records when the trainer is built,
before any graph: one error naming the file, the field and both values."""
import os
import time

import numpy as np
import pytest

from tal_tf.data import data_checks
from tal_tf.data import label_map_util
from tal_tf.data import sequence_example
from tal_tf.training import run_lib
from tal_tf.training import train_lib
from tests import toy_records



@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return toy_records.make_records(tmp_path_factory.mktemp("data_checks"), num_videos=2,
                                  num_shards=2)


def _config(records, override=""):
  return toy_records.toy_config(records, override)


def _trainer_error(config, tmp_path):
  start = time.time()
  with pytest.raises(data_checks.DataMismatchError) as info:
    train_lib.Trainer(config, str(tmp_path / "m"))
  message = str(info.value)
  assert "\n" not in message
  return message, time.time() - start


def test_matching_config_passes(records, tmp_path):
  trainer = train_lib.Trainer(_config(records), str(tmp_path / "m"))
  assert trainer.model.num_classes == toy_records.NUM_CLASSES


@pytest.mark.parametrize("num_classes", [toy_records.NUM_CLASSES - 1, 3])
def test_label_map_ids_beyond_num_classes(records, tmp_path, num_classes):
  config = _config(records, f'model {{ external {{ params {{ key: "num_classes" value: '
                            f'"{num_classes}" }} }} }}')
  message, seconds = _trainer_error(config, tmp_path)
  beyond = list(range(num_classes + 1, toy_records.NUM_CLASSES + 1))
  assert message.startswith(f"{records['label_map']}: label map ids ")
  assert str(beyond[:8])[1:-1] in message
  assert f"exceed model.external.num_classes = {num_classes}" in message
  assert "train_input_reader.label_map_path" in message
  assert seconds < 30


def test_label_map_missing_ids(records, tmp_path):
  config = _config(records, 'model { external { params { key: "num_classes" value: "22" } } }')
  message, _ = _trainer_error(config, tmp_path)
  assert message.startswith(f"{records['label_map']}: label map names no class for ids "
                            "[21, 22] of 1..22")


def test_label_map_with_a_hole(records, tmp_path):
  items = label_map_util.load_label_map(records["label_map"])
  holed = str(tmp_path / "holed.pbtxt")
  label_map_util.write_label_map(holed, [(it.id, it.name) for it in items if it.id != 7])
  config = _config(records)
  config.train_input_reader.label_map_path = holed
  message, _ = _trainer_error(config, tmp_path)
  assert message.startswith(f"{holed}: label map names no class for ids [7] of 1..20")


@pytest.mark.parametrize("stream,index,dim", [("rgb", 0, 7), ("flow", 1, 3), ("rgb", 0, 1024)])
def test_stream_dim_differs_from_the_records(records, tmp_path, stream, index, dim):
  config = _config(records)
  config.train_input_reader.streams[index].dim = dim
  message, _ = _trainer_error(config, tmp_path)
  have = {"rgb": 6, "flow": 4}[stream]
  assert message.startswith(records["files"][0] + ": ")
  assert (f"stream {stream!r} has dim {have} in the records" in message and
          f"but train_input_reader.streams[{index}].dim is {dim}" in message), message


def test_stream_absent_from_the_records(records, tmp_path):
  config = _config(records, 'train_input_reader { streams { name: "rgb" dim: 6 } '
                            'streams { name: "flow" dim: 4 } streams { name: "audio" dim: 2 } }')
  message, _ = _trainer_error(config, tmp_path)
  assert message.startswith(records["files"][0] + ": ")
  assert "has no stream 'audio' (features/audio) that train_input_reader.streams[2]" in message
  assert "the records hold streams ['flow', 'rgb']" in message


def test_every_file_is_checked_not_only_the_first(records, tmp_path):
  # A second shard written with another dim: only its first record can reveal it.
  odd = str(tmp_path / "train-odd.tfrecord")
  example = sequence_example.make_sequence_example(
      "odd", 3.0, 1.0, {"rgb": np.zeros((3, 5), np.float32),
                        "flow": np.zeros((3, 4), np.float32)},
      np.zeros((0, 2), np.float32), [], [])
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.TFRecordWriter(odd) as writer:
    writer.write(example.SerializeToString())
  config = _config(records)
  config.train_input_reader.input_path.append(odd)
  message, _ = _trainer_error(config, tmp_path)
  assert message == (f"{odd}: stream 'rgb' has dim 5 in the records (video 'odd'), but "
                     "train_input_reader.streams[0].dim is 6")


def test_record_labels_beyond_num_classes_without_a_label_map(records, tmp_path):
  config = _config(records, 'model { external { params { key: "num_classes" value: "1" } } }')
  config.train_input_reader.label_map_path = ""
  message, _ = _trainer_error(config, tmp_path)
  assert "outside 1..1 (the model's num_classes; train_input_reader reads these records)" \
      in message


def test_input_path_matching_nothing_names_the_field(records, tmp_path):
  config = _config(records)
  config.train_input_reader.input_path[:] = ["/nonexistent/x-*.tfrecord"]
  message, _ = _trainer_error(config, tmp_path)
  assert message.startswith("train_input_reader.input_path: file_pattern "
                            "'/nonexistent/x-*.tfrecord' matched no files")


def test_not_sequence_examples_and_damaged_first_records(records, tmp_path):
  junk = str(tmp_path / "junk.tfrecord")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.TFRecordWriter(junk) as writer:
    writer.write(b"\xff\xfe not a proto")
  with pytest.raises(data_checks.DataMismatchError, match="not a tf.train.SequenceExample"):
    data_checks.check_first_records([junk], {"rgb": 6})
  cut = str(tmp_path / "cut.tfrecord")
  with open(records["files"][0], "rb") as f:
    data = f.read()
  with open(cut, "wb") as f:
    f.write(data[:20])
  with pytest.raises(data_checks.DataMismatchError, match="the first record cannot be read"):
    data_checks.check_first_records([cut], {"rgb": 6})
  assert data_checks.check_first_records([cut], {"rgb": 6}, skip_corrupt=True) == 0


def test_eval_reader_is_checked_before_evaluation(records, tmp_path):
  config = _config(records)
  config.eval_input_reader.CopyFrom(config.train_input_reader)
  config.eval_input_reader.streams[1].dim = 9
  with pytest.raises(data_checks.DataMismatchError,
                     match=r"but eval_input_reader\.streams\[1\]\.dim is 9"):
    run_lib.run(config, str(tmp_path / "m"), "eval")


def test_label_map_naming_ids_otherwise_than_the_records(records, tmp_path):
  # Same ids 1..20, names in reverse order: as if the records were converted with another
  # label map. Training would learn and report every class under another class's name.
  items = label_map_util.load_label_map(records["label_map"])
  names = [it.name for it in sorted(items, key=lambda it: it.id)]
  reversed_map = str(tmp_path / "reversed.pbtxt")
  label_map_util.write_label_map(reversed_map,
                                 [(i + 1, n) for i, n in enumerate(reversed(names))])
  config = _config(records)
  config.train_input_reader.label_map_path = reversed_map
  message, seconds = _trainer_error(config, tmp_path)
  assert message.startswith(records["files"][0] + ": video ")
  assert "has a segment of class " in message
  assert "train_input_reader.label_map_path names id " in message
  assert "converted with another label map" in message
  assert seconds < 30
  # Each id's name in the message is the reversed map's, the class is the records' own.
  label_id = int(message.split(" with id ")[1].split(",")[0])
  assert f"names id {label_id} {names[toy_records.NUM_CLASSES - label_id]!r}" in message
  assert f"class {names[label_id - 1]!r} with id {label_id}" in message
