"""C3D layout (S-CNN Sec. 3.1) at scaled widths, the weight loader / Caffe-layout converter,
and per-window frame sampling."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.models import c3d


def small_net(seed=0, name="c3d"):
  tf.keras.utils.set_random_seed(seed)
  return c3d.C3d(num_outputs=5, fc_units=(16, 12), width_multiplier=1 / 16, dropout_rate=0.0,
                 name=name)


def test_layout_shapes_on_random_clips():
  net = small_net()
  clips = tf.random.uniform([2, 16, 112, 112, 3], maxval=255.0)
  x = clips
  shapes = []
  for conv in net.convs:
    x = conv(x)
    if conv.name in net.pools:
      x = net.pools[conv.name](x)
      shapes.append(tuple(x.shape[1:4]))
  # pool1 (1,1) keeps 16 frames; pool2..pool5 halve time; space halves each time, 7 -> 4.
  assert shapes == [(16, 56, 56), (8, 28, 28), (4, 14, 14), (2, 7, 7), (1, 4, 4)]
  assert [c.filters for c in net.convs] == [4, 8, 16, 16, 32, 32, 32, 32]
  logits = net(clips)
  assert logits.shape == (2, 5)
  assert net.fc6.kernel.shape == (1 * 4 * 4 * 32, 16)
  assert all(c.kernel.shape[:3] == (3, 3, 3) for c in net.convs)
  assert np.isfinite(logits.numpy()).all()


def to_caffe(net):
  """Inverse of convert_caffe_layout, written independently, for the round trip."""
  out = {}
  for conv in net.convs:
    src = {"conv1a": "conv1", "conv2a": "conv2"}.get(conv.name, conv.name)
    out[f"{src}.weight"] = np.transpose(conv.kernel.numpy(), (4, 3, 0, 1, 2))
    out[f"{src}.bias"] = conv.bias.numpy()
  k = net.fc6.kernel.numpy().reshape(1, 4, 4, -1, net.fc6.kernel.shape[1])   # d h w c out
  out["fc6.weight"] = np.transpose(k, (4, 3, 0, 1, 2)).reshape(k.shape[-1], -1)
  out["fc6.bias"] = net.fc6.bias.numpy()
  out["fc7.weight"] = net.fc7.kernel.numpy().T
  out["fc7.bias"] = net.fc7.bias.numpy()
  return out


def test_caffe_layout_round_trip_and_loader(tmp_path):
  source = small_net(seed=1, name="src")
  target = small_net(seed=2, name="dst")
  clips = tf.random.uniform([2, 16, 112, 112, 3], maxval=1.0, seed=3)
  source(clips)
  target(clips)
  arrays = c3d.convert_caffe_layout(to_caffe(source))
  arrays["input_mean"] = np.array([0.1, 0.2, 0.3], np.float32)
  path = str(tmp_path / "c3d.npz")
  np.savez(path, **arrays)
  source.input_mean.assign(arrays["input_mean"])
  c3d.load_c3d_weights(target, path)
  for name, layer in target.named_layers().items():
    if name != "fc8":
      np.testing.assert_array_equal(layer.kernel.numpy(),
                                    source.named_layers()[name].kernel.numpy())
  assert not np.array_equal(target.fc8.kernel.numpy(), source.fc8.kernel.numpy())
  target.fc8.kernel.assign(source.fc8.kernel)
  target.fc8.bias.assign(source.fc8.bias)
  np.testing.assert_allclose(target(clips).numpy(), source(clips).numpy(), rtol=1e-5,
                             atol=1e-5)
  # A mismatched file names the key and the shapes.
  arrays["fc7/kernel"] = arrays["fc7/kernel"][:, :3]
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match="fc7/kernel"):
    c3d.load_c3d_weights(target, path)


def test_sample_window_frames_matches_numpy():
  frames = np.arange(2 * 40).reshape(2, 40, 1, 1, 1).astype(np.float32)
  windows = np.array([[[0, 16], [8, 40], [30, 62]], [[0, 32], [4, 8], [0, 20]]], np.float32)
  num_frames = np.array([40, 20])
  got = c3d.sample_window_frames(frames, windows, num_frames).numpy()[..., 0, 0, 0]
  for b in range(2):
    for n in range(3):
      s, e = windows[b, n]
      idx = np.clip(np.floor(s + (np.arange(16) + 0.5) * (e - s) / 16), 0, num_frames[b] - 1)
      np.testing.assert_array_equal(got[b, n], frames[b, idx.astype(int), 0, 0, 0])


def test_window_classifier_on_frames():
  net = c3d.C3dWindowClassifier(num_outputs=3, fc_units=(8, 8), width_multiplier=1 / 16,
                                crop_size=32, dropout_rate=0.0)
  frames = tf.random.uniform([2, 40, 36, 48, 3], maxval=255.0)
  windows = tf.constant([[[0, 16], [8, 40]], [[0, 32], [16, 32]]], tf.float32)
  logits = net(frames, windows, tf.constant([40, 32]))
  assert logits.shape == (2, 2, 3)
  # The same window of the same video gives the same logits whatever the batch.
  alone = net(frames[1:, :32], windows[1:], tf.constant([32]))
  np.testing.assert_allclose(logits.numpy()[1:], alone.numpy(), rtol=1e-5, atol=1e-5)
