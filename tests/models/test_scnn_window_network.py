"""S-CNN window network on features: resampling vs a numpy reference, factorized fc6 vs the
explicit resample-then-dense form."""
import numpy as np
import tensorflow as tf

from tal_tf.models import scnn_window_network


def np_resample(x, window, num_steps, samples=16):
  """Linear interpolation between step centres t + 0.5 at bin centres of the window."""
  s, e = window
  out = []
  centres = np.arange(num_steps) + 0.5
  for i in range(samples):
    p = s + (i + 0.5) * (e - s) / samples
    out.append([np.interp(p, centres, x[:num_steps, d]) for d in range(x.shape[1])])
  return np.array(out)


def test_resample_windows_matches_numpy_interp():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 12, 3)).astype(np.float32)
  num_steps = np.array([12, 7])
  windows = np.array([[[0, 12], [2.5, 4.0], [6, 12], [0.1, 0.3]],
                      [[0, 7], [3, 9], [1, 2], [5.5, 7]]], np.float32)
  got = scnn_window_network.resample_windows(x, windows, num_steps, 16).numpy()
  for b in range(2):
    for n in range(4):
      np.testing.assert_allclose(got[b, n], np_resample(x[b], windows[b, n], num_steps[b]),
                                 rtol=1e-5, atol=1e-5)
  # A window of exactly 16 steps aligned with the steps samples each step once.
  x16 = rng.normal(size=(1, 16, 2)).astype(np.float32)
  got = scnn_window_network.resample_windows(x16, np.array([[[0, 16]]], np.float32), [16])
  np.testing.assert_allclose(got.numpy()[0, 0], x16[0], rtol=1e-6)


def test_factorized_fc6_equals_explicit_form_and_shapes():
  tf.random.set_seed(1)
  net = scnn_window_network.WindowClassifier(num_outputs=4, fc_units=(6, 5), dropout_rate=0.0)
  x = tf.random.normal([2, 10, 3])
  windows = tf.constant([[[0, 10], [2, 6], [1, 9]], [[0, 4], [1, 3], [0.5, 1]]], tf.float32)
  num_steps = tf.constant([10, 4])
  logits = net(x, windows, num_steps)
  assert logits.shape == (2, 3, 4)
  explicit = scnn_window_network.resample_windows(x, windows, num_steps)
  flat = tf.reshape(explicit, [2, 3, 16 * 3])
  want6 = tf.matmul(flat, net.fc6.kernel) + net.fc6.bias
  np.testing.assert_allclose(net.fc6_preactivation(x, windows, num_steps).numpy(),
                             want6.numpy(), rtol=1e-4, atol=1e-5)
  want = net.fc8(net.fc7(tf.nn.relu(want6)))
  np.testing.assert_allclose(logits.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
  # Padding after a video's end does not change its logits.
  padded = tf.pad(x[1:], [[0, 0], [0, 5], [0, 0]]) + tf.pad(
      tf.ones([1, 11, 3]) * 7.0, [[0, 0], [4, 0], [0, 0]])
  again = net(padded, windows[1:], num_steps[1:])
  np.testing.assert_allclose(again.numpy(), logits.numpy()[1:], rtol=1e-5, atol=1e-5)
  names = sorted(v.name for v in net.trainable_variables)
  assert any("fc8/kernel" in n for n in names) and len(names) == 6
  # An empty video (T = 0) still yields logits for its windows.
  assert net(tf.zeros([1, 0, 3]), tf.zeros([1, 1, 2]), tf.zeros([1], tf.int32)).shape == (
      1, 1, 4)
