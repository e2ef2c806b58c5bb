"""C3D (Tran et al., ICCV 2015) as S-CNN lays it out (Sec. 3.1), and its Sports-1M weights.

Layout: conv1a(64) - pool1(1,1) - conv2a(128) - pool2(2,2) - conv3a(256) - conv3b(256) -
pool3(2,2) - conv4a(512) - conv4b(512) - pool4(2,2) - conv5a(512) - conv5b(512) - pool5(2,2) -
fc6(4096) - fc7(4096) - fc8. Convolutions are 3x3x3, stride 1, 'same' padding, ReLU; pools
are max pools with a 2x2 spatial kernel and stride and the given temporal (kernel, stride).
Pools use 'same' padding, which for kernel = stride = 2 is Caffe's ceil-mode pooling of the
original C3D (pool5 turns 7x7 into 4x4: 112x112 inputs give fc6 an input of 1x4x4x512 =
8192). Dropout (0.5 in C3D) follows fc6 and fc7. Channel widths scale with
`width_multiplier` (1.0 = C3D's) so tests run small.

Input: clips [M, 16, crop, crop, 3] (uint8 or float pixels 0..255, RGB) minus `input_mean`
(a per-channel [3] variable: C3D's per-channel Sports-1M mean until pre-trained weights set
theirs). Sizes: S-CNN's input is "171 x 128 x 16", the frame size of C3D, which trains on
112x112 crops of it; we do the same by default (frame records written at 171x128, e.g.
create_frame_records --size=171x128, and `crop_size` 112): the window classifier takes a
random crop_size crop in training (one position per batch) and the centre crop otherwise.
Both sizes are configurable (the reader's frame_height / frame_width, the model's
c3d.crop_size); frames smaller than the crop are used whole (fc6's input shrinks with
them, so pre-trained weights need 112).

Pre-trained weights file (`load_c3d_weights`): a NumPy .npz of plain arrays,
  conv1a/kernel [3, 3, 3, 3, 64]    conv1a/bias [64]    (kernel: depth, height, width, in, out)
  conv2a ... conv5b likewise         fc6/kernel [8192, 4096]  fc6/bias [4096]  fc7 likewise
  input_mean [3] (optional, RGB, subtracted from input frames)
fc6's input rows are in TF's flatten order of pool5's [depth, height, width, channel]
output. fc8 is not loaded (Sports-1M has 487 classes; S-CNN's fc8 has 2 or K + 1).
`convert_caffe_layout` turns the common published layout (Caffe blobs, also used by the
PyTorch port: conv1, conv2, conv3a, ..., fc6, fc7 with weight [out, in, d, h, w] / [out, in],
and fc6 inputs in [channel, depth, height, width] order) into this one.
"""
import numpy as np
import tensorflow as tf
import tf_keras

from tal_tf.models import layer_config

# (name, base channels) of the conv layers and the (temporal kernel/stride) of the pool after.
CONV_LAYERS = (("conv1a", 64), ("conv2a", 128), ("conv3a", 256), ("conv3b", 256),
               ("conv4a", 512), ("conv4b", 512), ("conv5a", 512), ("conv5b", 512))
POOL_AFTER = {"conv1a": 1, "conv2a": 2, "conv3b": 2, "conv4b": 2, "conv5b": 2}
# Per-channel average (RGB, 0..255) of C3D's Sports-1M mean volume.
C3D_MEAN_RGB = (101.4, 97.7, 90.2)
CAFFE_NAMES = {"conv1a": "conv1", "conv2a": "conv2"}


