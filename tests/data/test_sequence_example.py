"""Round trips of the SequenceExample encoder and the graph-mode decoder."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tal_tf.core.standard_fields import InputFields as F
from tal_tf.core.standard_fields import SequenceExampleFields as SEF
from tal_tf.data import sequence_example as se


def _parse(serialized, stream_dims, num_classes=None):
  fn = tf.function(lambda s: se.parse_sequence_example(s, stream_dims, num_classes))
  return tf.nest.map_structure(lambda t: t.numpy(), fn(tf.constant(serialized)))


def _multi_hot_reference(ids, num_classes):
  out = np.zeros(num_classes, np.float32)
  for i in ids:
    out[i - 1] = 1.0
  return out


def test_float_feature_list_encoding_matches_protobuf_api():
  values = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  values[1, 2] = -0.0
  reference = tf.train.FeatureList()
  for row in values:
    reference.feature.add().float_list.value.extend(row.tolist())
  ours = tf.train.FeatureList.FromString(se.encode_float_feature_list(values))
  assert ours == reference
  empty_rows = tf.train.FeatureList.FromString(
      se.encode_float_feature_list(np.zeros((2, 0), np.float32)))
  assert len(empty_rows.feature) == 2 and not empty_rows.feature[0].float_list.value


def test_round_trip_hand_worked_example():
  rgb = np.arange(12, dtype=np.float32).reshape(4, 3) / 7.0
  flow = -np.arange(8, dtype=np.float64).reshape(4, 2)
  example = se.make_sequence_example(
      "video_1", 2.0, 2.0, {"rgb": rgb, "flow": flow}, [[0.25, 1.0], [1.5, 2.0]], [3, 1],
      ["c", "a"])
  ctx = example.context.feature
  assert ctx[SEF.num_steps].int64_list.value == [4]
  assert list(ctx[SEF.video_labels].int64_list.value) == [1, 3]
  out = _parse(example.SerializeToString(), {"rgb": 3, "flow": 2}, num_classes=4)
  assert out[F.video_id] == b"video_1"
  assert out[F.num_steps] == 4 and out[F.num_segments] == 2
  np.testing.assert_array_equal(out[F.features]["rgb"], rgb)
  np.testing.assert_array_equal(out[F.features]["flow"], flow.astype(np.float32))
  np.testing.assert_array_equal(out[F.segments_seconds], [[0.25, 1.0], [1.5, 2.0]])
  np.testing.assert_array_equal(out[F.segments], [[0.5, 2.0], [3.0, 4.0]])  # steps = s * 2
  np.testing.assert_array_equal(out[F.labels], [3, 1])
  assert out[F.labels].dtype == np.int32
  np.testing.assert_array_equal(out[F.video_labels], [1, 0, 1, 0])
  assert out[F.duration] == 2.0 and out[F.feature_fps] == 2.0


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 12), st.integers(1, 4), st.integers(0, 4), st.integers(0, 10 ** 6))
def test_round_trip_random(num_steps, dim, num_segments, seed):
  rng = np.random.default_rng(seed)
  features = {"rgb": rng.normal(size=(num_steps, dim)).astype(np.float32),
              "flow": rng.normal(size=(num_steps, dim + 1)).astype(np.float32)}
  fps = float(rng.uniform(0.5, 4.0))
  duration = num_steps / fps
  starts = rng.uniform(0, duration, size=num_segments)
  ends = starts + rng.uniform(0.01, 3.0, size=num_segments)
  segments = np.stack([starts, ends], -1)
  labels = rng.integers(1, 6, size=num_segments)
  example = se.make_sequence_example("v", duration, fps, features, segments, labels,
                                     [f"c{l}" for l in labels])
  out = _parse(example.SerializeToString(), {"rgb": dim, "flow": dim + 1}, num_classes=5)
  for stream in features:
    np.testing.assert_array_equal(out[F.features][stream], features[stream])
  expected_seconds = segments.astype(np.float32).reshape(-1, 2)
  np.testing.assert_array_equal(out[F.segments_seconds], expected_seconds)
  np.testing.assert_allclose(out[F.segments], expected_seconds * np.float32(fps), rtol=1e-6)
  np.testing.assert_array_equal(out[F.labels], labels)
  np.testing.assert_array_equal(out[F.video_labels], _multi_hot_reference(labels, 5))
  decoded = se.decode_sequence_example_numpy(example.SerializeToString())
  assert decoded["label_texts"] == [f"c{l}" for l in labels]
  np.testing.assert_array_equal(decoded["features"]["flow"], features["flow"])


def test_video_without_segments_and_without_num_classes():
  example = se.make_sequence_example("v", 1.0, 3.0, {"rgb": np.ones((3, 2))}, [], [], [])
  out = _parse(example.SerializeToString(), {"rgb": 2})
  assert out[F.segments].shape == (0, 2) and out[F.labels].shape == (0,)
  assert F.video_labels not in out
  out = _parse(example.SerializeToString(), {"rgb": 2}, num_classes=3)
  np.testing.assert_array_equal(out[F.video_labels], [0, 0, 0])


def test_decoder_rejects_inconsistent_records():
  example = se.make_sequence_example("v", 1.0, 3.0, {"rgb": np.ones((3, 2))}, [[0, 1]], [2],
                                     ["b"])
  example.context.feature[SEF.num_steps].int64_list.value[0] = 5
  with pytest.raises(tf.errors.InvalidArgumentError, match="num_steps"):
    _parse(example.SerializeToString(), {"rgb": 2})
  example.context.feature[SEF.num_steps].int64_list.value[0] = 3
  with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=1"):
    _parse(example.SerializeToString(), {"rgb": 2}, num_classes=1)
  with pytest.raises(tf.errors.InvalidArgumentError):
    _parse(example.SerializeToString(), {"rgb": 3})  # Wrong declared dim.


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(features={"rgb": np.ones((3, 2)), "flow": np.ones((4, 2))}), "expected 3"),
    (dict(features={}), "at least one stream"),
    (dict(features={"rgb": np.ones(3)}), "must be \\[T, D\\]"),
    (dict(labels=[0]), ">= 1"),
    (dict(labels=[1, 2]), "equal counts"),
    (dict(duration=0.0), "duration"),
    (dict(feature_fps=-1.0), "feature_fps"),
])
def test_encoder_rejects_bad_input(kwargs, fragment):
  args = dict(video_id="v", duration=1.0, feature_fps=3.0, features={"rgb": np.ones((3, 2))},
              segments_seconds=[[0.0, 0.5]], labels=[1], label_texts=["a"])
  args.update(kwargs)
  with pytest.raises(ValueError, match=fragment):
    se.make_sequence_example(**args)


def test_batch_parser_matches_single_parser_with_padding():
  rng = np.random.default_rng(4)
  records, singles = [], []
  for i, (steps, count) in enumerate([(3, 2), (6, 0), (4, 1)]):
    starts = rng.uniform(0, 1, size=count)
    example = se.make_sequence_example(
        f"v{i}", steps / 2.0, 2.0, {"rgb": rng.normal(size=(steps, 2))},
        np.stack([starts, starts + 0.5], -1), [i + 1] * count, ["x"] * count)
    records.append(example.SerializeToString())
    singles.append(_parse(records[-1], {"rgb": 2}, num_classes=3))
  fn = tf.function(lambda s: se.parse_sequence_example_batch(s, {"rgb": 2}, num_classes=3))
  out = tf.nest.map_structure(lambda t: t.numpy(), fn(tf.constant(records)))
  assert out[F.features]["rgb"].shape == (3, 6, 2) and out[F.segments].shape == (3, 2, 2)
  np.testing.assert_array_equal(out[F.num_steps], [3, 6, 4])
  np.testing.assert_array_equal(out[F.num_segments], [2, 0, 1])
  np.testing.assert_array_equal(out[F.window_offset], [0, 0, 0])
  for i, single in enumerate(singles):
    steps, count = single[F.num_steps], single[F.num_segments]
    np.testing.assert_array_equal(out[F.features]["rgb"][i, :steps],
                                  single[F.features]["rgb"])
    assert not out[F.features]["rgb"][i, steps:].any()
    np.testing.assert_array_equal(out[F.segments][i, :count], single[F.segments])
    np.testing.assert_array_equal(out[F.segments_seconds][i, :count],
                                  single[F.segments_seconds])
    np.testing.assert_array_equal(out[F.labels][i, :count], single[F.labels])
    assert not out[F.labels][i, count:].any()
    np.testing.assert_array_equal(out[F.video_labels][i], single[F.video_labels])
    assert out[F.video_id][i] == single[F.video_id]


def test_batch_parser_survives_saved_model(tmp_path):
  class Parser(tf.Module):

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(self, serialized):
      out = se.parse_sequence_example_batch(serialized, {"rgb": 2}, num_classes=2)
      return {"rgb": out[F.features]["rgb"], "segments": out[F.segments],
              "num_steps": out[F.num_steps]}

  path = str(tmp_path / "parser")
  tf.saved_model.save(Parser(), path, signatures={"tf_example": Parser().parse})
  loaded = tf.saved_model.load(path)
  example = se.make_sequence_example("v", 1.0, 2.0, {"rgb": np.ones((2, 2))}, [[0.0, 0.5]],
                                     [2], ["b"])
  out = loaded.signatures["tf_example"](tf.constant([example.SerializeToString()]))
  np.testing.assert_array_equal(out["segments"].numpy(), [[[0.0, 1.0]]])
  np.testing.assert_array_equal(out["rgb"].numpy(), np.ones((1, 2, 2)))
  graph_ops = {n.op for f in loaded.signatures["tf_example"].graph.as_graph_def().library.function
               for n in f.node_def}
  assert not any(op.startswith("IO") for op in graph_ops)  # no tensorflow-io kernels
