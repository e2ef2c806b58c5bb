"""S-CNN's window network on pre-extracted features (the `features` backbone).

S-CNN feeds every window to C3D as 16 uniformly sampled frames. On per-step features the
equivalent input is the window's features resampled to 16 steps: sample point i of window
[s, e) (feature steps) sits at the centre of the i-th of 16 equal bins, s + (i + 0.5)(e - s)/16,
and takes the linear interpolation between the two nearest step centres (step t's feature
describes [t, t + 1), centre t + 0.5; points before the first / after the last centre take the
edge value). The flattened [16, D] window then goes through C3D's head: fc6 - fc7 - fc8 with
ReLU and dropout after fc6 and fc7 (C3D's layout; the dropout rate is configurable).

fc6 is applied without materializing the [B, N, 16, D] resampled windows: interpolation is
linear, so fc6(flatten(R x)) = sum_i (1 - w_i) z[lo_i, i] + w_i z[hi_i, i] + b with
z[t, i] = x[t] W6[i] (W6 reshaped [16, D, fc6]). That is T * 16 * D * fc6 multiply-adds for
every window of a video instead of N * 16 * D * fc6, and memory O(T * 16 * fc6) instead of
O(N * 16 * D); `resample_windows` is the explicit form (same weights, tested equal).
"""
import tensorflow as tf
import tf_keras

from tal_tf.models import layer_config

NUM_SAMPLES = 16


def window_sample_points(windows, num_steps, num_samples=NUM_SAMPLES):
  """Interpolation points of windows [B, N, 2] in videos of num_steps [B] steps.

  Returns (lo, hi) int32 [B, N, S] step indices and w float32 [B, N, S]: the sample is
  (1 - w) x[lo] + w x[hi]. Indices stay inside [0, max(num_steps - 1, 0)].
  """
  windows = tf.cast(windows, tf.float32)
  last = tf.cast(tf.maximum(tf.cast(num_steps, tf.int32) - 1, 0), tf.float32)
  last = last[:, tf.newaxis, tf.newaxis]
  start, end = windows[..., :1], windows[..., 1:]
  bins = (tf.range(num_samples, dtype=tf.float32) + 0.5) / float(num_samples)
  u = start + bins * (end - start) - 0.5                      # continuous step index
  u = tf.clip_by_value(u, 0.0, last)
  lo = tf.floor(u)
  w = u - lo
  hi = tf.minimum(lo + 1.0, last)
  return tf.cast(lo, tf.int32), tf.cast(hi, tf.int32), w


def resample_windows(features, windows, num_steps, num_samples=NUM_SAMPLES):
  """Window features [B, N, S, D] from features [B, T, D] (T >= 1), windows [B, N, 2]."""
  lo, hi, w = window_sample_points(windows, num_steps, num_samples)
  shape = tf.shape(lo)
  flat = lambda i: tf.reshape(i, [shape[0], -1])
  x_lo = tf.gather(features, flat(lo), batch_dims=1)
  x_hi = tf.gather(features, flat(hi), batch_dims=1)
  w = tf.reshape(w, [shape[0], -1, 1])
  out = (1.0 - w) * x_lo + w * x_hi
  return tf.reshape(out, tf.concat([shape, tf.shape(features)[-1:]], 0))


def _check_positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


