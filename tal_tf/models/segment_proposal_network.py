"""Segment Proposal Network (SPN) of TAL-Net: per-anchor objectness and box regression.

Input: a (reduced) feature stream [B, T, C]. Output, for K anchor scales at every step t:
objectness logits [B, T*K, num_classes_out] and box encodings [B, T*K, code_size], flattened
location-major: row t*K + k is the anchor of scale `scales[k]` centred at t + 0.5 (the
anchor generator's ordering). Anchors, targets, losses and NMS live elsewhere.

Variants (TAL-Net Sec. 4.1 and Tab. 1):
  'multi_dilated'  one tower per scale: max pool (stride 1) -> two dilated kernel-3 convs,
                   receptive field = anchor span (2x with context, Sec. 4.2). The paper's model.
  'multi_tconv'    one tower per scale, two non-dilated kernel-3 convs (receptive field 5).
  'single_tconv'   one shared tower, two non-dilated kernel-3 convs (receptive field 5) and
                   kernel-1 heads with K anchors per location: the default Faster R-CNN RPN.
  'single'         one shared tower without temporal extent (two kernel-1 convs, receptive
                   field 1): each anchor is classified from the feature at its centre only.
Each tower ends in two parallel kernel-1 convs: classification and regression.

Receptive-field design of the dilated towers (where the paper is ambiguous)
---------------------------------------------------------------------------
The paper sets pool kernel s/6, dilations r1 = s/6, r2 = 2s/6 (all doubled with context) and
says the receptive field then equals s. For stride-1 layers the number of input steps that
reach one output is RF = 1 + sum_l (k_l - 1) * r_l, which for pool(p) + conv(3, r1) +
conv(3, r2) is RF = p + 2*r1 + 2*r2 -- valid when the taps leave no holes (r1 <= p and
r2 <= p + 2*r1). The paper's rates make the outermost conv taps exactly s apart
(2*r1 + 2*r2 = s) and add the pooling on top, so taken literally RF = 7s/6, and the rates are
fractional unless 6 divides s. We keep everything the paper fixes -- max pooling first (it
fills the holes between dilated taps), then two kernel-3 convs with r2 ~ 2*r1 and pool ~ r1 --
and make RF equal the span n (n = s, or 2s with context) exactly, by scaling the paper's
proportions pool : r1 : r2 = 1 : 1 : 2 to n: nominal unit u = n/7. Among integer plans with
RF == n, no holes and r2 >= r1 we pick the one that
  1. uses the most kernel-3 convs: spans below 5 cannot hold two kernel-3 convs (pool 1,
     r1 = r2 = 1 already sees 5 steps), so for n <= 4 one or both convs become kernel-1
     (pointwise) and the span is reached by the kernel-size choice plus pooling;
  2. is closest to (u, u, 2u) in squared error over (pool, r1, r2);
  3. on ties, has the larger r2, then the larger r1 (more of the span from convs).
The same rule serves every positive integer span, so context simply plans for n = 2s (doubling
a plan for s would give RF = 2s + p, not 2s). See `dilated_tower_plan` for the table.

Parity and centring: odd-kernel convs add an even number of steps, so the pool kernel has
the parity of n. An anchor of even length n centred at t + 0.5 covers n - 1 whole steps plus
half of the two neighbours; no set of n whole steps is centred on it. With rounding='exact'
(default) RF is exactly n and, for even n, TF 'SAME' padding puts the extra step on the right:
output t sees steps [t - n/2 + 1, t + n/2] (a half-step shift). rounding='odd' uses the
smallest odd RF >= n (n + 1 for even n), symmetric around t, covering every step the anchor
touches. Odd n is centred exactly in both modes.

rounding='paper' is the paper's plan taken literally, for comparison: with span n (s, or 2s
with context) and u = n/6, pool = r1 = max(1, round(u)) and r2 = 2 * r1 (half-up rounding of
u; r2 is kept at exactly twice r1, as the paper writes r2 = (s/6) x 2), two kernel-3 convs
for every scale. Its receptive field is 7 * r1 (7n/6 when 6 divides n; for small spans much
more, e.g. 7 steps for a 1-step anchor without context); when r1 is even the pool kernel is
even and, as in 'exact', the extra step falls on the right.
"""
import collections

