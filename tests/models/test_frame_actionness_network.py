"""ETP's frame Actionness Network: Model Garden ResNet-34 per frame -> K logits."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from tal_tf.models import etp_networks
from tal_tf.video import feature_extraction

TINY = dict(model_id=34, depth_multiplier=0.25, crop_size=(32, 32))


def tiny(num_classes=3, seed=0, **kwargs):
  tf_keras.utils.set_random_seed(seed)
  net = etp_networks.FrameActionnessNetwork(num_classes, **dict(TINY, **kwargs),
                                            name="actionness")
  net.build(None)
  return net


@pytest.fixture(scope="module")
def net():
  return tiny(frames_per_call=3)


def frames(n, h=40, w=48, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_backbone_is_resnet34(net):
  # ResNet-34: a stem convolution, 3 + 4 + 6 + 3 basic blocks of two 3x3 convolutions, and
  # Model Garden's projection shortcut at the first block of each of the 4 groups.
  convs = [v for v in net.backbone.trainable_variables if v.shape.rank == 4]
  assert len(convs) == 1 + 2 * (3 + 4 + 6 + 3) + 4
  # depth_multiplier 0.25 of the 512 channels of the last group.
  assert net.backbone.output_specs["5"][-1] == 128
  assert net.classifier.kernel.shape == (128, 3)


def test_center_crop_and_normalization_match_numpy(net):
  x = frames(2)
  crops = net.crop(x, training=False).numpy()
  np.testing.assert_array_equal(crops, x[:, 4:36, 8:40].astype(np.float32))
  # The logits are the classifier on the globally pooled last level of the normalized crop.
  normalized = (crops - np.array(feature_extraction.IMAGENET_MEAN_RGB)) / np.array(
      feature_extraction.IMAGENET_STD_RGB)
  pooled = net.backbone(tf.constant(normalized, tf.float32), training=False)["5"]
  pooled = tf.reduce_mean(pooled, axis=[1, 2]).numpy()
  expected = pooled @ net.classifier.kernel.numpy() + net.classifier.bias.numpy()
  np.testing.assert_allclose(net(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_training_crops_are_random_windows_some_flipped(net):
  tf.random.set_seed(1)
  x = frames(40, h=36, w=38)
  crops = net.crop(x, training=True).numpy()
  flipped, positions = 0, set()
  for frame, crop in zip(x.astype(np.float32), crops):
    matches = [(y, x0, f) for y in range(5) for x0 in range(7) for f in (False, True)
               if np.array_equal(frame[y:y + 32, x0:x0 + 32][:, ::-1] if f else
                                 frame[y:y + 32, x0:x0 + 32], crop)]
    assert len(matches) == 1, "each crop is one window of its own frame, maybe flipped"
    positions.add(matches[0][:2])
    flipped += matches[0][2]
  assert 5 <= flipped <= 35 and len(positions) > 5


def test_small_frames_are_resized_to_cover_the_crop(net):
  out = net.crop(frames(2, h=16, w=24), training=False)
  assert out.shape == (2, 32, 32, 3)
  # Resized (aspect kept) to 32 x 48, then center-cropped.
  expected = tf.image.resize(frames(2, h=16, w=24).astype(np.float32), [32, 48])[:, :, 8:40]
  np.testing.assert_allclose(out.numpy(), expected.numpy(), atol=1e-4)


def test_chunked_inference_equals_one_call(net):
  x = frames(7)
  chunked = net(x).numpy()                      # 3 frames per backbone call
  whole = tiny(frames_per_call=0)
  whole.set_weights(net.get_weights())
  np.testing.assert_allclose(chunked, whole(x).numpy(), rtol=1e-5, atol=1e-5)


def test_video_logits_skip_padding(net):
  x = frames(5)
  one = net(x).numpy()
  batch = np.stack([x, np.concatenate([x[:2], np.full((3, 40, 48, 3), 255, np.uint8)])])
  out = net.video_logits(tf.constant(batch), tf.constant([5, 2])).numpy()
  np.testing.assert_allclose(out[0], one, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[1, :2], one[:2], rtol=1e-5, atol=1e-5)
  assert not out[1, 2:].any()
  empty = net.video_logits(tf.zeros([2, 0, 40, 48, 3], tf.uint8), tf.constant([0, 0]))
  assert empty.shape == (2, 0, 3)


def test_pretrained_backbone_restores_from_a_local_checkpoint(tmp_path):
  source = tiny(seed=5)
  prefix = tf.train.Checkpoint(backbone=source.backbone).write(str(tmp_path / "bb" / "ckpt"))
  target = tiny(seed=6)
  x = frames(2)
  assert not np.allclose(target(x).numpy(), source(x).numpy())
  assert target.restore_pretrained(prefix) == "backbone"
  target.classifier.set_weights(source.classifier.get_weights())
  np.testing.assert_allclose(target(x).numpy(), source(x).numpy(), rtol=1e-5, atol=1e-5)
  # A checkpoint of another architecture is refused, naming the checkpoint.
  other = etp_networks.FrameActionnessNetwork(3, model_id=18, depth_multiplier=0.25,
                                              crop_size=(32, 32))
  other.build(None)
  bad = tf.train.Checkpoint(backbone=other.backbone).write(str(tmp_path / "r18" / "ckpt"))
  with pytest.raises(ValueError, match="r18"):
    target.restore_pretrained(bad)


def test_fine_tuning_steps_reduce_the_frame_loss():
  # Two classes told apart by color: a few SGD steps (random crops and flips on) lower the
  # per-frame sigmoid cross-entropy of the clip labels.
  net = tiny(num_classes=2, seed=2)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 60, (8, 36, 36, 3)).astype(np.uint8)
  x[:4, ..., 0] += 180
  x[4:, ..., 1] += 180
  labels = np.repeat(np.eye(2, dtype=np.float32), 4, axis=0)
  optimizer = tf_keras.optimizers.SGD(0.05, momentum=0.9)

  def loss_value(training):
    logits = net(x, training=training)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))

  before = float(loss_value(False))
  for _ in range(8):
    with tf.GradientTape() as tape:
      value = loss_value(True)
    grads = tape.gradient(value, net.trainable_variables)
    optimizer.apply_gradients(zip(grads, net.trainable_variables))
  assert float(loss_value(True)) < before


def test_bad_arguments():
  with pytest.raises(ValueError, match="num_classes"):
    etp_networks.FrameActionnessNetwork(0)
  with pytest.raises(ValueError, match="crop_size"):
    etp_networks.FrameActionnessNetwork(3, crop_size=(0, 8))
