"""WTAL trains from video labels only: records without segments give the same weights."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import sequence_example
from tal_tf.training import train_lib
from tal_tf.utils import config_util

CONFIG = """
model { wtal { num_classes: 3 streams: "rgb" streams: "flow" block_size: 8 top_k: 3
               dropout_rate: 0.5 } }
train_config {
  num_steps: 4
  optimizer { adam {} learning_rate { constant { learning_rate: 0.01 } } }
  checkpoint_every_n_steps: 4
  summary_every_n_steps: 2
  log_every_n_steps: 2
  steps_per_loop: 2
  seed: 3
}
train_input_reader {
  input_path: "%s"
  streams { name: "rgb" dim: 4 }
  streams { name: "flow" dim: 3 }
  batch_size: 3
  max_steps: 24
  shuffle_buffer_size: 8
}
"""
SEGMENT_KEYS = (SEF.segment_start, SEF.segment_end, SEF.segment_label,
                SEF.segment_label_text)


def _write(path, examples):
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      writer.write(example.SerializeToString())


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Three record files: with segments, the same stripped of them, and with other labels."""
  root = tmp_path_factory.mktemp("wtal_records")
  rng = np.random.default_rng(0)
  full, stripped, relabelled = [], [], []
  for v in range(7):
    steps = int(rng.integers(10, 40))
    features = {"rgb": rng.normal(size=[steps, 4]), "flow": rng.normal(size=[steps, 3])}
    labels = sorted(rng.choice([1, 2, 3], size=int(rng.integers(1, 3)), replace=False))
    segments = [[1.0 + i, 3.0 + i] for i in range(len(labels))]
    example = sequence_example.make_sequence_example(
        f"v{v}", steps / 2.0, 2.0, features, segments, labels,
        [f"class{c}" for c in labels])
    full.append(example)
    bare = tf.train.SequenceExample()
    bare.CopyFrom(example)
    for key in SEGMENT_KEYS:
      del bare.context.feature[key]
    stripped.append(bare)
    other = tf.train.SequenceExample()
    other.CopyFrom(bare)
    other.context.feature[SEF.video_labels].int64_list.value[:] = [(labels[0] % 3) + 1]
    relabelled.append(other)
  paths = {}
  for name, examples in (("full", full), ("stripped", stripped), ("relabelled", relabelled)):
    paths[name] = str(root / f"{name}.tfrecord")
    _write(paths[name], examples)
  return paths


def _train(path, model_dir):
  config = config_util.parse_pipeline_text(CONFIG % path)
  trainer = train_lib.Trainer(config, str(model_dir))
  trainer.train()
  return {v.name: v.numpy() for v in trainer.model.trainable_variables}


def test_training_never_reads_segments(records, tmp_path):
  # The stripped records really lack segments; the full ones have them.
  for name, count in (("stripped", 0), ("full", None)):
    for serialized in tf.data.TFRecordDataset(records[name]):
      example = tf.train.SequenceExample.FromString(serialized.numpy())
      present = [k for k in SEGMENT_KEYS if k in example.context.feature]
      assert len(present) == (count if count is not None else len(SEGMENT_KEYS))
      parsed = sequence_example.decode_sequence_example_numpy(serialized.numpy())
      assert (len(parsed["segments_seconds"]) == 0) == (name == "stripped")
  with_segments = _train(records["full"], tmp_path / "full")
  without_segments = _train(records["stripped"], tmp_path / "stripped")
  assert with_segments.keys() == without_segments.keys() and len(with_segments) == 4
  for name, value in with_segments.items():
    np.testing.assert_array_equal(value, without_segments[name], err_msg=name)
  # The comparison can fail: other video labels give other weights.
  relabelled = _train(records["relabelled"], tmp_path / "relabelled")
  assert any(not np.array_equal(value, relabelled[name])
             for name, value in with_segments.items())
  assert os.path.exists(os.path.join(tmp_path, "stripped", "checkpoint"))


def test_evaluation_draws_class_activation_curves(records, tmp_path):
  """A model with per-step class scores gets its curves (ground truth shaded) in TensorBoard;
  evaluation reads the records' segments for the ground truth only."""
  from tal_tf.training import eval_lib  # pylint: disable=g-import-not-at-top
  config = config_util.parse_pipeline_text(
      CONFIG % records["full"] + """
      eval_config { tiou_thresholds: [0.5] num_visualizations: 2 }
      eval_input_reader { input_path: "%s" streams { name: "rgb" dim: 4 }
                          streams { name: "flow" dim: 3 } batch_size: 2 }""" % records["full"])
  trainer = train_lib.Trainer(config, str(tmp_path / "m"))
  trainer.train()
  out = str(tmp_path / "eval")
  metrics, collector = eval_lib.evaluate_model(trainer.model, config, 4, out)
  assert len(collector.activation_videos) == 2
  assert {v["video_id"] for v in collector.activation_videos} <= set(collector.groundtruth)
  images = []
  for path in tf.io.gfile.glob(os.path.join(out, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      images += [v.tag for v in event.summary.value if v.tag == "class_activations"]
  assert images == ["class_activations"]
  assert "detection" in metrics or "mAP" in metrics