class C3d(tf_keras.layers.Layer):
  """Clips [M, F, H, W, 3] -> logits [M, num_outputs] (C3D layout, scaled widths)."""

  def __init__(self, num_outputs, fc_units=(4096, 4096), width_multiplier=1.0,
               dropout_rate=0.5, kernel_initializer="glorot_uniform", **kwargs):
    super().__init__(**kwargs)
    if not width_multiplier > 0:
      raise ValueError(f"C3d width_multiplier must be > 0, got {width_multiplier!r}")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"C3d dropout_rate must be in [0, 1), got {dropout_rate!r}")
    self.num_outputs = int(num_outputs)
    self.fc_units = tuple(int(u) for u in fc_units)
    self.width_multiplier = float(width_multiplier)
    self.dropout_rate = float(dropout_rate)
    self._kernel_initializer = layer_config.serialize_initializer(kernel_initializer)
    init = lambda: tf_keras.initializers.get(self._kernel_initializer)
    self.convs = []
    self.pools = {}
    for name, channels in CONV_LAYERS:
      width = max(1, int(round(channels * self.width_multiplier)))
      self.convs.append(tf_keras.layers.Conv3D(width, 3, padding="same", activation="relu",
                                               kernel_initializer=init(), name=name))
      if name in POOL_AFTER:
        t = POOL_AFTER[name]
        self.pools[name] = tf_keras.layers.MaxPool3D(pool_size=(t, 2, 2), strides=(t, 2, 2),
                                                     padding="same", name=f"pool_{name}")
    self.flatten = tf_keras.layers.Flatten(name="flatten")
    self.fc6 = tf_keras.layers.Dense(self.fc_units[0], activation="relu",
                                     kernel_initializer=init(), name="fc6")
    self.fc7 = tf_keras.layers.Dense(self.fc_units[1], activation="relu",
                                     kernel_initializer=init(), name="fc7")
    self.fc8 = tf_keras.layers.Dense(self.num_outputs, kernel_initializer=init(), name="fc8")
    self.dropout6 = tf_keras.layers.Dropout(self.dropout_rate, name="dropout6")
    self.dropout7 = tf_keras.layers.Dropout(self.dropout_rate, name="dropout7")
    self.input_mean = tf.Variable(tf.constant(C3D_MEAN_RGB, tf.float32), trainable=False,
                                  name="input_mean")

  def call(self, clips, training=False):
    x = tf.cast(clips, tf.float32) - self.input_mean
    for conv in self.convs:
      x = conv(x)
      if conv.name in self.pools:
        x = self.pools[conv.name](x)
    x = self.dropout6(self.fc6(self.flatten(x)), training=training)
    x = self.dropout7(self.fc7(x), training=training)
    return self.fc8(x)

  def named_layers(self):
    """{name: layer} of the weight layers (conv1a .. conv5b, fc6, fc7, fc8)."""
    out = {c.name: c for c in self.convs}
    out.update(fc6=self.fc6, fc7=self.fc7, fc8=self.fc8)
    return out

  def get_config(self):
    config = super().get_config()
    config.update(num_outputs=self.num_outputs, fc_units=list(self.fc_units),
                  width_multiplier=self.width_multiplier, dropout_rate=self.dropout_rate,
                  kernel_initializer=self._kernel_initializer)
    return config


def load_c3d_weights(network, path):
  """Loads a C3D .npz (module docstring layout) into `network` (a built C3d); fc8 skipped.

  Raises ValueError naming the file, key and shapes on a missing key or a shape mismatch
  (e.g. a width_multiplier other than 1 or another crop size).
  """
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  for name, layer in network.named_layers().items():
    if name == "fc8":
      continue
    for part, variable in (("kernel", layer.kernel), ("bias", layer.bias)):
      key = f"{name}/{part}"
      if key not in arrays:
        raise ValueError(f"{path}: missing array {key!r} (have {sorted(arrays)[:6]}...)")
      if tuple(arrays[key].shape) != tuple(variable.shape):
        raise ValueError(f"{path}: {key} has shape {arrays[key].shape}, the network expects "
                         f"{tuple(variable.shape)}")
      variable.assign(arrays[key].astype(np.float32))
  if "input_mean" in arrays:
    network.input_mean.assign(np.asarray(arrays["input_mean"], np.float32).reshape([3]))


def convert_caffe_layout(arrays, pool5_shape=(1, 4, 4)):
  """{caffe name.weight/.bias: array} (conv [out, in, d, h, w], fc [out, in]) -> our layout.

  pool5_shape: (depth, height, width) of pool5's output (C3D at 16x112x112: (1, 4, 4)), used
  to reorder fc6's inputs from [channel, d, h, w] to TF's [d, h, w, channel].
  """
  out = {}
  for name, _ in CONV_LAYERS:
    src = CAFFE_NAMES.get(name, name)
    out[f"{name}/kernel"] = np.transpose(arrays[f"{src}.weight"], (2, 3, 4, 1, 0))
    out[f"{name}/bias"] = np.asarray(arrays[f"{src}.bias"])
  fc6 = np.asarray(arrays["fc6.weight"])                          # [4096, C * d * h * w]
  channels = fc6.shape[1] // int(np.prod(pool5_shape))
  fc6 = fc6.reshape((fc6.shape[0], channels) + tuple(pool5_shape))
  out["fc6/kernel"] = np.transpose(fc6, (2, 3, 4, 1, 0)).reshape(-1, fc6.shape[0])
  out["fc6/bias"] = np.asarray(arrays["fc6.bias"])
  out["fc7/kernel"] = np.transpose(arrays["fc7.weight"])
  out["fc7/bias"] = np.asarray(arrays["fc7.bias"])
  return out