class WindowClassifier(tf_keras.layers.Layer):
  """(features [B, T, D], windows [B, N, 2], num_steps [B]) -> logits [B, N, num_outputs].

  Sublayers fc6, fc7, fc8 (Dense) hold the weights, so optimizer rules can address e.g.
  ".*fc8.*" and a network's weights can be copied to another of the same widths.
  """

  def __init__(self, num_outputs, fc_units=(4096, 4096), num_samples=NUM_SAMPLES,
               dropout_rate=0.5, kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(**kwargs)
    _check_positive_int("WindowClassifier num_outputs", num_outputs)
    fc_units = tuple(fc_units)
    if len(fc_units) != 2:
      raise ValueError(f"WindowClassifier fc_units: expected (fc6, fc7), got {fc_units!r}")
    for i, units in enumerate(fc_units):
      _check_positive_int(f"WindowClassifier fc{6 + i} units", units)
    _check_positive_int("WindowClassifier num_samples", num_samples)
    if (isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float))
        or not 0.0 <= dropout_rate < 1.0):
      raise ValueError(f"WindowClassifier dropout_rate must be in [0, 1), got {dropout_rate!r}")
    self.num_outputs = num_outputs
    self.fc_units = fc_units
    self.num_samples = num_samples
    self.dropout_rate = float(dropout_rate)
    self._kernel_initializer = layer_config.serialize_initializer(kernel_initializer)
    init = lambda: tf_keras.initializers.get(self._kernel_initializer)
    self.fc6 = tf_keras.layers.Dense(fc_units[0], kernel_initializer=init(), name="fc6")
    self.fc7 = tf_keras.layers.Dense(fc_units[1], activation="relu",
                                     kernel_initializer=init(), name="fc7")
    self.fc8 = tf_keras.layers.Dense(num_outputs, kernel_initializer=init(), name="fc8")
    self.dropout6 = tf_keras.layers.Dropout(self.dropout_rate, name="dropout6")
    self.dropout7 = tf_keras.layers.Dropout(self.dropout_rate, name="dropout7")

  def build(self, input_shape):
    dim = input_shape[-1]
    if dim is None:
      raise ValueError("WindowClassifier: the feature dimension must be known")
    for layer, shape in ((self.fc6, [None, self.num_samples * int(dim)]),
                         (self.fc7, [None, self.fc_units[0]]),
                         (self.fc8, [None, self.fc_units[1]])):
      with tf.name_scope(layer.name):
        layer.build(shape)
    super().build(input_shape)

  def fc6_preactivation(self, features, windows, num_steps):
    """fc6 before ReLU, [B, N, fc6], via per-step projections (see module docstring)."""
    dim = tf.shape(features)[-1]
    kernel = tf.reshape(self.fc6.kernel, [self.num_samples, dim, self.fc_units[0]])
    z = tf.einsum("btd,sdh->btsh", features, kernel)                   # [B, T, S, H]
    batch, t = tf.shape(z)[0], tf.shape(z)[1]
    z = tf.reshape(z, [batch, t * self.num_samples, self.fc_units[0]])
    lo, hi, w = window_sample_points(windows, num_steps, self.num_samples)
    sample = tf.range(self.num_samples)
    flat = lambda i: tf.reshape(i * self.num_samples + sample, [batch, -1])
    z_lo = tf.gather(z, flat(lo), batch_dims=1)
    z_hi = tf.gather(z, flat(hi), batch_dims=1)
    w = tf.reshape(w, [batch, -1, 1])
    mixed = tf.reshape((1.0 - w) * z_lo + w * z_hi,
                       [batch, -1, self.num_samples, self.fc_units[0]])
    return tf.reduce_sum(mixed, axis=2) + self.fc6.bias

  def call(self, features, windows, num_steps, training=False):
    features = tf.convert_to_tensor(features, tf.float32)
    # A video without steps has nothing to interpolate: one zero step stands in.
    pad = tf.maximum(1 - tf.shape(features)[1], 0)
    features = tf.pad(features, [[0, 0], [0, pad], [0, 0]])
    h = tf.nn.relu(self.fc6_preactivation(features, windows, num_steps))
    h = self.dropout6(h, training=training)
    h = self.dropout7(self.fc7(h), training=training)
    return self.fc8(h)

  def get_config(self):
    config = super().get_config()
    config.update(num_outputs=self.num_outputs, fc_units=list(self.fc_units),
                  num_samples=self.num_samples, dropout_rate=self.dropout_rate,
                  kernel_initializer=self._kernel_initializer)
    return config
