"""ETP with the paper's frame Actionness Network: the actionness phase on trimmed-clip frames,
frame scores pooled into feature steps in the chain, proposal caches from untrimmed frames,
ImageNet weights at the phase start."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from google.protobuf import text_format

from tal_tf.builders import model_builder
from tal_tf.core import actionness_grouping
from tal_tf.core import stream_spec
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import etp_meta_arch as etp
from tal_tf.meta_architectures import meta_arch
from tal_tf.protos import model_pb2
from tests.core.test_frame_step_pooling import reference as pooling_reference

TINY = """etp {{ num_classes: 3 streams: "rgb" refinement_hidden_units: 6
  localization_hidden_units: 8 max_proposals: 12 max_units: 4 max_length: 12 unit_length: 4
  grouping_thresholds: 0.5 smoothing_sigma: 0
  frame_actionness {{ model_id: 34 depth_multiplier: 0.25 crop_size: 32 frames_per_call: 8
                      {weights} }} }}"""
DIMS = {"rgb": 4, "frames": stream_spec.FrameStream(36, 40)}


def build(weights="random_init: true", proposal_frames_fn=None, seed=0):
  tf_keras.utils.set_random_seed(seed)
  model = model_builder.build(text_format.Parse(TINY.format(weights=weights),
                                                model_pb2.Model()))
  model._proposal_frames_fn = proposal_frames_fn
  model.create_variables(DIMS)
  return model


@pytest.fixture(scope="module")
def model():
  return build()


def frames(b, f, seed=0):
  rng = np.random.default_rng(seed)
  return tf.constant(rng.integers(0, 256, (b, f, 36, 40, 3)), tf.uint8)


def leveled_frames(levels, seed=0):
  """One video [1, F, 36, 40, 3] whose frame i is the gray level levels[i] plus noise."""
  noise = np.random.default_rng(seed).integers(0, 5, (len(levels), 36, 40, 3))
  return tf.constant(np.clip(np.array(levels)[:, None, None, None] + noise, 0, 255)[None],
                     tf.uint8)


def test_streams_and_phases(model):
  assert model.stream_names == ("rgb", "frames") and model.frames_stream == "frames"
  assert model.phase_stream_names("actionness") == ("frames",)
  assert model.phase_stream_names("refinement") == ("rgb",)
  an = {id(v) for v in model.phase_variables("actionness")}
  # The backbone's convolutions and batch-norm scales, and the classifier: ResNet-34.
  assert len(an) == 37 + 2 * 37 + 2
  assert not an & {id(v) for v in model.phase_variables("refinement")}


def test_actionness_phase_labels_every_frame_with_its_clip(model):
  # Two trimmed clips of 6 and 4 frames (batch padded to 6), classes 1 and 3: each valid
  # frame's target is its clip's class; the loss is the per-frame sigmoid cross-entropy
  # summed over classes and averaged over the valid frames.
  x = frames(2, 6)
  groundtruth = {InputFields.segments: tf.constant([[[0.0, 6.0]], [[0.0, 4.0]]]),
                 InputFields.labels: tf.constant([[1], [3]]),
                 InputFields.num_segments: tf.constant([1, 1])}
  out = model.predict({"frames": x}, tf.constant([6, 4]), training=False, phase="actionness")
  logits = out["actionness_logits"].numpy()
  assert logits.shape == (2, 6, 3) and not logits[1, 4:].any()
  targets = np.zeros([2, 6, 3])
  targets[0, :, 0] = 1
  targets[1, :4, 2] = 1
  per = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
  valid = np.arange(6)[None, :] < np.array([[6], [4]])
  expected = (per.sum(-1) * valid).sum() / valid.sum()
  loss = model.loss(out, groundtruth, "actionness")
  np.testing.assert_allclose(float(loss["total_loss"]), expected, rtol=1e-5)
  # Training mode (random crops, batch norm on the batch) reaches the AN's weights only.
  with tf.GradientTape() as tape:
    value = model.loss(model.predict({"frames": x}, tf.constant([6, 4]), training=True,
                                     phase="actionness"), groundtruth, "actionness")
  grads = tape.gradient(value["total_loss"], model.phase_variables("actionness"))
  assert all(g is not None for g in grads)
  assert float(tf.reduce_sum(tf.abs(grads[-2]))) > 0  # the classifier kernel


def _chain_inputs(b=2, t=12, f=9, seed=1):
  rng = np.random.default_rng(seed)
  return {"rgb": tf.constant(rng.normal(size=(b, t, 4)), tf.float32), "frames": frames(b, f),
          etp.NUM_FRAMES: tf.constant([9, 5]), etp.FRAME_FPS: tf.constant([3.0, 2.0]),
          etp.FEATURE_FPS: tf.constant([4.0, 1.0])}


def test_chain_pools_frame_scores_into_feature_steps(model):
  inputs = _chain_inputs()
  num_steps = tf.constant([12, 7])
  frame_scores = tf.sigmoid(model._an.video_logits(inputs["frames"], inputs[etp.NUM_FRAMES]))
  x, n = model._inputs(inputs, num_steps)
  steps = model.step_actionness(inputs, x, n).numpy()
  expected = pooling_reference(frame_scores.numpy(), [9, 5], [3.0, 2.0], [4.0, 1.0], [12, 7],
                               12)
  np.testing.assert_allclose(steps, expected, atol=1e-6)
  # The AN proposals are Algorithm 1 on those step scores.
  segments, _, num = model._an_proposals(inputs, x, n)
  want, _, want_num = actionness_grouping.actionness_proposals(
      tf.constant(expected, tf.float32), n, max_proposals=12, **model._grouping)
  np.testing.assert_allclose(segments.numpy(), want.numpy())
  assert list(num.numpy()) == list(want_num.numpy())
  # Precomputed frame scores (the proposal caches' path) give the same detections.
  from_frames = model.predict(inputs, num_steps)
  cached = {k: v for k, v in inputs.items() if k != "frames"}
  cached[etp.FRAME_SCORES] = frame_scores
  from_scores = model.predict(cached, num_steps)
  for key in ("ln_proposals", "class_logits", "completeness", "num_proposals"):
    np.testing.assert_allclose(from_frames[key].numpy(), from_scores[key].numpy(), atol=1e-5)
  with pytest.raises(KeyError, match="frames"):
    model.predict({"rgb": inputs["rgb"]}, num_steps)


def _feature_batches(videos):
  """One batch per video of rgb features (as context.dataset_fn(False, False) reads)."""
  return [{InputFields.video_id: tf.constant([v.encode()]),
           InputFields.features: {"rgb": tf.constant(f[None], tf.float32)},
           InputFields.num_steps: tf.constant([len(f)]),
           InputFields.feature_fps: tf.constant([fps])} for v, f, fps in videos]


def _frame_batch(video_id, x, offset, fps=2.0):
  return {InputFields.video_id: tf.constant([video_id.encode()]),
          InputFields.features: {"frames": x},
          InputFields.num_steps: tf.constant([int(x.shape[1])]),
          InputFields.window_offset: tf.constant([offset]),
          InputFields.feature_fps: tf.constant([fps])}


def test_proposal_cache_from_untrimmed_frames(tmp_path):
  # Video "a": 10 frames at 2 fps stored as two records (frames 0-5 and 6-9); video "b": 4
  # frames; video "c" has features but no frames (no proposals). Dark and bright frames.
  a_frames = leveled_frames([0, 0, 250, 250, 250, 0, 0, 120, 120, 0], seed=2)
  b_frames = leveled_frames([0, 120, 120, 0], seed=3)
  calls = []

  def proposal_frames_fn():
    calls.append(1)
    return [_frame_batch("a", a_frames[:, 6:], 6), _frame_batch("b", b_frames, 0),
            _frame_batch("a", a_frames[:, :6], 0)]

  model = build(proposal_frames_fn=proposal_frames_fn)
  # Untrained scores hardly vary: shift classes 1 and 3 so that the dark frames score below
  # the grouping threshold 0.5 and the bright ones above it.
  bias = model._an.classifier.bias
  bias.assign(bias + [2.5, 0.0, 1.5])
  rng = np.random.default_rng(4)
  videos = [("a", rng.normal(size=(20, 4)), 4.0), ("b", rng.normal(size=(6, 4)), 3.0),
            ("c", rng.normal(size=(5, 4)), 1.0)]
  batches = _feature_batches(videos)
  ctx = meta_arch.TrainingContext(lambda is_training, repeat: batches, str(tmp_path), 0, True)
  model.begin_phase("refinement", ctx)
  assert calls == [1]
  with np.load(os.path.join(tmp_path, "refinement_proposals.npz")) as data:
    ids, cached, counts = list(data["ids"]), data["proposals"], data["counts"]
  assert ids == [b"a", b"b", b"c"] and counts[2] == 0
  assert counts[0] > 0 and counts[1] > 0, "random weights made no proposal: nothing tested"
  for i, (video, whole) in enumerate((("a", a_frames), ("b", b_frames))):
    # The same as the chain run on the video's whole frames.
    inputs = {"rgb": batches[i][InputFields.features]["rgb"], "frames": whole,
              etp.FRAME_FPS: tf.constant([2.0]),
              etp.FEATURE_FPS: batches[i][InputFields.feature_fps]}
    want, _, num = model._phase_inputs(inputs, batches[i][InputFields.num_steps],
                                       "refinement")
    assert counts[i] == int(num[0]), video
    np.testing.assert_allclose(cached[i], want[0].numpy(), atol=1e-5, err_msg=video)
  # A resumed run reads the cache, not the frames.
  model.begin_phase("refinement", meta_arch.TrainingContext(
      lambda is_training, repeat: batches, str(tmp_path), 0, False))
  assert calls == [1]
  # Without the untrimmed frames there is nothing to make proposals from.
  model._proposal_frames_fn = None
  with pytest.raises(ValueError, match="proposal_input_reader"):
    model.begin_phase("refinement", meta_arch.TrainingContext(
        lambda is_training, repeat: batches, str(tmp_path / "other"), 0, True))


def test_imagenet_weights_are_restored_when_the_actionness_phase_starts(tmp_path):
  source = build(seed=7)
  prefix = tf.train.Checkpoint(backbone=source._an.backbone).write(str(tmp_path / "in1k"))
  model = build(weights=f'pretrained_checkpoint: "{prefix}"', seed=8)
  kernel = lambda m: m._an.backbone.trainable_variables[0].numpy()
  assert not np.allclose(kernel(model), kernel(source))
  resumed = meta_arch.TrainingContext(None, str(tmp_path / "c"), 0, False)
  model.begin_phase("actionness", resumed)  # resuming: its own (checkpointed) weights
  assert not np.allclose(kernel(model), kernel(source))
  model.begin_phase("actionness", meta_arch.TrainingContext(None, str(tmp_path / "c"), 0,
                                                            True))
  np.testing.assert_array_equal(kernel(model), kernel(source))