import tensorflow as tf
import tf_keras

from tal_tf.models import layer_config

DEFAULT_SCALES = (1, 2, 3, 4, 5, 6, 8, 11, 16)
VARIANTS = ("multi_dilated", "multi_tconv", "single_tconv", "single")
ROUNDINGS = ("exact", "odd", "paper")

# pool_size: max-pooling kernel (1 = no pooling layer); kernel_sizes / dilation_rates: the two
# temporal convs, in order.
TowerPlan = collections.namedtuple("TowerPlan", ["pool_size", "kernel_sizes", "dilation_rates"])

# Non-dilated towers of Tab. 1: "All temporal ConvNets have two layers, both with kernel size 3".
_TCONV_PLAN = TowerPlan(1, (3, 3), (1, 1))
# 'single' keeps the two-layer depth with kernel-1 convs so that, in the Tab. 1 ablation, only
# the temporal extent differs from the other variants (not the depth or parameter count of the
# tower); the receptive field is the centre step only, as the paper describes.
_POINTWISE_PLAN = TowerPlan(1, (1, 1), (1, 1))


def _check_positive_int(name, value):
  """Raises ValueError unless `value` is a positive int (bools rejected)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_choice(name, value, choices):
  """Raises ValueError unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def anchor_span(scale, use_context):
  """Number of steps a tower must see for an anchor of `scale`: scale, or 2*scale with context."""
  _check_positive_int("scale", scale)
  return 2 * scale if use_context else scale


def paper_tower_plan(span):
  """The paper's literal TowerPlan for `span`: pool = r1 = max(1, round(span/6)), r2 = 2 * r1."""
  _check_positive_int("span", span)
  # Half-up rounding (Python's round() is half-to-even, which would make 3/6 -> 0).
  unit = max(1, int(span / 6.0 + 0.5))
  return TowerPlan(unit, (3, 3), (unit, 2 * unit))


def dilated_tower_plan(span, rounding="exact"):
  """TowerPlan (pool, kernels, dilations) whose receptive field is `span` steps (see module doc).

  Defaults (rounding='exact'); RF = pool + (k1-1)*r1 + (k2-1)*r2:
    span  1: pool 1, conv k1 / k1         span 11: pool 3, conv k3 r1 / k3 r3
    span  2: pool 2, conv k1 / k1         span 12: pool 2, conv k3 r2 / k3 r3
    span  3: pool 1, conv k3 r1 / k1      span 16: pool 2, conv k3 r2 / k3 r5
    span  4: pool 2, conv k3 r1 / k1      span 22: pool 4, conv k3 r3 / k3 r6
    span  5: pool 1, conv k3 r1 / k3 r1   span 32: pool 4, conv k3 r4 / k3 r10
    span  6: pool 2, conv k3 r1 / k3 r1
    span  8: pool 2, conv k3 r1 / k3 r2
    span 10: pool 2, conv k3 r1 / k3 r3
  """
  _check_positive_int("span", span)
  _check_choice("rounding", rounding, ROUNDINGS)
  if rounding == "paper":
    return paper_tower_plan(span)
  target = span if (rounding == "exact" or span % 2 == 1) else span + 1
  unit = target / 7.0  # the paper's pool : r1 : r2 = 1 : 1 : 2 scaled to RF == target
  best_key, best_plan = None, None
  for k1 in (3, 1):
    for k2 in (3, 1):
      if k2 > k1:  # a lone kernel-1 conv goes last; the mirrored order is the same tower
        continue
      for r1 in (range(1, target + 1) if k1 == 3 else (1,)):
        for r2 in (range(1, target + 1) if k2 == 3 else (1,)):
          pool = target - (k1 - 1) * r1 - (k2 - 1) * r2
          if pool < 1:
            continue
          # No holes: each conv's taps must be at most one input window apart.
          if k1 == 3 and r1 > pool:
            continue
          if k2 == 3 and r2 > pool + (k1 - 1) * r1:
            continue
          if k1 == 3 and k2 == 3 and r2 < r1:
            continue
          num_wide = (k1 == 3) + (k2 == 3)
          error = (pool - unit) ** 2
          error += (r1 - unit) ** 2 if k1 == 3 else 0.0
          error += (r2 - 2 * unit) ** 2 if k2 == 3 else 0.0
          key = (-num_wide, round(error, 9), -r2, -r1)
          if best_key is None or key < best_key:
            best_key = key
            best_plan = TowerPlan(pool, (k1, k2), (r1 if k1 == 3 else 1, r2 if k2 == 3 else 1))
  return best_plan


