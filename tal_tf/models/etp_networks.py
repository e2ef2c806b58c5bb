"""ETP's three networks as Keras (tf_keras) layers (Qiu et al., ICMR 2018, Sec. 3).

  ActionnessHead      per-step class scores S_1..S_K from per-step features (the `features`
                      variant of the Actionness Network)
  FrameActionnessNetwork  per-frame class scores S_1..S_K from RGB frames: Model Garden
                      ResNet (the paper's ResNet-34) + FC (the paper's Actionness Network)
  RefinementNetwork   2-layer BiGRU over a proposal's unit features + FC regressing Eq. 4's
                      (center, span) codes
  NonLocalBlock       Eq. 5 with the dot-product similarity, added with a residual connection
  LocalizationHead    structured-pyramid parts -> (non-local block) -> activity classifier
                      (K + 1), completeness score, boundary regression
"""
import tensorflow as tf
import tf_keras

from tal_tf.video import feature_extraction


def _positive_int(name, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ActionnessHead(tf_keras.layers.Layer):
  """Per-step features [B, T, D] -> class logits [B, T, K] (S_k = sigmoid of the logit).

  The paper's Actionness Network classifies single frames with ResNet-34. On precomputed
  features each feature step (a snippet of frames) plays the role of a frame: a per-step
  FC layer, a temporal convolution (kernel `kernel_size`, so a step sees its neighbours as a
  frame classifier sees motion blur) and a per-step FC classifier. Padded steps (>= num_steps)
  are zeroed after the first layer so a video's scores do not depend on its batch.
  """

  def __init__(self, num_classes, hidden_units=256, kernel_size=3, dropout_rate=0.0,
               **kwargs):
    super().__init__(**kwargs)
    _positive_int("ActionnessHead num_classes", num_classes)
    _positive_int("ActionnessHead hidden_units", hidden_units)
    _positive_int("ActionnessHead kernel_size", kernel_size)
    self.num_classes, self.hidden_units = num_classes, hidden_units
    self.kernel_size, self.dropout_rate = kernel_size, float(dropout_rate)
    self.embed = tf_keras.layers.Dense(hidden_units, activation="relu", name="embed")
    self.temporal = tf_keras.layers.Conv1D(hidden_units, kernel_size, padding="same",
                                           activation="relu", name="temporal")
    self.dropout = tf_keras.layers.Dropout(self.dropout_rate)
    self.classifier = tf_keras.layers.Dense(num_classes, name="classifier")

  def call(self, features, num_steps, training=False):
    mask = tf.sequence_mask(num_steps, tf.shape(features)[1], dtype=features.dtype)[..., None]
    x = self.embed(features) * mask
    x = self.temporal(x) * mask
    x = self.dropout(x, training=training)
    return self.classifier(x)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, hidden_units=self.hidden_units,
                  kernel_size=self.kernel_size, dropout_rate=self.dropout_rate)
    return config


