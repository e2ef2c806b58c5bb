"""Tests for tal_tf.core.losses against hand-worked values and loop-based numpy references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import losses


def np_log_softmax(x):
  """log softmax of a 1D array."""
  m = np.max(x)
  return x - m - math.log(np.sum(np.exp(x - m)))


# ---------------------------------------------------------------- basic losses


def test_weighted_softmax_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=[2, 5, 4]).astype(np.float32)
  targets = rng.integers(0, 4, size=[2, 5])
  weights = rng.uniform(size=[2, 5]).astype(np.float32)
  weights[1, 3] = 0.0
  targets[1, 3] = -1  # Ignored entry: a padding target must not break anything.
  out = losses.weighted_softmax_cross_entropy(logits, targets, weights).numpy()
  expected = np.zeros([2, 5])
  for b in range(2):
    for n in range(5):
      if weights[b, n] > 0:
        expected[b, n] = -np_log_softmax(logits[b, n])[targets[b, n]] * weights[b, n]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # Two equal logits: loss log 2.
  np.testing.assert_allclose(
      losses.weighted_softmax_cross_entropy([[[0.0, 0.0]]], [[1]], [[1.0]]).numpy(),
      [[math.log(2)]], rtol=1e-6)


def test_weighted_sigmoid_cross_entropy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=[2, 3, 4]).astype(np.float32)
  targets = rng.integers(0, 2, size=[2, 3, 4]).astype(np.float32)
  weights = rng.uniform(size=[2, 3]).astype(np.float32)
  out = losses.weighted_sigmoid_cross_entropy(logits, targets, weights).numpy()
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)) * weights[..., None]
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  class_weights = rng.uniform(size=[2, 3, 4]).astype(np.float32)
  out = losses.weighted_sigmoid_cross_entropy(logits, targets, class_weights).numpy()
  np.testing.assert_allclose(out, expected / weights[..., None] * class_weights, rtol=1e-5)


def test_weighted_smooth_l1_hand_worked():
  predictions = np.array([[[0.5, 3.0], [0.0, -2.0]]], np.float32)
  targets = np.zeros_like(predictions)
  weights = np.array([[1.0, 0.5]], np.float32)
  out = losses.weighted_smooth_l1(predictions, targets, weights).numpy()
  # Entry 0: 0.5 * 0.5^2 + (3 - 0.5) = 0.125 + 2.5; entry 1: (2 - 0.5) * weight 0.5.
  np.testing.assert_allclose(out, [[2.625, 0.75]])
  out = losses.weighted_smooth_l1(predictions, targets, weights, delta=2.0).numpy()
  # delta 2: 0.5 * 0.25 / 2 + (3 - 1); 0.5 * 4 / 2 ... |x| = 2 is not < 2: (2 - 1) * 0.5.
  np.testing.assert_allclose(out, [[2.0625, 0.5]])


def test_weighted_mean():
  np.testing.assert_allclose(losses.weighted_mean([[1.0, 3.0, 0.0]], [[1, 1, 0]]), 2.0)
  assert losses.weighted_mean([[0.0]], [[0.0]]).numpy() == 0.0


# ---------------------------------------------------------------- S-CNN


def test_scnn_loss_hand_worked():
  logits = np.zeros([1, 2, 2], np.float32)  # P = 1/2 for both classes.
  labels = np.array([[1, 0]])
  overlaps = np.array([[0.0625, 0.3]], np.float32)  # 0.0625^0.25 = 0.5.
  weights = np.ones([1, 2], np.float32)
  overlap = losses.scnn_overlap_loss(logits, labels, overlaps, weights, alpha=0.25).numpy()
  # Positive: 1/2 (0.25 / 0.5 - 1) = -0.25; background: no overlap term.
  np.testing.assert_allclose(overlap, [[-0.25, 0.0]], rtol=1e-6)
  total = losses.scnn_localization_loss(logits, labels, overlaps, weights, alpha=0.25,
                                        overlap_weight=2.0).numpy()
  np.testing.assert_allclose(total, [[math.log(2) - 0.5, math.log(2)]], rtol=1e-6)


def test_scnn_loss_matches_numpy():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=[2, 6, 4]).astype(np.float32)
  labels = rng.integers(0, 4, size=[2, 6])
  overlaps = rng.uniform(0.5, 1.0, size=[2, 6]).astype(np.float32)
  weights = (rng.uniform(size=[2, 6]) > 0.3).astype(np.float32)
  alpha, lam = 0.5, 0.7
  out = losses.scnn_localization_loss(logits, labels, overlaps, weights, alpha=alpha,
                                      overlap_weight=lam).numpy()
  expected = np.zeros([2, 6])
  for b in range(2):
    for n in range(6):
      log_p = np_log_softmax(logits[b, n].astype(np.float64))[labels[b, n]]
      term = 0.5 * (math.exp(2 * log_p) / overlaps[b, n] ** alpha - 1.0)
      expected[b, n] = weights[b, n] * (-log_p + lam * term * (labels[b, n] > 0))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_scnn_loss_gradient_matches_numpy_finite_difference():
  # d L / d logits of Eq. 1 (the paper's Eq. 4 gradient at fc8) by central differences of a
  # float64 numpy implementation of Eq. 1-3.
  rng = np.random.default_rng(7)
  logits = rng.normal(size=[1, 4, 5])
  labels = np.array([[2, 0, 4, 1]])
  overlaps = np.array([[0.8, 0.0, 0.55, 1.0]])
  weights = np.array([[1.0, 1.0, 1.0, 0.0]])
  alpha, lam = 0.25, 1.0

  def np_loss(z):
    total = 0.0
    for n in range(4):
      log_p = np_log_softmax(z[0, n])[labels[0, n]]
      term = -log_p
      if labels[0, n] > 0:
        term += lam * 0.5 * (math.exp(2 * log_p) / overlaps[0, n] ** alpha - 1.0)
      total += weights[0, n] * term
    return total / weights.sum()

  x = tf.constant(logits, tf.float64)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.weighted_mean(
        losses.scnn_localization_loss(x, labels, tf.constant(overlaps, tf.float64),
                                      tf.constant(weights, tf.float64), alpha=alpha,
                                      overlap_weight=lam), tf.constant(weights, tf.float64))
  got = tape.gradient(loss, x).numpy()
  want = np.zeros_like(logits)
  eps = 1e-6
  for index in np.ndindex(logits.shape):
    up, down = logits.copy(), logits.copy()
    up[index] += eps
    down[index] -= eps
    want[index] = (np_loss(up) - np_loss(down)) / (2 * eps)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
  assert np.all(got[0, 3] == 0) and np.abs(got[0, 0]).sum() > 0


@pytest.mark.parametrize("overlap", [0.9, 0.7, 0.5])
def test_scnn_loss_minimum_at_sqrt_v_alpha(overlap):
  # S-CNN Sec. 3.2: with lambda = 1 a positive's loss is minimal at P = sqrt(v^alpha).
  margin = np.linspace(-6.0, 6.0, 4001).astype(np.float32)  # Binary logits (0, m).
  logits = np.stack([np.zeros_like(margin), margin], -1)[None]
  out = losses.scnn_localization_loss(logits, np.ones([1, margin.size], np.int64),
                                      np.full([1, margin.size], overlap, np.float32),
                                      np.ones([1, margin.size], np.float32),
                                      alpha=0.25).numpy()[0]
  probability = 1.0 / (1.0 + np.exp(-margin[np.argmin(out)]))
  assert abs(probability - math.sqrt(overlap ** 0.25)) < 2e-3


# ---------------------------------------------------------------- weak supervision


def test_balanced_bce_hand_worked():
  probabilities = np.array([[0.9, 0.2, 0.5], [0.3, 0.6, 0.1]], np.float32)
  labels = np.array([[1, 0, 0], [1, 1, 0]], np.float32)
  out = losses.balanced_binary_cross_entropy(probabilities, labels).numpy()
  # Video 0: one positive, two negatives averaged; video 1: two positives averaged.
  expected = [-(math.log(0.9) + (math.log(0.8) + math.log(0.5)) / 2),
              -((math.log(0.3) + math.log(0.6)) / 2 + math.log(0.9))]
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  out = losses.balanced_binary_cross_entropy(probabilities, labels, weights=[1.0, 0.0])
  np.testing.assert_allclose(out.numpy(), [expected[0], 0.0], rtol=1e-5)
  # No positive class: only the negative half.
  out = losses.balanced_binary_cross_entropy([[0.5, 0.5]], [[0.0, 0.0]]).numpy()
  np.testing.assert_allclose(out, [math.log(2)], rtol=1e-5)


def test_balanced_bce_matches_numpy():
  rng = np.random.default_rng(3)
  probabilities = rng.uniform(0.01, 0.99, size=[4, 7]).astype(np.float32)
  labels = (rng.uniform(size=[4, 7]) > 0.7).astype(np.float32)
  labels[:, 0] = 1.0
  out = losses.balanced_binary_cross_entropy(probabilities, labels).numpy()
  for b in range(4):
    pos = [math.log(p) for p, y in zip(probabilities[b], labels[b]) if y == 1]
    neg = [math.log(1 - p) for p, y in zip(probabilities[b], labels[b]) if y == 0]
    expected = -(sum(pos) / len(pos) + (sum(neg) / len(neg) if neg else 0.0))
    np.testing.assert_allclose(out[b], expected, rtol=1e-5)


def test_contrastive_and_triplet_hand_worked():
  out = losses.contrastive_loss([1.0, 1.0, 4.0], [True, False, False], margin=3.0)
  # Same: D^2 = 1; different: [3 - 1]_+ = 2 and [3 - 4]_+ = 0.
  np.testing.assert_allclose(out.numpy(), [1.0, 2.0, 0.0])
  out = losses.triplet_loss([1.0, 1.0], [2.0, 5.0], margin=3.0)
  # [1 - 2 + 3]_+ = 2, [1 - 5 + 3]_+ = 0.
  np.testing.assert_allclose(out.numpy(), [2.0, 0.0])
  u = np.array([1.0, 2.0, 0.0])
  v = np.array([0.0, 0.0, 5.0])
  w = np.array([2.0, 1.0, 0.0])
  # (w . (u - v))^2 = (2 + 2 + 0)^2; equals (u-v)^T w^T w (u-v).
  np.testing.assert_allclose(losses.class_specific_squared_distance(u, v, w).numpy(), 16.0)


def np_squared_distance(u, v, c, distance, kernel=None, factors=None):
  """D_c^2(u, v) for the paper's distance (Eq. 10-11) and the Fig. 3 alternatives."""
  if distance == "class_specific":
    return np.dot(kernel[:, c], u - v) ** 2
  if distance == "euclidean":
    return np.sum((u - v) ** 2)
  if distance == "cosine":
    cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return (1.0 - cos) ** 2
  metric = factors[c].T @ factors[c]  # M_c
  return (u - v) @ metric @ (u - v)