def tower_plan(scale, use_context=True, variant="multi_dilated", rounding="exact"):
  """TowerPlan of the tower that classifies anchors of `scale` in `variant`."""
  _check_choice("variant", variant, VARIANTS)
  _check_positive_int("scale", scale)
  if use_context and variant != "multi_dilated":
    raise ValueError(
        f"use_context=True needs variant='multi_dilated' (context doubles the per-scale "
        f"receptive fields, Sec. 4.2); got variant={variant!r}. Pass use_context=False.")
  if variant == "multi_dilated":
    return dilated_tower_plan(anchor_span(scale, use_context), rounding)
  if variant == "single":
    return _POINTWISE_PLAN
  return _TCONV_PLAN


class TemporalConv(tf_keras.layers.Conv1D):
  """Conv1D that runs undilated kernels through tf.nn.conv1d.

  Measured here (CPU, [1, 300, 256], 256 filters): for dilation 1, tf.nn.conv1d halves the
  forward time of Keras' tf.nn.convolution path with an equal backward pass; for dilations
  > 1, conv1d's native dilation speeds up the forward pass but slows the backward pass by
  ~30 %, so layer calls keep Keras' path (SpaceToBatch), which favours training, and
  `inference_call` (used when not training) takes the native one. Same weights either way,
  so checkpoints are compatible.
  """

  def convolution_op(self, inputs, kernel):
    if tuple(self.dilation_rate) != (1,):
      return super().convolution_op(inputs, kernel)
    return tf.nn.conv1d(inputs, kernel, stride=list(self.strides),
                        padding=self.padding.upper())

  def inference_call(self, inputs):
    """The layer's output through tf.nn.conv1d with native dilation (forward-only path)."""
    outputs = tf.nn.conv1d(inputs, self.kernel, stride=list(self.strides),
                           padding=self.padding.upper(), dilations=list(self.dilation_rate))
    if self.use_bias:
      outputs = tf.nn.bias_add(outputs, self.bias)
    return self.activation(outputs) if self.activation is not None else outputs


def build_tower_layers(plan, filters, name="tower", kernel_initializer="glorot_uniform",
                       kernel_regularizer=None):
  """Keras layers of one tower: [MaxPool1D (if pool > 1), Conv1D, Conv1D], 'same', ReLU."""
  _check_positive_int("filters", filters)
  layers = []
  if plan.pool_size > 1:
    layers.append(tf_keras.layers.MaxPool1D(
        pool_size=plan.pool_size, strides=1, padding="same", name=f"{name}_pool"))
  for i, (kernel, rate) in enumerate(zip(plan.kernel_sizes, plan.dilation_rates)):
    layers.append(TemporalConv(
        filters, kernel, dilation_rate=rate, padding="same", activation="relu",
        kernel_initializer=tf_keras.initializers.get(kernel_initializer),
        kernel_regularizer=tf_keras.regularizers.get(kernel_regularizer),
        name=f"{name}_conv{i + 1}"))
  return layers