class FrameActionnessNetwork(tf_keras.layers.Layer):
  """RGB frames [N, H, W, 3] (uint8 or float 0..255) -> class logits [N, K]; S_k is the
  sigmoid of logit k.

  The paper's Actionness Network (Sec. 3.1, 4.2): an image classifier, ResNet-34 pretrained
  on ImageNet then fine-tuned on trimmed action clips (UCF101 for THUMOS14), applied to
  every frame. Here: Model Garden's ResNet (`model_id`, `depth_multiplier`), global average
  pooling of its last level, dropout, one FC layer with K outputs.

  Sigmoid, not softmax: Algorithm 1 adds the curve S_{K+1} = (1/K) sum_k S_k and thresholds
  every curve with the same t. Under a softmax over the K action classes that average is the
  constant 1/K (the scores of a frame sum to 1), so the paper's extra curve would carry
  nothing; independent per-class probabilities ("class-specific actionness", each a binary
  "is this frame action k" score, the class-specific counterpart of TAG's binary actionness
  the paper starts from) keep S_{K+1} a generic actionness curve and t comparable across
  classes. Fine-tuning therefore minimizes per-class sigmoid cross-entropy with the clip's
  class as the only positive.

  Input handling (inside the network, so training and the exported graph agree): pixels are
  normalized with the ImageNet mean / std (the pretrained weights' convention, as the
  feature extractor's GardenResNet). Training: a `crop_size` crop at a uniformly random
  position of each frame and a horizontal flip with probability 1/2 (the paper's random
  crop and flip). Inference: the center crop. Frames smaller than the crop are first resized
  (aspect ratio kept) to cover it.
  """

  def __init__(self, num_classes, model_id=34, depth_multiplier=1.0, crop_size=(224, 224),
               dropout_rate=0.0, frames_per_call=64, **kwargs):
    super().__init__(**kwargs)
    _positive_int("FrameActionnessNetwork num_classes", num_classes)
    crop_size = tuple(int(c) for c in crop_size)
    if len(crop_size) != 2 or min(crop_size) < 1:
      raise ValueError(f"FrameActionnessNetwork crop_size must be (height, width) >= 1, got "
                       f"{crop_size!r}")
    if frames_per_call < 0:
      raise ValueError(f"FrameActionnessNetwork frames_per_call must be >= 0, got "
                       f"{frames_per_call!r}")
    self.num_classes, self.model_id = num_classes, int(model_id)
    self.depth_multiplier, self.crop_size = float(depth_multiplier), crop_size
    self.dropout_rate, self.frames_per_call = float(dropout_rate), int(frames_per_call)
    self.backbone = feature_extraction.build_garden_resnet(self.model_id, self.depth_multiplier)
    self._top = feature_extraction.top_level(self.backbone)
    self.dropout = tf_keras.layers.Dropout(self.dropout_rate)
    self.classifier = tf_keras.layers.Dense(num_classes, name="classifier")
    self._mean = tf.constant(feature_extraction.IMAGENET_MEAN_RGB, tf.float32)
    self._std = tf.constant(feature_extraction.IMAGENET_STD_RGB, tf.float32)

  def build(self, input_shape):
    # Variables are created by a call on a crop-sized dummy frame (Keras would otherwise
    # build the backbone lazily inside a tf.function or a map_fn).
    if not self.backbone.built or not self.classifier.built:
      self._classify(tf.zeros((1,) + self.crop_size + (3,)), training=False)
    super().build(input_shape)

  def crop(self, frames, training):
    """Frames [N, H, W, 3] -> float32 [N, crop_h, crop_w, 3] (random crop + flip when
    training, center crop otherwise; small frames resized up first)."""
    frames = tf.cast(frames, tf.float32)
    crop_h, crop_w = self.crop_size
    shape = tf.shape(frames)
    n, height, width = shape[0], shape[1], shape[2]

    def resized():
      scale = tf.maximum(crop_h / tf.cast(height, tf.float32), crop_w / tf.cast(width,
                                                                                tf.float32))
      size = tf.maximum(tf.cast(tf.math.ceil(tf.cast(tf.stack([height, width]), tf.float32) *
                                             scale), tf.int32), [crop_h, crop_w])
      return tf.image.resize(frames, size)

    frames = tf.cond((height < crop_h) | (width < crop_w), resized, lambda: frames)
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    if training:
      top = tf.random.uniform([n], 0, height - crop_h + 1, tf.int32)
      left = tf.random.uniform([n], 0, width - crop_w + 1, tf.int32)
      flip = tf.random.uniform([n]) < 0.5
    else:
      top = tf.fill([n], (height - crop_h) // 2)
      left = tf.fill([n], (width - crop_w) // 2)
      flip = tf.zeros([n], tf.bool)
    rows = top[:, None] + tf.range(crop_h)[None, :]                      # [N, crop_h]
    cols = left[:, None] + tf.range(crop_w)[None, :]                     # [N, crop_w]
    # A flip reads the crop's columns right to left.
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    out = tf.gather(frames, rows, axis=1, batch_dims=1)                  # [N, crop_h, W, 3]
    out = tf.gather(out, cols, axis=2, batch_dims=1)                     # [N, crop_h, crop_w, 3]
    return tf.ensure_shape(out, [None, crop_h, crop_w, 3])

  def _classify(self, crops, training):
    x = (crops - self._mean) / self._std
    pooled = tf.reduce_mean(self.backbone(x, training=training)[self._top], axis=[1, 2])
    return self.classifier(self.dropout(pooled, training=training))

  def call(self, frames, training=False):
    """Frames [N, H, W, 3] -> logits [N, K]. At inference frames go through the backbone
    `frames_per_call` at a time (0 = all at once), bounding memory on long videos."""
    crops = self.crop(frames, training)
    chunk = self.frames_per_call
    if training or not chunk:
      return self._classify(crops, training)
    n = tf.shape(crops)[0]
    padded = tf.pad(crops, [[0, (-n) % chunk], [0, 0], [0, 0], [0, 0]])
    chunks = tf.reshape(padded, [-1, chunk] + list(self.crop_size) + [3])
    logits = tf.map_fn(lambda c: self._classify(c, False), chunks,
                       fn_output_signature=tf.TensorSpec([chunk, self.num_classes],
                                                         tf.float32))
    return tf.reshape(logits, [-1, self.num_classes])[:n]

  def video_logits(self, frames, num_frames, training=False):
    """Frames [B, F, H, W, 3] with num_frames [B] valid -> logits [B, F, K] (0 at padded
    frames, which never reach the backbone: they would also skew batch-norm statistics)."""
    shape = tf.shape(frames)
    batch, count = shape[0], shape[1]
    valid = tf.sequence_mask(tf.cast(num_frames, tf.int32), count)
    index = tf.where(valid)                                              # [N, 2]
    logits = self(tf.gather_nd(frames, index), training=training)
    return tf.scatter_nd(index, logits,
                         tf.cast(tf.stack([batch, count, self.num_classes]), tf.int64))

  def restore_pretrained(self, checkpoint):
    """Loads the backbone's ImageNet weights from a local checkpoint (see
    feature_extraction.restore_backbone for the layouts); returns the layout found."""
    self.build(None)
    return feature_extraction.restore_backbone(self.backbone, checkpoint)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, model_id=self.model_id,
                  depth_multiplier=self.depth_multiplier, crop_size=self.crop_size,
                  dropout_rate=self.dropout_rate, frames_per_call=self.frames_per_call)
    return config


class RefinementNetwork(tf_keras.layers.Layer):
  """Unit features [N, U, F] + mask [N, U] -> Eq. 4 codes [N, 2] = (center, log span).

  `num_layers` stacked bidirectional GRUs (the paper: 2 with 512 hidden units) read the
  valid units in order; the last layer's final forward and backward states go through an FC
  layer with two outputs.
  """

  def __init__(self, hidden_units=512, num_layers=2, **kwargs):
    super().__init__(**kwargs)
    _positive_int("RefinementNetwork hidden_units", hidden_units)
    _positive_int("RefinementNetwork num_layers", num_layers)
    self.hidden_units, self.num_layers = hidden_units, num_layers
    self.grus = [
        tf_keras.layers.Bidirectional(
            tf_keras.layers.GRU(hidden_units, return_sequences=i < num_layers - 1),
            name=f"bigru_{i}")
        for i in range(num_layers)]
    # Zero-initialized output: an untrained RN leaves proposals as fitted to the grid.
    self.regressor = tf_keras.layers.Dense(2, kernel_initializer="zeros", name="regressor")

  def call(self, unit_features, unit_mask, training=False):
    x = unit_features
    for gru in self.grus:
      x = gru(x, mask=unit_mask, training=training)
    return self.regressor(x)

  def get_config(self):
    config = super().get_config()
    config.update(hidden_units=self.hidden_units, num_layers=self.num_layers)
    return config


class NonLocalBlock(tf_keras.layers.Layer):
  """Eq. 5 over positions: z_i = x_i + W_z (1/N) sum_j (theta(x_i) . phi(x_j)) g(x_j).

  Input [..., N, C] -> [..., N, C]. theta, phi, g are linear maps to `inner_units`; the
  dot-product similarity is normalized by C(x) = N (the number of positions, as in the
  non-local networks paper for this similarity). W_z starts at zero so the block starts as
  the identity and does not disturb the features it is added to ("to avoid breaking the
  existing models"), the role the zero-initialized BN plays in the non-local paper.
  """

  def __init__(self, inner_units=None, **kwargs):
    super().__init__(**kwargs)
    self.inner_units = inner_units

  def build(self, input_shape):
    channels = int(input_shape[-1])
    inner = int(self.inner_units or max(channels // 2, 1))
    self.theta = tf_keras.layers.Dense(inner, use_bias=False, name="theta")
    self.phi = tf_keras.layers.Dense(inner, use_bias=False, name="phi")
    self.g = tf_keras.layers.Dense(inner, use_bias=False, name="g")
    self.w_z = tf_keras.layers.Dense(channels, kernel_initializer="zeros", name="w_z")
    super().build(input_shape)

  def call(self, x):
    theta, phi, g = self.theta(x), self.phi(x), self.g(x)
    n = tf.cast(tf.shape(x)[-2], x.dtype)
    similarity = tf.einsum("...ic,...jc->...ij", theta, phi) / n
    y = tf.einsum("...ij,...jc->...ic", similarity, g)
    return x + self.w_z(y)

  def get_config(self):
    config = super().get_config()
    config.update(inner_units=self.inner_units)
    return config


class LocalizationHead(tf_keras.layers.Layer):
  """Pyramid parts [B, P, parts, D] -> (class logits [B, P, K+1], completeness [B, P],
  box codes [B, P, 2]).

  Each part is embedded by a shared FC layer (ReLU); with `use_non_local` the parts (the
  positions of Eq. 5) go through the non-local block, the layer before the last ones
  ("non-local pyramid features"); without it these are SSN's structured temporal pyramid
  features (Fig. 6's ablation). As in SSN, the activity classifier reads the course parts
  only, the completeness classifier and the boundary regressor read all parts. The
  completeness output is one raw score s_comp (a binary classifier trained with the hinge
  loss; ranking uses exp(s_comp)); the regression is class-agnostic (Eq. 4 codes).
  """

  def __init__(self, num_classes, course_parts, hidden_units=256, use_non_local=True,
               dropout_rate=0.0, **kwargs):
    super().__init__(**kwargs)
    _positive_int("LocalizationHead num_classes", num_classes)
    _positive_int("LocalizationHead hidden_units", hidden_units)
    self.num_classes, self.hidden_units = num_classes, hidden_units
    self.course_parts = tuple(int(i) for i in course_parts)
    self.use_non_local, self.dropout_rate = bool(use_non_local), float(dropout_rate)
    self.embed = tf_keras.layers.Dense(hidden_units, activation="relu", name="embed")
    self.non_local = NonLocalBlock(name="non_local") if use_non_local else None
    self.dropout = tf_keras.layers.Dropout(self.dropout_rate)
    self.activity = tf_keras.layers.Dense(num_classes + 1, name="activity")
    self.completeness = tf_keras.layers.Dense(1, name="completeness")
    self.regressor = tf_keras.layers.Dense(2, name="regressor")

  def call(self, parts, training=False):
    x = self.embed(parts)
    if self.non_local is not None:
      x = self.non_local(x)
    x = self.dropout(x, training=training)
    shape = tf.shape(x)
    flat_all = tf.reshape(x, [shape[0], shape[1], x.shape[-2] * self.hidden_units])
    course = tf.gather(x, self.course_parts, axis=2)
    flat_course = tf.reshape(course, [shape[0], shape[1],
                                      len(self.course_parts) * self.hidden_units])
    return (self.activity(flat_course), self.completeness(flat_all)[..., 0],
            self.regressor(flat_all))

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes, course_parts=self.course_parts,
                  hidden_units=self.hidden_units, use_non_local=self.use_non_local,
                  dropout_rate=self.dropout_rate)
    return config