def np_class_metric_loss(embeddings, activations, num_steps, labels, kernel, margin,
                         loss_type, distance="class_specific", factors=None):
  """The metric-learning paper's Sec. 3.4, written with loops."""
  batch, _, num_classes = activations.shape
  z_pos = np.zeros([batch, num_classes, embeddings.shape[2]])
  z_neg = np.zeros_like(z_pos)
  for k in range(batch):
    n = num_steps[k]
    for c in range(num_classes):
      e = np.exp(activations[k, :n, c] - activations[k, :n, c].max())
      pi = e / e.sum()
      z_pos[k, c] = sum(pi[i] * embeddings[k, i] for i in range(n))
      z_neg[k, c] = sum((1 - pi[i]) / (n - 1) * embeddings[k, i] for i in range(n))
      z_pos[k, c] /= np.linalg.norm(z_pos[k, c])
      z_neg[k, c] /= np.linalg.norm(z_neg[k, c])
  class_losses = []
  for c in range(num_classes):
    videos = [k for k in range(batch) if labels[k, c] == 1]
    if len(videos) < 2:
      continue
    d_pos = d_neg = 0.0
    for j in videos:
      for j2 in videos:
        if j != j2:
          d_pos += np_squared_distance(z_pos[j][c], z_pos[j2][c], c, distance, kernel,
                                       factors)
          d_neg += np_squared_distance(z_pos[j][c], z_neg[j2][c], c, distance, kernel,
                                       factors)
    pairs = len(videos) * (len(videos) - 1)
    d_pos, d_neg = d_pos / pairs, d_neg / pairs
    if loss_type == "triplet":
      class_losses.append(max(0.0, d_pos - d_neg + margin))
    else:
      class_losses.append(d_pos + max(0.0, margin - d_neg))
  return np.mean(class_losses) if class_losses else 0.0