def window_frame_indices(windows, num_frames, num_samples=16):
  """Frame indices [..., S] sampling windows [..., 2] (frames) uniformly: frame
  floor(s + (i + 0.5)(e - s) / S), clipped to [0, num_frames - 1] (num_frames broadcast to
  windows[..., 0])."""
  windows = tf.cast(windows, tf.float32)
  last = tf.maximum(tf.cast(num_frames, tf.int32) - 1, 0)[..., tf.newaxis]
  bins = (tf.range(num_samples, dtype=tf.float32) + 0.5) / float(num_samples)
  pos = windows[..., :1] + bins * (windows[..., 1:] - windows[..., :1])
  return tf.clip_by_value(tf.cast(tf.floor(pos), tf.int32), 0, last)


def sample_window_frames(frames, windows, num_frames, num_samples=16):
  """Frames [B, F, H, W, C] -> window clips [B, N, S, H, W, C] for windows [B, N, 2] (frames).

  Each window is sampled uniformly (`window_frame_indices`).
  """
  num_frames = tf.cast(num_frames, tf.int32)[:, tf.newaxis]
  index = window_frame_indices(windows, num_frames, num_samples)          # [B, N, S]
  batch = tf.shape(index)[0]
  clips = tf.gather(frames, tf.reshape(index, [batch, -1]), batch_dims=1)
  return tf.reshape(clips, tf.concat([tf.shape(index), tf.shape(frames)[2:]], 0))


class C3dWindowClassifier(tf_keras.layers.Layer):
  """(frames [B, F, H, W, 3], windows [B, N, 2] in frames, num_frames [B]) -> [B, N, outputs].

  Samples 16 frames per window, centre-crops them to crop_size and runs C3D on every window.
  """

  def __init__(self, num_outputs, fc_units=(4096, 4096), num_frames=16, width_multiplier=1.0,
               crop_size=112, dropout_rate=0.5, **kwargs):
    super().__init__(**kwargs)
    self.num_frames = int(num_frames)
    self.crop_size = int(crop_size)
    self.c3d = C3d(num_outputs, fc_units=fc_units, width_multiplier=width_multiplier,
                   dropout_rate=dropout_rate, name="c3d")

  @property
  def num_outputs(self):
    return self.c3d.num_outputs

  def call(self, frames, windows, num_steps, training=False):
    """Logits [B, N, outputs] of every window [B, N, 2] (frames)."""
    frames = tf.convert_to_tensor(frames)
    pad = tf.maximum(1 - tf.shape(frames)[1], 0)
    frames = tf.pad(frames, [[0, 0], [0, pad], [0, 0], [0, 0], [0, 0]])
    clips = sample_window_frames(frames, windows, num_steps, self.num_frames)
    shape = tf.shape(clips)
    flat = tf.reshape(clips, tf.concat([[-1], shape[2:]], 0))
    logits = self.classify(flat, training=training)
    return tf.reshape(logits, [shape[0], shape[1], self.c3d.num_outputs])

  def window_clips(self, frames, video_index, windows, num_steps):
    """Clips [M, S, H, W, 3] (frames' dtype) of M windows [M, 2] (frames) of the videos
    video_index [M] (int32) of a padded batch frames [B, F, H, W, 3] with valid lengths
    num_steps [B]: only these windows' frames are gathered."""
    frames = tf.convert_to_tensor(frames)
    video_index = tf.cast(video_index, tf.int32)
    lengths = tf.gather(tf.cast(num_steps, tf.int32), video_index)
    index = window_frame_indices(windows, lengths, self.num_frames)            # [M, S]
    rows = tf.broadcast_to(video_index[:, tf.newaxis], tf.shape(index))
    return tf.gather_nd(frames, tf.stack([rows, index], axis=-1))

  def classify(self, clips, training=False):
    """Clips [M, S, H, W, 3] -> logits [M, outputs]: crop_size crop (random position per
    call in training, centre otherwise; whole frames when smaller), then C3D."""
    shape = tf.shape(clips)
    h, w = shape[2], shape[3]
    size_h = tf.minimum(h, self.crop_size)
    size_w = tf.minimum(w, self.crop_size)
    if training:
      top = tf.random.uniform([], 0, h - size_h + 1, dtype=tf.int32)
      left = tf.random.uniform([], 0, w - size_w + 1, dtype=tf.int32)
    else:
      top, left = (h - size_h) // 2, (w - size_w) // 2
    clips = clips[:, :, top:top + self.crop_size, left:left + self.crop_size, :]
    static = clips.shape.as_list()
    crop = [min(d, self.crop_size) if d is not None else self.crop_size
            for d in static[2:4]]
    clips = tf.ensure_shape(clips, [None, self.num_frames] + crop + [3])
    return self.c3d(clips, training=training)