def _layer_taps(layer):
  """Input offsets one output step of a stride-1 'same' pool/conv layer reads, e.g. (-2, 0, 2)."""
  if isinstance(layer, tf_keras.layers.MaxPool1D):
    kernel, rate, strides, padding = layer.pool_size[0], 1, layer.strides[0], layer.padding
  elif isinstance(layer, tf_keras.layers.Conv1D):
    kernel, rate, strides, padding = (
        layer.kernel_size[0], layer.dilation_rate[0], layer.strides[0], layer.padding)
  else:
    raise TypeError(f"receptive field: unsupported layer {layer.name!r} of type {type(layer)}")
  if strides != 1 or padding != "same":
    raise ValueError(f"receptive field: layer {layer.name!r} must have stride 1 and 'same' "
                     f"padding, got strides={strides}, padding={padding!r}")
  # TF 'SAME' pads floor(extent / 2) steps before and the rest after.
  before = ((kernel - 1) * rate) // 2
  return tuple(i * rate - before for i in range(kernel))


def receptive_window(layers):
  """Sorted input offsets (relative to output step t) that reach output t through `layers`."""
  offsets = {0}
  for layer in layers:
    offsets = {o + tap for o in offsets for tap in _layer_taps(layer)}
  return tuple(sorted(offsets))


def receptive_field(scale, use_context=True, variant="multi_dilated", rounding="exact"):
  """Number of input steps seen by the tower built for `scale` (counted from its built layers)."""
  layers = build_tower_layers(tower_plan(scale, use_context, variant, rounding), filters=1)
  return len(receptive_window(layers))


def _build_in_scope(layer, input_shape):
  """Builds a sublayer under its own name scope, so its weights get readable names."""
  with tf.name_scope(layer.name):
    layer.build(input_shape)


class _Tower(tf_keras.layers.Layer):
  """Sequential stack of a tower's pool/conv layers: [B, T, C] -> [B, T, filters]."""

  def __init__(self, layers, **kwargs):
    super().__init__(**kwargs)
    self.tower_layers = list(layers)

  def build(self, input_shape):
    """Creates the weights of every layer (so checkpoints can restore before a first call)."""
    shape = tf.TensorShape(input_shape)
    for layer in self.tower_layers:
      _build_in_scope(layer, shape)
      shape = layer.compute_output_shape(shape)
    super().build(input_shape)

  def call(self, inputs, valid=None, training=None):
    """Applies the layers in order (dilated convs take their forward-only path unless training).

    `valid` [B, T, 1] bool marks real (unpadded) steps. With it, every layer's output is
    zeroed on padded steps and max pooling never picks a padded step, so a video padded
    into a batch sees exactly the zero 'same' padding it would see alone: batched outputs
    equal per-video outputs. `inputs` must already be zero on padded steps.
    """
    return _apply_layers(self.tower_layers, inputs, valid, training)


def _apply_layers(layers, inputs, valid, training):
  """_Tower.call's body: `layers` in order, masked between layers when `valid` is given."""
  outputs = inputs
  for layer in layers:
    if valid is not None and isinstance(layer, tf_keras.layers.MaxPool1D):
      outputs = tf.where(valid, outputs, tf.float32.min)
    if not training and isinstance(layer, TemporalConv):
      outputs = layer.inference_call(outputs)
    else:
      outputs = layer(outputs)
    if valid is not None:
      outputs = tf.where(valid, outputs, 0.0)
  return outputs


