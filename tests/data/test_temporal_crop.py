"""Window cropping checked against a loop-based numpy reference."""

import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from tal_tf.core.standard_fields import InputFields as F
from tal_tf.data import temporal_crop


NUM_CLASSES = 4


def _decoded(num_steps, segments, labels, fps=2.0):
  rgb = np.arange(num_steps * 2, dtype=np.float32).reshape(num_steps, 2)
  segments = np.asarray(segments, np.float32).reshape(-1, 2)
  return {
      F.features: {"rgb": tf.constant(rgb)},
      F.num_steps: tf.constant(num_steps, tf.int32),
      F.segments: tf.constant(segments),
      F.segments_seconds: tf.constant(segments / fps),
      F.labels: tf.constant(np.asarray(labels, np.int32).reshape(-1)),
      F.num_segments: tf.constant(len(labels), tf.int32),
      F.feature_fps: tf.constant(fps, tf.float32),
  }, rgb


def _reference(segments, labels, offset, window, num_steps, min_kept):
  end = min(offset + window, num_steps)
  kept_segments, kept_labels = [], []
  for (s, e), label in zip(segments, labels):
    cs, ce = max(s, offset), min(e, end)
    if ce - cs > 0 and (ce - cs) / (e - s) >= min_kept:
      kept_segments.append([cs - offset, ce - offset])
      kept_labels.append(label)
  return np.asarray(kept_segments, np.float32).reshape(-1, 2), np.asarray(kept_labels), end


def test_hand_worked_crop():
  decoded, rgb = _decoded(10, [[1, 3], [4, 8], [7.5, 9.5]], [1, 2, 3])
  out = temporal_crop.crop_window(decoded, 3, 5, min_kept_fraction=0.5)  # steps [3, 8)
  np.testing.assert_array_equal(out[F.features]["rgb"].numpy(), rgb[3:8])
  # [1,3] -> nothing inside; [4,8] -> [1,5] whole; [7.5,9.5] -> 0.5/2 = 0.25 kept < 0.5.
  np.testing.assert_array_equal(out[F.segments].numpy(), [[1, 5]])
  np.testing.assert_array_equal(out[F.segments_seconds].numpy(), [[0.5, 2.5]])
  np.testing.assert_array_equal(out[F.labels].numpy(), [2])
  assert out[F.num_segments].numpy() == 1
  assert out[F.num_steps].numpy() == 5 and out[F.window_offset].numpy() == 3
  out = temporal_crop.crop_window(decoded, 3, 5, min_kept_fraction=0.25)
  np.testing.assert_array_equal(out[F.labels].numpy(), [2, 3])


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 30), st.integers(1, 12), st.floats(0.0, 1.0), st.integers(0, 10 ** 6))
def test_crop_matches_reference(num_steps, window, min_kept, seed):
  rng = np.random.default_rng(seed)
  num_segments = int(rng.integers(0, 6))
  starts = rng.uniform(-2, num_steps, size=num_segments).astype(np.float32)
  ends = (starts + rng.uniform(0.1, 8, size=num_segments)).astype(np.float32)
  segments = np.stack([starts, ends], -1)
  labels = rng.integers(1, 5, size=num_segments)
  offset = int(rng.integers(0, num_steps))
  decoded, rgb = _decoded(num_steps, segments, labels)
  out = temporal_crop.crop_window(decoded, offset, window, min_kept)
  ref_segments, ref_labels, end = _reference(segments, labels, offset, window, num_steps,
                                             min_kept)
  np.testing.assert_allclose(out[F.segments].numpy(), ref_segments, atol=1e-5)
  np.testing.assert_array_equal(out[F.labels].numpy(), ref_labels.reshape(-1))
  np.testing.assert_array_equal(out[F.features]["rgb"].numpy(), rgb[offset:end])
  assert out[F.num_steps].numpy() == end - offset
  # Video labels: the segment classes plus one class known only at video level (weak).
  weak = int(rng.integers(1, NUM_CLASSES + 1))
  video_labels = np.zeros(NUM_CLASSES, np.float32)
  video_labels[np.concatenate([labels, [weak]]).astype(int) - 1] = 1
  decoded[F.video_labels] = tf.constant(video_labels)
  out = temporal_crop.crop_window(decoded, offset, window, min_kept)
  expected = video_labels.copy()
  for c in range(1, NUM_CLASSES + 1):  # Drop a class that had segments and kept none.
    if c in set(labels.tolist()) and c not in set(ref_labels.tolist()):
      expected[c - 1] = 0
  np.testing.assert_array_equal(out[F.video_labels].numpy(), expected)


def test_crop_drops_video_labels_of_classes_cropped_away():
  decoded, _ = _decoded(10, [[1, 3], [6, 9]], [1, 2])
  decoded[F.video_labels] = tf.constant([1, 1, 1, 0], tf.float32)  # class 3: weak label
  out = temporal_crop.crop_window(decoded, 5, 5)   # steps [5, 10): only class 2 survives
  np.testing.assert_array_equal(out[F.video_labels].numpy(), [0, 1, 1, 0])
  out = temporal_crop.crop_window(decoded, 0, 4)   # steps [0, 4): only class 1 survives
  np.testing.assert_array_equal(out[F.video_labels].numpy(), [1, 0, 1, 0])
  # A weakly labelled video (labels, no segments) keeps its labels whatever the crop.
  weak, _ = _decoded(10, np.zeros((0, 2)), [])
  weak[F.video_labels] = tf.constant([0, 1, 0, 1], tf.float32)
  out = temporal_crop.crop_window(weak, 6, 3)
  np.testing.assert_array_equal(out[F.video_labels].numpy(), [0, 1, 0, 1])


def test_random_crop_stays_inside_and_short_videos_are_untouched():
  decoded, rgb = _decoded(20, [[2, 6]], [1])
  tf.random.set_seed(3)
  offsets = set()
  for _ in range(30):
    out = temporal_crop.random_crop(decoded, 8)
    offset = int(out[F.window_offset].numpy())
    offsets.add(offset)
    assert 0 <= offset <= 12 and out[F.num_steps].numpy() == 8
    np.testing.assert_array_equal(out[F.features]["rgb"].numpy(), rgb[offset:offset + 8])
  assert len(offsets) > 3  # Really random.
  out = temporal_crop.random_crop(decoded, 25)
  assert out[F.window_offset].numpy() == 0 and out[F.num_steps].numpy() == 20
  np.testing.assert_array_equal(out[F.segments].numpy(), [[2, 6]])