@pytest.mark.parametrize("loss_type", ["triplet", "contrastive"])
def test_class_metric_loss_matches_numpy(loss_type):
  rng = np.random.default_rng(4)
  batch, steps, depth, num_classes = 5, 8, 6, 4
  embeddings = rng.normal(size=[batch, steps, depth]).astype(np.float32)
  activations = np.clip(rng.normal(size=[batch, steps, num_classes]), -2, 2).astype(
      np.float32)
  num_steps = np.array([8, 5, 3, 8, 6])
  embeddings[1, 5:] = 1e3  # Padding must not count.
  activations[1, 5:] = 50.0
  labels = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0],
                     [0, 0, 0, 1]], np.float32)  # Class 3 has a single video: skipped.
  kernel = rng.normal(size=[depth, num_classes]).astype(np.float32)
  out = losses.class_metric_loss(embeddings, activations, num_steps, labels, kernel,
                                 margin=3.0, loss_type=loss_type).numpy()
  expected = np_class_metric_loss(embeddings.astype(np.float64), activations, num_steps,
                                  labels, kernel, 3.0, loss_type)
  np.testing.assert_allclose(out, expected, rtol=1e-4)
  assert expected > 0

  # Gradients reach embeddings, activations and the classifier kernel, and stay finite
  # even with an empty (all-padding) video in the batch.
  num_steps[4] = 0
  inputs = [tf.constant(embeddings), tf.constant(activations), tf.constant(kernel)]
  with tf.GradientTape() as tape:
    tape.watch(inputs)
    loss = losses.class_metric_loss(inputs[0], inputs[1], num_steps, labels, inputs[2],
                                    loss_type=loss_type)
  for gradient in tape.gradient(loss, inputs):
    assert np.all(np.isfinite(gradient.numpy())) and np.abs(gradient.numpy()).sum() > 0


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "learned"])
@pytest.mark.parametrize("loss_type", ["triplet", "contrastive"])
def test_class_metric_loss_distances_match_numpy(distance, loss_type):
  rng = np.random.default_rng(5)
  batch, steps, depth, num_classes = 4, 6, 5, 3
  embeddings = rng.normal(size=[batch, steps, depth]).astype(np.float32)
  activations = np.clip(rng.normal(size=[batch, steps, num_classes]), -2, 2).astype(
      np.float32)
  num_steps = np.array([6, 4, 2, 5])
  labels = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0]], np.float32)
  factors = rng.normal(size=[num_classes, 2, depth]).astype(np.float32)  # rank 2 metric
  margin = 0.5  # Small enough that neither hinge is idle for these unit-norm features.
  out = losses.class_metric_loss(embeddings, activations, num_steps, labels, margin=margin,
                                 loss_type=loss_type, distance=distance,
                                 metric_factors=factors).numpy()
  expected = np_class_metric_loss(embeddings.astype(np.float64), activations, num_steps,
                                  labels, None, margin, loss_type, distance,
                                  factors.astype(np.float64))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
  assert expected > 0
  if distance == "learned":
    inputs = tf.constant(factors)
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      loss = losses.class_metric_loss(embeddings, activations, num_steps, labels,
                                      margin=margin, loss_type=loss_type,
                                      distance=distance, metric_factors=inputs)
    assert np.abs(tape.gradient(loss, inputs).numpy()).sum() > 0


