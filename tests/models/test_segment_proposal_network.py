"""Tests of the TAL-Net Segment Proposal Network: plans, receptive fields, ordering, shapes."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import tal_tf  # noqa: F401  (sets Keras 2)
from bench import bench_flops
from tal_tf.models import segment_proposal_network as spn_lib
from tal_tf.models.segment_proposal_network import SegmentProposalNetwork

SCALES = (1, 2, 3, 4, 5, 6, 8, 11, 16)

# The design table, written out by hand: scale -> (pool, (k1, r1), (k2, r2)).
# Check by RF = pool + (k1 - 1) * r1 + (k2 - 1) * r2: each row sums to the span.
PLANS_NO_CONTEXT = {  # span = s
    1: (1, (1, 1), (1, 1)),    # 1
    2: (2, (1, 1), (1, 1)),    # 2
    3: (1, (3, 1), (1, 1)),    # 1 + 2 = 3
    4: (2, (3, 1), (1, 1)),    # 2 + 2 = 4
    5: (1, (3, 1), (3, 1)),    # 1 + 2 + 2 = 5
    6: (2, (3, 1), (3, 1)),    # 2 + 2 + 2 = 6
    8: (2, (3, 1), (3, 2)),    # 2 + 2 + 4 = 8
    11: (3, (3, 1), (3, 3)),   # 3 + 2 + 6 = 11
    16: (2, (3, 2), (3, 5)),   # 2 + 4 + 10 = 16
}
PLANS_CONTEXT = {  # span = 2s
    1: (2, (1, 1), (1, 1)),    # 2
    2: (2, (3, 1), (1, 1)),    # 4
    3: (2, (3, 1), (3, 1)),    # 6
    4: (2, (3, 1), (3, 2)),    # 8
    5: (2, (3, 1), (3, 3)),    # 10
    6: (2, (3, 2), (3, 3)),    # 2 + 4 + 6 = 12
    8: (2, (3, 2), (3, 5)),    # 2 + 4 + 10 = 16
    11: (4, (3, 3), (3, 6)),   # 4 + 6 + 12 = 22
    16: (4, (3, 4), (3, 10)),  # 4 + 8 + 20 = 32
}


# The paper's rates taken literally (rounding='paper'), by hand: unit r1 = round(n/6) (at least
# 1, halves up) for span n, pool r1, dilations r1 and 2*r1, receptive field 7*r1.
PAPER_UNIT_NO_CONTEXT = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 8: 1, 11: 2, 16: 3}
PAPER_UNIT_CONTEXT = {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 8: 3, 11: 4, 16: 5}


def _table_span(row):
  pool, (k1, r1), (k2, r2) = row
  return pool + (k1 - 1) * r1 + (k2 - 1) * r2


def _expected_window(span, rounding):
  """Input offsets a tower of `span` must see: centred, extra step on the right if even."""
  if rounding == "odd" and span % 2 == 0:
    span += 1
  left = (span - 1) // 2
  return tuple(range(-left, span - left))


# ----------------------------------------------------------------------------- numpy reference
def _np_maxpool_same(x, pool):
  """[T, C] stride-1 max pool; window of t = [t - (pool-1)//2, ...], padding ignored."""
  steps = x.shape[0]
  before = (pool - 1) // 2
  out = np.empty_like(x)
  for t in range(steps):
    lo, hi = max(0, t - before), min(steps, t - before + pool)
    out[t] = x[lo:hi].max(axis=0)
  return out


def _np_conv_same(x, kernel, bias, rate):
  """[T, Cin] stride-1 dilated conv with zero 'same' padding; kernel [k, Cin, Cout]."""
  steps = x.shape[0]
  k = kernel.shape[0]
  before = ((k - 1) * rate) // 2
  out = np.zeros((steps, kernel.shape[2]), np.float64)
  for t in range(steps):
    out[t] = bias
    for i in range(k):
      src = t - before + i * rate
      if 0 <= src < steps:
        out[t] += x[src] @ kernel[i]
  return out


def _np_spn(spn, x, plans_by_scale):
  """Loop reference of the multi-tower SPN on x [B, T, C] using the hand-written plan table."""
  batch, steps, _ = x.shape
  num_scales = len(spn.scales)
  logits = np.zeros((batch, steps * num_scales, 2))
  boxes = np.zeros((batch, steps * num_scales, 2))
  for k, scale in enumerate(spn.scales):
    pool, (k1, r1), (k2, r2) = plans_by_scale[scale]
    convs = [l for l in spn.towers[k].tower_layers if isinstance(l, tf_keras.layers.Conv1D)]
    (w1, b1), (w2, b2) = [(c.kernel.numpy(), c.bias.numpy()) for c in convs]
    assert w1.shape[0] == k1 and w2.shape[0] == k2
    wc, bc = spn.class_heads[k].kernel.numpy()[0], spn.class_heads[k].bias.numpy()
    wb, bb = spn.box_heads[k].kernel.numpy()[0], spn.box_heads[k].bias.numpy()
    for b in range(batch):
      h = _np_maxpool_same(x[b].astype(np.float64), pool)
      h = np.maximum(_np_conv_same(h, w1, b1, r1), 0)
      h = np.maximum(_np_conv_same(h, w2, b2, r2), 0)
      for t in range(steps):
        logits[b, t * num_scales + k] = h[t] @ wc + bc
        boxes[b, t * num_scales + k] = h[t] @ wb + bb
  return logits, boxes


# ----------------------------------------------------------------------------- helpers
def _make_positive(layer):
  """All weights > 0 so every unit is active and any input change reaches the output."""
  for var in layer.weights:
    var.assign(tf.abs(var) + 0.05)


def _measure_windows(layer_fn, num_outputs, channels, steps):
  """Empirical receptive windows: impulse at each input step, which outputs at t0 change.

  layer_fn maps [B, steps, channels] -> [B, steps, num_outputs, D]. Returns, per output index
  k, the sorted offsets j - t0 of input steps whose impulse changes output (t0, k).
  """
  rng = np.random.default_rng(0)
  base = rng.uniform(0.1, 1.0, size=(steps, channels)).astype(np.float32)
  batch = np.repeat(base[None], steps + 1, axis=0)
  for j in range(steps):
    batch[j + 1, j, :] += 10.0  # large enough to win every max-pool window it lies in
  out = layer_fn(tf.constant(batch)).numpy()
  t0 = steps // 2
  windows = []
  for k in range(num_outputs):
    diff = np.abs(out[1:, t0, k] - out[0, t0, k]).max(axis=-1)  # [steps]
    windows.append(tuple(int(j) - t0 for j in np.nonzero(diff > 1e-4)[0]))
  return windows


def _spn_by_location(spn):
  """SPN outputs regrouped [B, T, K, 4] (logits ++ boxes) assuming row t*K + k."""
  num_scales = spn.num_anchors_per_location

  def fn(x):
    logits, boxes = spn(x)
    both = tf.concat([logits, boxes], axis=-1)
    return tf.reshape(both, [tf.shape(x)[0], tf.shape(x)[1], num_scales, 4])
  return fn


# ----------------------------------------------------------------------------- plan tests
@pytest.mark.parametrize("use_context,table", [(False, PLANS_NO_CONTEXT), (True, PLANS_CONTEXT)])
def test_default_plans_match_hand_table(use_context, table):
  for scale, row in table.items():
    assert _table_span(row) == scale * (2 if use_context else 1)  # the table itself is right
    plan = spn_lib.tower_plan(scale, use_context, "multi_dilated")
    assert (plan.pool_size, tuple(zip(plan.kernel_sizes, plan.dilation_rates))) == (
        row[0], (row[1], row[2])), scale
  spn = SegmentProposalNetwork(SCALES, use_context=use_context, filters=2)
  for scale, tower in zip(SCALES, spn.towers):
    pools = [l.pool_size[0] for l in tower.tower_layers
             if isinstance(l, tf_keras.layers.MaxPool1D)]
    convs = [(l.kernel_size[0], l.dilation_rate[0]) for l in tower.tower_layers
             if isinstance(l, tf_keras.layers.Conv1D)]
    assert (pools or [1])[0] == table[scale][0]
    assert convs == [table[scale][1], table[scale][2]]


def test_paper_rates_literally_overshoot_the_span():
  # Documents why the plan departs from the literal rates: pool s/6 + 2*s/6 + 2*2s/6 = 7s/6.
  for scale in (6, 12, 18):
    pool, r1, r2 = scale // 6, scale // 6, 2 * scale // 6
    assert pool + 2 * r1 + 2 * r2 == 7 * scale // 6 != scale


@pytest.mark.parametrize("use_context,units", [(False, PAPER_UNIT_NO_CONTEXT),
                                               (True, PAPER_UNIT_CONTEXT)])
def test_paper_literal_plans_match_hand_table(use_context, units):
  spn = SegmentProposalNetwork(SCALES, use_context=use_context, filters=2, rounding="paper")
  for scale, tower in zip(SCALES, spn.towers):
    unit = units[scale]
    pools = [l.pool_size[0] for l in tower.tower_layers
             if isinstance(l, tf_keras.layers.MaxPool1D)]
    convs = [(l.kernel_size[0], l.dilation_rate[0]) for l in tower.tower_layers
             if isinstance(l, tf_keras.layers.Conv1D)]
    assert (pools or [1])[0] == unit, scale
    assert convs == [(3, unit), (3, 2 * unit)], scale  # two kernel-3 convs at every scale
    assert spn_lib.receptive_field(scale, use_context, "multi_dilated", "paper") == 7 * unit


@pytest.mark.parametrize("rounding", ["exact", "odd"])
@pytest.mark.parametrize("use_context", [False, True])
def test_receptive_field_function_equals_span(use_context, rounding):
  for scale in SCALES:
    span = scale * (2 if use_context else 1)
    expected = span if (rounding == "exact" or span % 2) else span + 1
    assert spn_lib.receptive_field(scale, use_context, "multi_dilated", rounding) == expected


def test_receptive_field_of_baselines():
  for scale in SCALES:
    assert spn_lib.receptive_field(scale, False, "single") == 1
    assert spn_lib.receptive_field(scale, False, "single_tconv") == 5
    assert spn_lib.receptive_field(scale, False, "multi_tconv") == 5


@settings(max_examples=60, deadline=None)
@given(span=st.integers(1, 200), rounding=st.sampled_from(["exact", "odd"]))
def test_plan_properties_for_any_integer_span(span, rounding):
  plan = spn_lib.dilated_tower_plan(span, rounding)
  target = span if (rounding == "exact" or span % 2) else span + 1
  assert all(k % 2 == 1 for k in plan.kernel_sizes)
  (k1, k2), (r1, r2) = plan.kernel_sizes, plan.dilation_rates
  assert plan.pool_size + (k1 - 1) * r1 + (k2 - 1) * r2 == target
  layers = spn_lib.build_tower_layers(plan, filters=1)
  assert spn_lib.receptive_window(layers) == _expected_window(span, rounding)
  if span >= 5:  # two kernel-3 convs, r2 >= r1, no holes (the pooling covers the taps)
    assert (k1, k2) == (3, 3) and r1 <= r2 and r1 <= plan.pool_size
    assert r2 <= plan.pool_size + 2 * r1


@settings(max_examples=6, deadline=None)
@given(scale=st.integers(1, 24), use_context=st.booleans())
def test_tower_receptive_field_measured_for_any_integer_scale(scale, use_context):
  span = scale * (2 if use_context else 1)
  layers = spn_lib.build_tower_layers(spn_lib.tower_plan(scale, use_context), filters=2)
  tower = tf_keras.Sequential(layers)
  tower.build([None, None, 2])
  _make_positive(tower)
  steps = 2 * span + 9
  windows = _measure_windows(lambda x: tower(x)[:, :, None, :], 1, 2, steps)
  assert windows[0] == _expected_window(span, "exact")
  assert len(windows[0]) == span


# ----------------------------------------------------------------------------- measured RF
@pytest.mark.parametrize("variant,use_context,rounding", [
    ("multi_dilated", False, "exact"),
    ("multi_dilated", True, "exact"),
    ("multi_dilated", False, "odd"),
    ("multi_dilated", True, "odd"),
    ("multi_dilated", False, "paper"),
    ("multi_dilated", True, "paper"),
    ("multi_tconv", False, "exact"),
    ("single_tconv", False, "exact"),
    ("single", False, "exact"),
])
def test_measured_receptive_field_per_tower(variant, use_context, rounding):
  spn = SegmentProposalNetwork(SCALES, variant=variant, use_context=use_context, filters=3,
                               rounding=rounding)
  spn.build([None, None, 2])
  _make_positive(spn)
  steps = 2 * 33 + 7
  measured = _measure_windows(_spn_by_location(spn), len(SCALES), 2, steps)
  for k, scale in enumerate(SCALES):
    if variant == "multi_dilated" and rounding == "paper":
      # Pool r1 (TF 'SAME': (r1-1)//2 steps before) plus taps 3*r1 on each side.
      unit = (PAPER_UNIT_CONTEXT if use_context else PAPER_UNIT_NO_CONTEXT)[scale]
      expected = tuple(range(-((unit - 1) // 2) - 3 * unit, unit - (unit - 1) // 2 + 3 * unit))
      assert len(expected) == 7 * unit
    elif variant == "multi_dilated":
      span = scale * (2 if use_context else 1)
      expected = _expected_window(span, rounding)
      if rounding == "exact":
        assert len(measured[k]) == span, (scale, measured[k])
    elif variant == "single":
      expected = (0,)
    else:
      expected = (-2, -1, 0, 1, 2)
    assert measured[k] == expected, (scale, measured[k])
    # The declared receptive field agrees with the measured one.
    assert spn.receptive_windows()[k] == expected
    assert spn_lib.receptive_field(scale, use_context, variant, rounding) == len(expected)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("use_context,table", [(False, PLANS_NO_CONTEXT), (True, PLANS_CONTEXT)])
def test_multi_dilated_matches_numpy_reference(use_context, table):
  spn = SegmentProposalNetwork(SCALES, use_context=use_context, filters=4)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 13, 3)).astype(np.float32)  # T = 13 < 2 * 16: padding matters
  logits, boxes = spn(tf.constant(x))
  ref_logits, ref_boxes = _np_spn(spn, x, table)
  np.testing.assert_allclose(logits.numpy(), ref_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=1e-4, atol=1e-5)


def test_ordering_scale_index_constructed_case():
  # Towers output zeros, heads output their bias: row t*K + k must carry tower k's bias.
  spn = SegmentProposalNetwork(SCALES, variant="multi_tconv", use_context=False, filters=2)
  spn.build([None, None, 3])
  for var in spn.weights:
    var.assign(tf.zeros_like(var))
  for k in range(len(SCALES)):
    spn.class_heads[k].bias.assign([float(k), -float(k)])
    spn.box_heads[k].bias.assign([10.0 * k, 10.0 * k + 1])
  logits, boxes = spn(tf.ones([2, 5, 3]))
  expected_logits = np.zeros((2, 5 * len(SCALES), 2))
  expected_boxes = np.zeros((2, 5 * len(SCALES), 2))
  for b in range(2):
    for t in range(5):
      for k in range(len(SCALES)):
        expected_logits[b, t * len(SCALES) + k] = [k, -k]
        expected_boxes[b, t * len(SCALES) + k] = [10 * k, 10 * k + 1]
  np.testing.assert_allclose(logits.numpy(), expected_logits)
  np.testing.assert_allclose(boxes.numpy(), expected_boxes)


def test_ordering_location_and_scale_constructed_case():
  # 'single': identity kernel-1 tower on a ramp x[b, t] = t + 100 b; the box head reads
  # feature 0 for every scale and adds 1000 k + j, so box[b, t*K + k, j] = t + 100 b + 1000 k + j.
  scales = (2, 4, 8)
  num_scales = len(scales)
  spn = SegmentProposalNetwork(scales, variant="single", use_context=False, filters=3)
  spn.build([None, None, 3])
  for conv in spn.towers[0].tower_layers:
    conv.kernel.assign(np.eye(3, dtype=np.float32)[None])
    conv.bias.assign(np.zeros(3, np.float32))
  box_kernel = np.zeros((1, 3, num_scales * 2), np.float32)
  box_kernel[0, 0, :] = 1.0
  spn.box_heads[0].kernel.assign(box_kernel)
  spn.box_heads[0].bias.assign([1000.0 * k + j for k in range(num_scales) for j in range(2)])
  x = np.zeros((2, 6, 3), np.float32)
  for b in range(2):
    for t in range(6):
      x[b, t, :] = t + 100 * b
  _, boxes = spn(tf.constant(x))
  expected = np.zeros((2, 6 * num_scales, 2))
  for b in range(2):
    for t in range(6):
      for k in range(num_scales):
        for j in range(2):
          expected[b, t * num_scales + k, j] = t + 100 * b + 1000 * k + j
  np.testing.assert_allclose(boxes.numpy(), expected)


# ----------------------------------------------------------------------------- shapes / graph
@pytest.mark.parametrize("variant", spn_lib.VARIANTS)
def test_shapes_dynamic_time_and_batch_in_tf_function(variant):
  spn = SegmentProposalNetwork(SCALES, variant=variant, use_context=variant == "multi_dilated",
                               filters=4, num_classes_out=2, code_size=2)
  spn.build([None, None, 3])  # weights first: creating variables inside would force a retrace
  fn = tf.function(spn, input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
  for batch, steps in [(1, 1), (2, 3), (3, 15), (2, 40)]:  # includes T < 16 and T < 2*16
    x = tf.random.uniform([batch, steps, 3])
    logits, boxes = fn(x)
    assert logits.shape == (batch, steps * len(SCALES), 2)
    assert boxes.shape == (batch, steps * len(SCALES), 2)
    eager_logits, eager_boxes = spn(x)
    np.testing.assert_allclose(logits.numpy(), eager_logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(boxes.numpy(), eager_boxes.numpy(), rtol=1e-5, atol=1e-6)
  assert fn.experimental_get_tracing_count() == 1  # one trace served every B and T


def test_static_shape_kept_and_custom_output_sizes():
  spn = SegmentProposalNetwork((3, 5), use_context=False, filters=4, num_classes_out=1,
                               code_size=3)
  logits, boxes = spn(tf.zeros([2, 7, 5]))
  assert logits.shape.as_list() == [2, 14, 1] and boxes.shape.as_list() == [2, 14, 3]


def test_gradients_reach_every_weight_and_the_input():
  # Seeded: with few ReLU filters an unlucky initialization can leave a conv all-dead.
  tf_keras.utils.set_random_seed(7)
  spn = SegmentProposalNetwork(SCALES, filters=8)
  x = tf.Variable(tf.random.uniform([2, 20, 3], 0.1, 1.0, seed=3))
  with tf.GradientTape() as tape:
    logits, boxes = spn(x, training=True)
    loss = tf.reduce_sum(tf.square(logits)) + tf.reduce_sum(tf.square(boxes))
  grads = tape.gradient(loss, spn.trainable_variables + [x])
  assert len(spn.trainable_variables) == len(SCALES) * 8  # 2 convs + 2 heads, kernel + bias
  for var, grad in zip(spn.trainable_variables + [x], grads):
    assert grad is not None, var.name
    assert np.isfinite(grad.numpy()).all(), var.name
    assert np.abs(grad.numpy()).sum() > 0, var.name


def test_saved_model_round_trip(tmp_path):
  spn = SegmentProposalNetwork((1, 4, 11), filters=4)
  module = tf.Module()
  module.spn = spn
  module.serve = tf.function(lambda x: spn(x),
                             input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
  module.serve(tf.zeros([1, 4, 3]))
  op_types = {op.type for op in module.serve.get_concrete_function().graph.get_operations()}
  assert not op_types & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}  # loadable by C++
  tf.saved_model.save(module, str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path))
  for batch, steps in [(1, 2), (3, 25)]:
    x = tf.random.uniform([batch, steps, 3])
    for got, want in zip(loaded.serve(x), spn(x)):
      np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_config_round_trip():
  spn = SegmentProposalNetwork((2, 8), variant="multi_dilated", use_context=False, filters=5,
                               rounding="odd", kernel_regularizer=tf_keras.regularizers.L2(1e-4))
  config = spn.get_config()
  json.dumps(config)  # plain data
  clone = SegmentProposalNetwork.from_config(config)
  assert clone.get_config() == config
  assert clone.plans == spn.plans
  logits, _ = clone(tf.zeros([1, 4, 2]))
  assert logits.shape == (1, 8, 2)
  assert len(clone.losses) == 2 * 4  # L2 on every conv / head kernel of 2 towers


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="dilated"), "variant"),
    (dict(scales=(0, 2)), "scales"),
    (dict(scales=()), "scales"),
    (dict(scales=(1.5,)), "scales"),
    (dict(variant="single", use_context=True), "use_context"),
    (dict(rounding="nearest"), "rounding"),
    (dict(filters=0), "filters"),
    (dict(num_classes_out=0), "num_classes_out"),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SegmentProposalNetwork(**kwargs)


def test_bad_input_rank_raises():
  spn = SegmentProposalNetwork((1, 2), filters=2)
  with pytest.raises(ValueError, match="batch, steps, channels"):
    spn(tf.zeros([4, 3]))


# ----------------------------------------------------------------------------- FLOPs helper
def test_flops_hand_worked():
  # scale 3, no context: conv k3 r1 then conv k1; T=10, D=4, filters 8, heads 2+2.
  assert bench_flops.spn_flops(10, 4, scales=(3,), use_context=False, filters=8) == (
      2 * 10 * 3 * 4 * 8 + 2 * 10 * 1 * 8 * 8 + 2 * 10 * 8 * 4)
  # scale 6: max pool 2 (1 comparison per value) + two k3 convs + heads.
  assert bench_flops.spn_flops(10, 4, scales=(6,), use_context=False, filters=8) == (
      10 * 4 * 1 + 2 * 10 * 3 * 4 * 8 + 2 * 10 * 3 * 8 * 8 + 2 * 10 * 8 * 4)
  # classifier: P=5, bins=7, C=6, 3 classes, reduce 4, fc 8, final 4 + 6 outputs.
  assert bench_flops.classifier_flops(5, 7, 6, 3, reduce_filters=4, fc_units=8) == (
      2 * 35 * 6 * 4 + 2 * 5 * 28 * 8 + 2 * 5 * 8 * 10)


@pytest.mark.parametrize("variant", spn_lib.VARIANTS)
def test_flops_match_the_built_layers(variant):
  steps, dim, filters = 12, 5, 6
  use_context = variant == "multi_dilated"
  spn = SegmentProposalNetwork(SCALES, variant=variant, use_context=use_context,
                               filters=filters)
  spn.build([None, None, dim])
  spn(tf.zeros([1, steps, dim]))
  counted = 0
  for tower in spn.towers:
    for layer in tower.tower_layers:
      if isinstance(layer, tf_keras.layers.MaxPool1D):
        counted += steps * dim * (layer.pool_size[0] - 1)
  for layer in spn.submodules:
    if isinstance(layer, tf_keras.layers.Conv1D):
      k, cin, cout = layer.kernel.shape
      counted += 2 * steps * k * cin * cout
  assert bench_flops.spn_flops(steps, dim, SCALES, variant, use_context, filters) == counted


def test_temporal_conv_equals_keras_dilated_conv():
  """The native-dilation conv computes exactly what Keras' SpaceToBatch path computes."""
  x = tf.random.stateless_normal([2, 23, 5], seed=[1, 2])
  for rate in (1, 2, 5):
    ours = spn_lib.TemporalConv(4, 3, dilation_rate=rate, padding="same", activation="relu")
    ref = tf_keras.layers.Conv1D(4, 3, dilation_rate=rate, padding="same", activation="relu")
    ours.build(x.shape)
    ref.build(x.shape)
    ours.bias.assign([0.1, -0.2, 0.3, 0.0])
    ref.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-5, atol=1e-5)
    # The forward-only path (native dilation, used at inference) computes the same.
    np.testing.assert_allclose(ours.inference_call(x).numpy(), ref(x).numpy(), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("variant,use_context,rounding", [
    ("multi_dilated", True, "exact"), ("multi_dilated", False, "odd"),
    ("multi_dilated", True, "paper"), ("multi_tconv", False, "exact"),
    ("single_tconv", False, "exact")])
def test_inference_path_equals_layer_by_layer_path(variant, use_context, rounding):
  """training=False (shared pooling, batched heads, native dilation) == training=True."""
  spn = SegmentProposalNetwork(SCALES, variant=variant, use_context=use_context, filters=4,
                               rounding=rounding)
  x = tf.random.stateless_normal([2, 21, 3], seed=[3, 4])
  num_steps = tf.constant([21, 9])
  spn(x, num_steps=num_steps, training=True)  # builds the weights
  for k, head in enumerate(spn.class_heads):  # non-zero biases, distinct per head
    head.bias.assign(tf.fill(head.bias.shape, 0.1 * (k + 1)))
  slow = spn(x, num_steps=num_steps, training=True)
  fast = spn(x, num_steps=num_steps, training=False)
  for a, b in zip(fast, slow):
    assert a.shape == b.shape
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
