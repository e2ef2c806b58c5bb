"""S-CNN with the C3D backbone on frames: training runs C3D only on the sampled windows
(labelled and sampled first, capped per video), inference runs the proposal network on every
window and the scoring network only on the windows it keeps; both equal the all-windows
computation where they are defined."""
import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.core.standard_fields import InputFields
from tal_tf.protos import model_pb2

CAP = 4
CONFIG = """
scnn { num_classes: 2 streams: "frames" backbone: C3D fc6_units: 8 fc7_units: 8
  dropout_rate: 0.0
  c3d { width_multiplier: 0.0625 crop_size: 24 max_training_windows_per_video: %d
        inference_chunk: 3 }
  anchor_generator { sliding_window_anchor_generator {
    window_lengths: [8, 16, 32] overlap: 0.75 frames_per_step: 1 } } }"""


def _model():
  model = model_builder.build(text_format.Parse(CONFIG % CAP, model_pb2.Model()))
  model._seed = 11  # pylint: disable=protected-access  (deterministic sampling)
  return model


def _inputs():
  # Frames as large as the crop: the crop is the whole frame, so training-mode logits
  # (random crop position) equal inference-mode ones.
  frames = tf.cast(tf.random.stateless_uniform([2, 48, 24, 24, 3], [1, 2], maxval=256,
                                               dtype=tf.int32), tf.uint8)
  num_steps = tf.constant([48, 40])
  groundtruth = {InputFields.segments: tf.constant([[[8., 24.], [30., 46.]],
                                                    [[0., 16.], [0., 0.]]]),
                 InputFields.labels: tf.constant([[1, 2], [2, 0]]),
                 InputFields.num_segments: tf.constant([2, 1])}
  return frames, num_steps, groundtruth


def _count_clips(network, log):
  original = network.classify

  def classify(clips, training=False):
    log.append(int(clips.shape[0]))
    return original(clips, training=training)

  network.classify = classify
  return original


def test_cap_per_video_keeps_a_random_subset_of_at_most_the_cap():
  model = _model()
  sampled = tf.constant([[True] * 7 + [False] * 3, [True, False] * 5,
                         [False] * 10])
  capped = model._cap_per_video(sampled, 5).numpy()  # pylint: disable=protected-access
  assert capped.sum(axis=1).tolist() == [CAP, CAP, 0]
  assert not (capped & ~sampled.numpy()).any()
  # Another seed picks another subset of the over-full row.
  other = model._cap_per_video(sampled, 6).numpy()  # pylint: disable=protected-access
  assert other.sum(axis=1).tolist() == [CAP, CAP, 0]


def test_training_runs_the_network_on_the_sampled_windows_only():
  model = _model()
  frames, num_steps, groundtruth = _inputs()
  for phase in model.training_phases:
    network = model.networks[phase]
    log = []
    original = _count_clips(network, log)
    with tf.GradientTape() as tape:
      predictions = model.predict({"frames": frames}, num_steps, training=True, phase=phase)
      assert f"{phase}_logits" not in predictions  # deferred to the loss
      losses = model.loss(predictions, groundtruth, phase)
    network.classify = original
    grads = tape.gradient(losses["total_loss"], model.phase_variables(phase))
    assert all(g is not None for g in grads)
    windows = predictions["windows"]
    labels = model.label_windows(windows, predictions["sliding_valid"], groundtruth,
                                 num_steps)
    sampled = model._cap_per_video(  # pylint: disable=protected-access
        model._sample(phase, labels), model._sample_seed(phase))  # pylint: disable=protected-access
    count = int(tf.reduce_sum(tf.cast(sampled, tf.int32)))
    valid = int(tf.reduce_sum(tf.cast(predictions["sliding_valid"], tf.int32)))
    # The sampled windows plus one dummy window (an empty batch breaks oneDNN's convs).
    assert log == [count + 1] and 0 < count < valid
    assert tf.reduce_all(tf.reduce_sum(tf.cast(sampled, tf.int32), axis=1) <= CAP)
    # The same loss as running the network on every window and weighting the sample.
    everything = network(frames, windows, num_steps, training=False)
    reference = model._network_loss(phase, everything, labels,  # pylint: disable=protected-access
                                    sampled)
    np.testing.assert_allclose(losses[f"{phase}_loss"], reference[f"{phase}_loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(losses[f"{phase}_num_windows"], count)


def test_inference_scores_only_the_windows_the_proposal_network_keeps():
  model = _model()
  frames, num_steps, _ = _inputs()
  probe = model.predict({"frames": frames}, num_steps)
  windows, valid = probe["windows"], probe["sliding_valid"].numpy()
  proposal = model.networks["proposal"](frames, windows, num_steps).numpy()
  np.testing.assert_allclose(probe["proposal_logits"].numpy()[valid], proposal[valid],
                             rtol=1e-5, atol=1e-6)
  assert not probe["proposal_logits"].numpy()[~valid].any()
  # A threshold that keeps about half of the valid windows.
  p_pro = tf.nn.softmax(proposal)[..., 1].numpy()
  model._proposal_threshold = float(np.median(p_pro[valid]))  # pylint: disable=protected-access
  kept = valid & (p_pro >= model._proposal_threshold)  # pylint: disable=protected-access
  assert 0 < kept.sum() < valid.sum()
  log = []
  original = _count_clips(model.networks["localization"], log)
  out = model.predict({"frames": frames}, num_steps)
  model.networks["localization"].classify = original
  # The kept windows and one dummy window in chunks of 3 clips.
  assert sum(log) == -(-(kept.sum() + 1) // 3) * 3
  scoring = model.networks["localization"](frames, windows, num_steps).numpy()
  got = out["localization_logits"].numpy()
  np.testing.assert_allclose(got[kept], scoring[kept], rtol=1e-5, atol=1e-6)
  assert not got[~kept].any()


def test_a_batch_without_sampled_windows_trains_on_nothing():
  """No positives (background video) -> no sampled window: zero loss, no failure."""
  model = _model()
  frames, num_steps, _ = _inputs()
  empty = {InputFields.segments: tf.zeros([2, 1, 2]), InputFields.labels: tf.zeros([2, 1],
                                                                                 tf.int32),
           InputFields.num_segments: tf.zeros([2], tf.int32)}
  step = tf.function(lambda f, n: model.loss(
      model.predict({"frames": f}, n, training=True, phase="classification"), empty,
      "classification"))
  losses = step(frames, num_steps)
  assert float(losses["classification_num_windows"]) == 0.0
  assert float(losses["total_loss"]) == 0.0