def test_balanced_bce_from_logs_and_plain_bce_and_softmax_mil():
  rng = np.random.default_rng(6)
  probabilities = rng.uniform(0.01, 0.99, size=[3, 5])
  labels = np.array([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  from_logs = losses.balanced_binary_cross_entropy_from_logs(
      np.log(probabilities), np.log1p(-probabilities), labels).numpy()
  np.testing.assert_allclose(
      from_logs, losses.balanced_binary_cross_entropy(probabilities, labels).numpy(),
      rtol=1e-6)
  # A log of 0 on the side a video does not use must not leak (0 * -inf).
  saturated = losses.balanced_binary_cross_entropy_from_logs(
      [[0.0, -1.0]], [[-np.inf, -0.5]], [[1.0, 0.0]]).numpy()
  np.testing.assert_allclose(saturated, [0.5])
  bce = losses.binary_cross_entropy_from_logs(np.log(probabilities), np.log1p(-probabilities),
                                              labels).numpy()
  expected = -np.mean(labels * np.log(probabilities) +
                      (1 - labels) * np.log(1 - probabilities), axis=1)
  np.testing.assert_allclose(bce, expected, rtol=1e-6)
  logits = rng.normal(size=[3, 5])
  mil = losses.softmax_mil_loss(logits, labels).numpy()
  for b in range(3):
    log_softmax = np_log_softmax(logits[b])
    positives = labels[b] > 0
    expected = -log_softmax[positives].mean() if positives.any() else 0.0
    np.testing.assert_allclose(mil[b], expected, rtol=1e-6)


def test_class_metric_loss_without_pairs_is_zero():
  out = losses.class_metric_loss(np.ones([2, 3, 2], np.float32), np.zeros([2, 3, 2]),
                                 [3, 3], [[1, 0], [0, 1]], np.ones([2, 2], np.float32))
  assert out.numpy() == 0.0


# ---------------------------------------------------------------- ETP completeness


def test_completeness_hinge_ohem_hand_worked():
  scores = np.array([[2.0, 0.5, 0.9, -0.5, 0.2, -2.0],
                     [0.0, 0.3, -0.1, 0.6, 5.0, 0.0]], np.float32)
  labels = np.array([[1, 1, -1, -1, -1, -1],
                     [-1, -1, -1, -1, -1, 1]])
  weights = np.ones([2, 6], np.float32)
  weights[1, 4] = 0.0  # Not used (e.g. unsampled), although its loss 6 would be hardest.
  out = losses.completeness_hinge_loss(scores, labels, weights, hard_negative_fraction=0.25)
  # Hinge max(0, 1 - c s): positives 0, 0.5, 1.0 (the one at score 0); the 8 used
  # negatives have losses 1.9, 0.5, 1.2, 0, 1.0, 1.3, 0.9, 1.6: keep ceil(8 / 4) = 2 of
  # them, 1.9 and 1.6. Mean over the 5 kept: (0 + 0.5 + 1 + 1.9 + 1.6) / 5.
  np.testing.assert_allclose(out.numpy(), 1.0, rtol=1e-6)
  # Keeping all negatives: plain mean over the 11 used proposals.
  out = losses.completeness_hinge_loss(scores, labels, weights, hard_negative_fraction=1.0)
  np.testing.assert_allclose(out.numpy(), (1.5 + 8.4) / 11, rtol=1e-6)


def test_completeness_hinge_ohem_matches_numpy_and_gradients():
  rng = np.random.default_rng(5)
  scores = rng.normal(size=[3, 10]).astype(np.float32)
  labels = np.where(rng.uniform(size=[3, 10]) < 0.25, 1, -1)
  weights = (rng.uniform(size=[3, 10]) < 0.8).astype(np.float32)
  fraction = 0.3
  hinge = np.maximum(0.0, 1.0 - labels * scores)
  negatives = sorted([(hinge[b, n], b, n) for b in range(3) for n in range(10)
                      if labels[b, n] < 0 and weights[b, n] > 0], reverse=True)
  keep = math.ceil(fraction * len(negatives) - 1e-9)
  kept = [(b, n) for _, b, n in negatives[:keep]]
  kept += [(b, n) for b in range(3) for n in range(10) if labels[b, n] > 0 and weights[b, n]]
  expected = np.mean([hinge[b, n] for b, n in kept])
  scores_tensor = tf.constant(scores)
  with tf.GradientTape() as tape:
    tape.watch(scores_tensor)
    out = losses.completeness_hinge_loss(scores_tensor, labels, weights, fraction)
  np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5)
  gradient = tape.gradient(out, scores_tensor).numpy()
  mask = np.zeros([3, 10], bool)
  for b, n in kept:
    mask[b, n] = True
  assert np.all(gradient[~mask] == 0)  # Dropped negatives get no gradient.
  expected_gradient = np.where(mask & (hinge > 0), -labels / len(kept), 0.0)
  np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="alpha"):
    losses.scnn_overlap_loss(np.zeros([1, 1, 2]), [[1]], [[1.0]], [[1.0]], alpha=0.0)
  with pytest.raises(ValueError, match="overlap_weight"):
    losses.scnn_localization_loss(np.zeros([1, 1, 2]), [[1]], [[1.0]], [[1.0]],
                                  overlap_weight=-1.0)
  with pytest.raises(ValueError, match="hard_negative_fraction"):
    losses.completeness_hinge_loss([[0.0]], [[1]], [[1.0]], hard_negative_fraction=0.0)
  with pytest.raises(ValueError, match="loss_type"):
    losses.class_metric_loss(np.ones([2, 3, 2]), np.zeros([2, 3, 2]), [3, 3],
                             [[1, 0], [0, 1]], np.ones([2, 2]), loss_type="quadruplet")
  with pytest.raises(ValueError, match="logits"):
    losses.weighted_softmax_cross_entropy(np.zeros([2, 3]), [[0, 0, 0]], [[1, 1, 1]])
  with pytest.raises(ValueError, match="delta"):
    losses.weighted_smooth_l1(np.zeros([1, 1, 2]), np.zeros([1, 1, 2]), [[1.0]], delta=0)