class SegmentProposalNetwork(tf_keras.layers.Layer):
  """TAL-Net SPN: features [B, T, C] -> (objectness [B, T*K, 2], box encodings [B, T*K, 2])."""

  def __init__(self, scales=DEFAULT_SCALES, variant="multi_dilated", use_context=True,
               filters=256, num_classes_out=2, code_size=2, rounding="exact",
               kernel_initializer="glorot_uniform", kernel_regularizer=None, **kwargs):
    super().__init__(**kwargs)
    scales = tuple(scales) if isinstance(scales, (list, tuple)) else scales
    if not isinstance(scales, tuple) or not scales:
      raise ValueError(f"SegmentProposalNetwork scales must be a non-empty list of positive "
                       f"integers, got {scales!r}")
    for scale in scales:
      _check_positive_int(f"SegmentProposalNetwork scales entry (scales={scales})", scale)
    _check_choice("SegmentProposalNetwork variant", variant, VARIANTS)
    _check_choice("SegmentProposalNetwork rounding", rounding, ROUNDINGS)
    _check_positive_int("SegmentProposalNetwork filters", filters)
    _check_positive_int("SegmentProposalNetwork num_classes_out", num_classes_out)
    _check_positive_int("SegmentProposalNetwork code_size", code_size)
    self.scales = scales
    self.variant = variant
    self.use_context = bool(use_context)
    self.filters = filters
    self.num_classes_out = num_classes_out
    self.code_size = code_size
    self.rounding = rounding
    # Stored serialized so every layer gets a fresh initializer instance (a shared unseeded
    # instance would give identical initial weights to all towers).
    self._kernel_initializer = layer_config.serialize_initializer(kernel_initializer)
    self._kernel_regularizer = layer_config.serialize_regularizer(kernel_regularizer)
    self.plans = tuple(tower_plan(s, self.use_context, variant, rounding) for s in scales)

    num_scales = len(scales)
    self.multi_tower = variant.startswith("multi")
    self.towers, self.class_heads, self.box_heads = [], [], []
    if self.multi_tower:
      for k, (scale, plan) in enumerate(zip(scales, self.plans)):
        self.towers.append(_Tower(self._tower_layers(plan, f"tower{k}_s{scale}"),
                                  name=f"tower{k}_s{scale}"))
        self.class_heads.append(self._head(num_classes_out, f"tower{k}_s{scale}_class"))
        self.box_heads.append(self._head(code_size, f"tower{k}_s{scale}_box"))
    else:
      # One shared tower; each kernel-1 head has K groups of outputs, channel k*C + c is
      # output c of scale k, so a reshape to [.., K, C] recovers the anchors.
      self.towers.append(_Tower(self._tower_layers(self.plans[0], "shared"), name="shared"))
      self.class_heads.append(self._head(num_scales * num_classes_out, "shared_class"))
      self.box_heads.append(self._head(num_scales * code_size, "shared_box"))

  def _tower_layers(self, plan, name):
    return build_tower_layers(plan, self.filters, name, self._kernel_initializer,
                              self._kernel_regularizer)

  def _head(self, channels, name):
    return tf_keras.layers.Conv1D(
        channels, 1, padding="same",
        kernel_initializer=tf_keras.initializers.get(self._kernel_initializer),
        kernel_regularizer=tf_keras.regularizers.get(self._kernel_regularizer), name=name)

  @property
  def num_anchors_per_location(self):
    """K, the number of anchor scales per step."""
    return len(self.scales)

  def receptive_windows(self):
    """Per scale k, the sorted input offsets (relative to t) reaching output row t*K + k."""
    if self.multi_tower:
      return [receptive_window(tower.tower_layers) for tower in self.towers]
    return [receptive_window(self.towers[0].tower_layers)] * len(self.scales)

  def build(self, input_shape):
    """Checks features are [B, T, C] with a static C."""
    input_shape = tf.TensorShape(input_shape)
    if input_shape.rank != 3 or input_shape[-1] is None:
      raise ValueError(f"SegmentProposalNetwork expects features [batch, steps, channels] "
                       f"with static channels, got shape {input_shape}")
    for tower in self.towers:
      _build_in_scope(tower, input_shape)
    hidden_shape = input_shape[:-1].concatenate([self.filters])
    for head in self.class_heads + self.box_heads:
      _build_in_scope(head, hidden_shape)
    super().build(input_shape)

  def call(self, features, num_steps=None, training=None):
    """Returns (objectness_logits [B, T*K, num_classes_out], box_encodings [B, T*K, code_size]).

    `num_steps` [B] (optional) gives each video's valid length in a padded batch; padded
    steps are masked between layers so each video's outputs equal those it gets alone.
    """
    # No dropout / batch norm in the SPN; `training` only picks the convs' fast path.
    features = tf.convert_to_tensor(features)
    valid = None
    if num_steps is not None:
      valid = tf.sequence_mask(num_steps, tf.shape(features)[1])[..., tf.newaxis]
      features = tf.where(valid, features, 0.0)
    if self.multi_tower and not training:
      logits, boxes = self._multi_tower_inference(features, valid)
    elif self.multi_tower:
      hidden = [tower(features, valid=valid, training=training) for tower in self.towers]
      logits = tf.stack([head(h) for head, h in zip(self.class_heads, hidden)], axis=2)
      boxes = tf.stack([head(h) for head, h in zip(self.box_heads, hidden)], axis=2)
    else:
      hidden = self.towers[0](features, valid=valid, training=training)
      logits = self.class_heads[0](hidden)
      boxes = self.box_heads[0](hidden)
    return (self._flatten_anchors(logits, features, self.num_classes_out),
            self._flatten_anchors(boxes, features, self.code_size))

  def _multi_tower_inference(self, features, valid):
    """Forward-only multi-tower pass: (logits [B, T, K, C], boxes [B, T, K, code]).

    Computes what the towers and heads compute layer by layer, with fewer ops: towers with
    the same pooling size share one pooled input (it is the same tensor), and the K pairs of
    kernel-1 heads run as one batched matmul over the K hidden maps.
    """
    pooled = {}
    hidden = []
    for tower in self.towers:
      layers = tower.tower_layers
      if isinstance(layers[0], tf_keras.layers.MaxPool1D):
        size = layers[0].pool_size[0]
        if size not in pooled:
          pooled[size] = _apply_layers(layers[:1], features, valid, training=False)
        hidden.append(_apply_layers(layers[1:], pooled[size], valid, training=False))
      else:
        hidden.append(_apply_layers(layers, features, valid, training=False))
    dynamic = tf.shape(features)
    num_scales = len(self.towers)
    stacked = tf.reshape(tf.stack(hidden), tf.stack([num_scales, -1, self.filters]))
    kernel = tf.stack([tf.concat([c.kernel[0], b.kernel[0]], axis=-1)
                       for c, b in zip(self.class_heads, self.box_heads)])  # [K, F, C + code]
    bias = tf.stack([tf.concat([c.bias, b.bias], axis=-1)
                     for c, b in zip(self.class_heads, self.box_heads)])[:, tf.newaxis]
    out = tf.matmul(stacked, kernel) + bias  # [K, B*T, C + code]
    out = tf.reshape(out, tf.stack([num_scales, dynamic[0], dynamic[1], -1]))
    out = tf.transpose(out, [1, 2, 0, 3])  # [B, T, K, C + code]
    return out[..., :self.num_classes_out], out[..., self.num_classes_out:]

  def _flatten_anchors(self, values, features, channels):
    """[B, T, K, C] or [B, T, K*C] -> [B, T*K, C], row t*K + k (location-major)."""
    num_scales = len(self.scales)
    dynamic = tf.shape(features)
    flat = tf.reshape(values, tf.stack([dynamic[0], dynamic[1] * num_scales, channels]))
    steps = features.shape[1]
    flat.set_shape([features.shape[0], None if steps is None else steps * num_scales, channels])
    return flat

  def get_config(self):
    """Constructor arguments (Keras serialization)."""
    config = super().get_config()
    config.update({
        "scales": list(self.scales),
        "variant": self.variant,
        "use_context": self.use_context,
        "filters": self.filters,
        "num_classes_out": self.num_classes_out,
        "code_size": self.code_size,
        "rounding": self.rounding,
        # Re-serialized so the config holds plain dicts, not Keras' tracked wrappers.
        "kernel_initializer": layer_config.serialize_initializer(self._kernel_initializer),
        "kernel_regularizer": layer_config.serialize_regularizer(self._kernel_regularizer),
    })
    return config