def test_losses_in_tf_function_with_dynamic_shapes():
  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32),
                                tf.TensorSpec([None, None], tf.int32),
                                tf.TensorSpec([None, None, None], tf.float32),
                                tf.TensorSpec([None], tf.int32),
                                tf.TensorSpec([None, None], tf.float32)])
  def compute(scores, labels, embeddings, num_steps, video_labels):
    hinge = losses.completeness_hinge_loss(scores, labels, tf.ones_like(scores), 0.5)
    metric = losses.class_metric_loss(embeddings, embeddings[..., :2], num_steps,
                                      video_labels, tf.ones([3, 2]))
    return hinge, metric

  # Hinge: positive at 0.5 (loss 0.5); negatives 0.2 (1.2) and -3 (0): keep 1 of 2.
  hinge, metric = compute(np.array([[0.5, 0.2, -3.0]], np.float32),
                          np.array([[1, -1, -1]], np.int32),
                          np.ones([2, 4, 3], np.float32), np.array([4, 2], np.int32),
                          np.array([[1, 0], [1, 0]], np.float32))
  np.testing.assert_allclose(hinge.numpy(), (0.5 + 1.2) / 2, rtol=1e-6)
  # Identical videos: d+ = 0 and z^-c = z^c = the same unit vector, so d- = 0 and the
  # triplet loss is the margin.
  np.testing.assert_allclose(metric.numpy(), 3.0, rtol=1e-5)
