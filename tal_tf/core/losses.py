"""Losses of the four detectors, as plain functions on tensors.

Anchor/proposal losses take per-entry `weights` [B, N] (0 for padded, ignored or
unsampled entries) and return weighted per-entry losses; `weighted_mean` turns those into
the usual "sum over the mini-batch / number of sampled entries" scalar. Losses that are
defined on whole videos or on the mini-batch (balanced BCE, the class metric loss, the
completeness hinge with OHEM) say what they return.

Sources: TAL-Net supplementary Eq. 1 (softmax cross-entropy + smooth L1), S-CNN Eq. 1-3
(overlap loss), the weakly supervised metric-learning paper Eq. 5-11 (balanced BCE,
contrastive / triplet losses, class-specific Mahalanobis distance), ETP Eq. 4 and 8
(smooth L1, completeness hinge loss with online hard example mining).
"""
import tensorflow as tf


def _check_rank(tensor, rank, name, shape_text):
  """Raises ValueError if the static rank of `tensor` is known and differs from `rank`."""
  if tensor.shape.rank is not None and tensor.shape.rank != rank:
    raise ValueError(f"{name} must have shape {shape_text}, got shape {tensor.shape}")


def _check_positive(value, name):
  """Raises ValueError unless value > 0."""
  if not float(value) > 0.0:
    raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_nonnegative(value, name):
  """Raises ValueError unless value >= 0."""
  if not float(value) >= 0.0:
    raise ValueError(f"{name} must be >= 0, got {value!r}")


def weighted_mean(losses, weights):
  """sum(losses) / sum(weights) over all entries (0 when all weights are 0); scalar."""
  losses = tf.convert_to_tensor(losses)
  weights = tf.cast(weights, losses.dtype)
  return tf.math.divide_no_nan(tf.reduce_sum(losses), tf.reduce_sum(weights))


# --------------------------------------------------------------------------------------
# Classification and regression (TAL-Net supplementary Eq. 1, ETP Eq. 4 and 6).


def weighted_softmax_cross_entropy(logits, targets, weights):
  """Softmax cross-entropy of logits [B, N, C] vs int targets [B, N], times weights [B, N].

  Returns [B, N]. Entries with weight 0 contribute 0 whatever their target (so a padding
  target such as -1 is allowed there).
  """
  with tf.name_scope("weighted_softmax_cross_entropy"):
    logits = tf.convert_to_tensor(logits)
    _check_rank(logits, 3, "logits", "[B, N, C]")
    targets = tf.convert_to_tensor(targets)
    _check_rank(targets, 2, "targets", "[B, N]")
    weights = tf.cast(weights, logits.dtype)
    # Out-of-range targets on zero-weight entries would make the op fail on CPU.
    num_classes = tf.shape(logits)[-1]
    safe_targets = tf.where(weights > 0, tf.cast(targets, tf.int32),
                            tf.zeros_like(targets, tf.int32))
    tf.debugging.assert_less(safe_targets, num_classes,
                             message="weighted_softmax_cross_entropy: targets >= C")
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_targets,
                                                            logits=logits)
    return losses * weights


def weighted_sigmoid_cross_entropy(logits, targets, weights):
  """Multi-label sigmoid cross-entropy of logits/targets [B, N, C] -> weighted [B, N, C].

  `weights` is [B, N] (one weight per entry) or [B, N, C] (per entry and class).
  """
  with tf.name_scope("weighted_sigmoid_cross_entropy"):
    logits = tf.convert_to_tensor(logits)
    _check_rank(logits, 3, "logits", "[B, N, C]")
    targets = tf.cast(targets, logits.dtype)
    weights = tf.cast(weights, logits.dtype)
    if weights.shape.rank == 2:
      weights = weights[..., None]
    elif weights.shape.rank != 3:
      raise ValueError(f"weights must have shape [B, N] or [B, N, C], got {weights.shape}")
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    return losses * weights


def weighted_smooth_l1(predictions, targets, weights, delta=1.0):
  """Smooth L1 (Huber) of predictions vs targets [B, N, code], summed over code -> [B, N].

  Per coordinate: 0.5 x^2 / delta if |x| < delta else |x| - 0.5 delta. With delta = 1
  this is Fast R-CNN's smooth L1, used by TAL-Net (supplementary Eq. 1) and ETP (Eq. 4).
  The sum over the code matches Fast R-CNN (one loss per segment, not per coordinate).
  """
  _check_positive(delta, "delta")
  with tf.name_scope("weighted_smooth_l1"):
    predictions = tf.convert_to_tensor(predictions)
    _check_rank(predictions, 3, "predictions", "[B, N, code]")
    targets = tf.cast(targets, predictions.dtype)
    weights = tf.cast(weights, predictions.dtype)
    diff = tf.abs(predictions - targets)
    per_coordinate = tf.where(diff < delta, 0.5 * tf.square(diff) / delta, diff - 0.5 * delta)
    return tf.reduce_sum(per_coordinate, axis=-1) * weights


# --------------------------------------------------------------------------------------
# S-CNN localization network (S-CNN Eq. 1-3).


def scnn_overlap_loss(logits, labels, overlaps, weights, alpha=0.25, min_overlap=1e-6):
  """S-CNN overlap term (Eq. 3) per window: 1/2 (P^2 / v^alpha - 1) [k > 0] -> [B, N].

  logits [B, N, K + 1] (column 0 = background), labels [B, N] int (0 = background),
  overlaps [B, N] = v, the window's IoU with its ground truth (1 for trimmed clips),
  weights [B, N]. P is the softmax probability of the true class. Note the term is not
  squared: with lambda = 1 the total loss -log P + 1/2 (P^2 / v^alpha - 1) is minimal
  at P = sqrt(v^alpha), the behaviour the paper describes, and it is negative when
  P^2 < v^alpha.
  """
  _check_positive(alpha, "alpha")
  _check_positive(min_overlap, "min_overlap")
  with tf.name_scope("scnn_overlap_loss"):
    logits = tf.convert_to_tensor(logits)
    _check_rank(logits, 3, "logits", "[B, N, K + 1]")
    labels = tf.cast(labels, tf.int32)
    weights = tf.cast(weights, logits.dtype)
    # v only matters for positives, whose IoU is large (>= 0.5 by S-CNN's assignment);
    # the floor only keeps a stray v = 0 from dividing by zero.
    overlaps = tf.maximum(tf.cast(overlaps, logits.dtype), min_overlap)
    positive = tf.cast(labels > 0, logits.dtype)
    safe_labels = tf.where(weights > 0, labels, tf.zeros_like(labels))
    probability = tf.gather(tf.nn.softmax(logits), safe_labels, batch_dims=2)
    overlap_term = 0.5 * (tf.square(probability) / tf.pow(overlaps, alpha) - 1.0)
    return overlap_term * positive * weights


def scnn_localization_loss(logits, labels, overlaps, weights, alpha=0.25,
                           overlap_weight=1.0, min_overlap=1e-6):
  """S-CNN localization loss per window (Eq. 1): softmax CE + lambda * overlap -> [B, N].

  Same arguments as `scnn_overlap_loss`; `overlap_weight` is Eq. 1's lambda (paper: 1).
  The paper's alpha is 0.25 in all its experiments (Sec. 4). Eq. 1-3 average over the
  N windows: reduce with `weighted_mean(losses, weights)`. (The paper's weight decay is
  the optimizer's, not part of this loss.)
  """
  _check_nonnegative(overlap_weight, "overlap_weight")
  with tf.name_scope("scnn_localization_loss"):
    softmax_term = weighted_softmax_cross_entropy(logits, labels, weights)  # Eq. 2
    overlap_term = scnn_overlap_loss(logits, labels, overlaps, weights, alpha=alpha,
                                     min_overlap=min_overlap)  # Eq. 3
    return softmax_term + overlap_weight * overlap_term


# --------------------------------------------------------------------------------------
# Weakly supervised metric learning (Eq. 5-11 of the metric-learning paper).


def balanced_binary_cross_entropy(probabilities, labels, weights=None, epsilon=1e-7):
  """Balanced BCE (Eq. 5-6) of video-level probabilities [B, C] vs multi-hot labels -> [B].

  Per video: -( sum_c y_c log P_c / sum_c y_c + sum_c (1 - y_c) log(1 - P_c) /
  sum_c (1 - y_c) ): the positive and the negative classes each get a total weight of 1,
  whatever their counts. A video without positive (or negative) classes gets 0 from the
  missing half. `probabilities` are P(c | V) (Eq. 3), clipped to [epsilon, 1 - epsilon]
  before the logs; optional `weights` [B] scale each video (0 for padding). Average over
  videos with `weighted_mean(losses, weights)`.
  """
  _check_positive(epsilon, "epsilon")
  with tf.name_scope("balanced_binary_cross_entropy"):
    probabilities = tf.convert_to_tensor(probabilities)
    _check_rank(probabilities, 2, "probabilities", "[B, C]")
    probabilities = tf.clip_by_value(probabilities, epsilon, 1.0 - epsilon)
    return balanced_binary_cross_entropy_from_logs(
        tf.math.log(probabilities), tf.math.log(1.0 - probabilities), labels, weights)


def balanced_binary_cross_entropy_from_logs(log_probabilities, log_complements, labels,
                                            weights=None):
  """Balanced BCE (Eq. 5-6) from log P(c|V) and log(1 - P(c|V)), each [B, C] -> [B].

  The same loss as `balanced_binary_cross_entropy` for callers that have both logs exactly
  (e.g. the noisy-OR of `video_scores`), where P rounds to 1 long before its logs do.
  """
  with tf.name_scope("balanced_binary_cross_entropy"):
    log_probabilities = tf.convert_to_tensor(log_probabilities)
    _check_rank(log_probabilities, 2, "log_probabilities", "[B, C]")
    log_complements = tf.cast(log_complements, log_probabilities.dtype)
    labels = tf.cast(labels, log_probabilities.dtype)
    _check_rank(labels, 2, "labels", "[B, C]")
    # tf.where rather than products: a log of 0 on the unused side must not make 0 * -inf.
    positive_terms = tf.where(labels > 0, labels * log_probabilities,
                              tf.zeros_like(log_probabilities))
    negative_terms = tf.where(labels < 1, (1.0 - labels) * log_complements,
                              tf.zeros_like(log_complements))
    positive_part = tf.math.divide_no_nan(tf.reduce_sum(positive_terms, axis=-1),
                                          tf.reduce_sum(labels, axis=-1))
    negative_part = tf.math.divide_no_nan(tf.reduce_sum(negative_terms, axis=-1),
                                          tf.reduce_sum(1.0 - labels, axis=-1))
    losses = -(positive_part + negative_part)
    if weights is not None:
      losses *= tf.cast(weights, losses.dtype)
    return losses


def binary_cross_entropy_from_logs(log_probabilities, log_complements, labels, weights=None):
  """Plain multi-label BCE from log P and log(1 - P) [B, C], mean over classes -> [B].

  -(1/C) sum_c [y_c log P_c + (1 - y_c) log(1 - P_c)]: every class weighs the same, so the
  many negative classes of a video dominate (the paper's Fig. 2 "BCE" baseline).
  """
  with tf.name_scope("binary_cross_entropy"):
    log_probabilities = tf.convert_to_tensor(log_probabilities)
    _check_rank(log_probabilities, 2, "log_probabilities", "[B, C]")
    log_complements = tf.cast(log_complements, log_probabilities.dtype)
    labels = tf.cast(labels, log_probabilities.dtype)
    _check_rank(labels, 2, "labels", "[B, C]")
    terms = (tf.where(labels > 0, labels * log_probabilities, tf.zeros_like(labels)) +
             tf.where(labels < 1, (1.0 - labels) * log_complements, tf.zeros_like(labels)))
    losses = -tf.reduce_mean(terms, axis=-1)
    if weights is not None:
      losses *= tf.cast(weights, losses.dtype)
    return losses


def softmax_mil_loss(video_logits, labels, weights=None):
  """W-TALC's multiple-instance (softmax) loss on video-level class logits [B, C] -> [B].

  -sum_c (y_c / sum_c' y_c') log softmax(logits)_c: the labels are normalised to a
  distribution over the video's classes. A video without positive classes gets 0.
  """
  with tf.name_scope("softmax_mil_loss"):
    video_logits = tf.convert_to_tensor(video_logits)
    _check_rank(video_logits, 2, "video_logits", "[B, C]")
    labels = tf.cast(labels, video_logits.dtype)
    _check_rank(labels, 2, "labels", "[B, C]")
    target = tf.math.divide_no_nan(labels, tf.reduce_sum(labels, axis=-1, keepdims=True))
    losses = -tf.reduce_sum(target * tf.nn.log_softmax(video_logits, axis=-1), axis=-1)
    if weights is not None:
      losses *= tf.cast(weights, losses.dtype)
    return losses


def contrastive_loss(squared_distances, same_label, margin):
  """Contrastive loss (Eq. 7-8) elementwise: D^2 if same label else [margin - D^2]_+.

  Takes squared distances of any shape and a same-label mask of the same shape, so any
  distance function can be used. As in the paper the margin is compared with D^2.
  """
  with tf.name_scope("contrastive_loss"):
    squared_distances = tf.convert_to_tensor(squared_distances)
    same_label = tf.cast(same_label, tf.bool)
    return tf.where(same_label, squared_distances, tf.nn.relu(margin - squared_distances))


def triplet_loss(positive_squared_distances, negative_squared_distances, margin):
  """Triplet loss (Eq. 9) elementwise: [D^2(a, p) - D^2(a, n) + margin]_+ (any shape)."""
  with tf.name_scope("triplet_loss"):
    positive_squared_distances = tf.convert_to_tensor(positive_squared_distances)
    return tf.nn.relu(positive_squared_distances - negative_squared_distances + margin)


def class_specific_squared_distance(u, v, class_weights):
  """Squared class distance D_c^2(u, v) = (w_c . (u - v))^2 (Eq. 10-11), u, v [..., d].

  class_weights [..., d] is the row W_f^c of the classifier for the class, broadcast
  against u and v; D_c is the Mahalanobis distance with M_c = w_c^T w_c.
  """
  with tf.name_scope("class_specific_squared_distance"):
    u = tf.convert_to_tensor(u)
    return tf.square(tf.reduce_sum(tf.cast(class_weights, u.dtype) * (u - v), axis=-1))


def class_aggregated_features(embeddings, class_activations, num_steps):
  """High/low-attention class features z^c, z^-c of the metric module -> 2 x [B, C, d].

  embeddings [B, T, d] (u), class_activations [B, T, C] (clipped s, Eq. 1), num_steps [B].
  pi^c = softmax over the valid steps of s^c; z^c = sum_i pi_i^c u_i and
  z^-c = sum_i (1 - pi_i^c) / (n - 1) u_i, both L2-normalised onto the unit sphere.
  Padded steps get no weight; a one-step video has z^-c = 0.
  """
  with tf.name_scope("class_aggregated_features"):
    embeddings = tf.convert_to_tensor(embeddings)
    _check_rank(embeddings, 3, "embeddings", "[B, T, d]")
    class_activations = tf.cast(class_activations, embeddings.dtype)
    _check_rank(class_activations, 3, "class_activations", "[B, T, C]")
    num_steps = tf.cast(num_steps, tf.int32)
    valid = tf.sequence_mask(num_steps, tf.shape(embeddings)[1])[:, :, None]  # [B, T, 1]
    # The lowest finite value (not -inf) masks padding: a video without valid steps then
    # gets a uniform softmax instead of NaNs (whose gradients would poison the batch),
    # and is zeroed just below.
    masked = tf.where(valid, class_activations, class_activations.dtype.min)
    attention = tf.nn.softmax(masked, axis=1)
    attention = tf.where(valid, attention, tf.zeros_like(attention))  # [B, T, C]
    inverse = tf.math.divide_no_nan(
        tf.where(valid, 1.0 - attention, tf.zeros_like(attention)),
        tf.cast(num_steps - 1, embeddings.dtype)[:, None, None])
    positive = tf.einsum("btc,btd->bcd", attention, embeddings)
    negative = tf.einsum("btc,btd->bcd", inverse, embeddings)
    return (tf.math.l2_normalize(positive, axis=-1),
            tf.math.l2_normalize(negative, axis=-1))


METRIC_DISTANCES = ("class_specific", "euclidean", "cosine", "learned")


def _pairwise_squared_distances(a, b, distance, classifier_kernel=None, metric_factors=None):
  """Squared distances D_c^2(a_j^c, b_j'^c) of a, b [B, C, d] for all pairs -> [B, B, C].

  distance:
    "class_specific": (w_c . (u - v))^2, w_c = classifier_kernel[:, c] (Eq. 10-11);
    "euclidean":      |u - v|^2;
    "cosine":         (1 - cos(u, v))^2 (the cosine distance, squared like every D in
                      Eq. 7-9; 1 - cos is 0 for parallel and 1 for orthogonal features);
    "learned":        (u - v)^T L_c^T L_c (u - v) with metric_factors L [C, r, d], i.e. the
                      learnable per-class metric M_c = L_c^T L_c of Fig. 3 ("custom"); the
                      factorisation keeps M_c positive semi-definite, so D_c^2 >= 0.
  """
  if distance == "class_specific":
    kernel = tf.cast(classifier_kernel, a.dtype)
    _check_rank(kernel, 2, "classifier_kernel", "[d, C]")
    # D_c(u, v) = |w_c . u - w_c . v|: project once, then pairwise differences.
    pa = tf.einsum("bcd,dc->bc", a, kernel)
    pb = tf.einsum("bcd,dc->bc", b, kernel)
    return tf.square(pa[:, None, :] - pb[None, :, :])
  if distance == "cosine":
    cosine = tf.einsum("jcd,kcd->jkc", tf.math.l2_normalize(a, axis=-1),
                       tf.math.l2_normalize(b, axis=-1))
    return tf.square(1.0 - cosine)
  if distance == "learned":
    factors = tf.cast(metric_factors, a.dtype)
    _check_rank(factors, 3, "metric_factors", "[C, r, d]")
    a = tf.einsum("bcd,crd->bcr", a, factors)
    b = tf.einsum("bcd,crd->bcr", b, factors)
  # |u - v|^2 = |u|^2 + |v|^2 - 2 u.v: avoids a [B, B, C, d] difference tensor; the relu
  # removes rounding below 0.
  squared = (tf.reduce_sum(tf.square(a), -1)[:, None, :] +
             tf.reduce_sum(tf.square(b), -1)[None, :, :] -
             2.0 * tf.einsum("jcd,kcd->jkc", a, b))
  return tf.nn.relu(squared)


def class_metric_loss(embeddings, class_activations, num_steps, video_labels,
                      classifier_kernel=None, margin=3.0, loss_type="triplet",
                      distance="class_specific", metric_factors=None):
  """Class-specific metric loss of the weakly supervised model -> scalar.

  embeddings [B, T, d], class_activations [B, T, C], num_steps [B], video_labels [B, C]
  multi-hot, classifier_kernel [d, C] (the Keras Dense kernel of the final classifier,
  i.e. W_f transposed, so column c is W_f^c). For each class c present in n_c >= 2
  videos of the batch:
    d+ = mean over ordered pairs j != j' of D_c^2(z^c_j, z^c_j'),
    d- = mean over ordered pairs j != j' of D_c^2(z^c_j, z^-c_j'),
  and the class loss is [d+ - d- + margin]_+ (triplet) or d+ + [margin - d-]_+
  (contrastive). The result is the mean over those classes (0 if none).
  Paper defaults: margin 3, triplet, the class-specific distance of Eq. 10-11; `distance`
  selects the alternatives of Fig. 3 (see `_pairwise_squared_distances`; "learned" needs
  metric_factors [C, r, d]).
  """
  # The paper does not say how class losses are combined; the mean over classes keeps
  # the scale independent of how many classes a batch happens to contain.
  if loss_type not in ("triplet", "contrastive"):
    raise ValueError(f"loss_type must be 'triplet' or 'contrastive', got {loss_type!r}")
  if distance not in METRIC_DISTANCES:
    raise ValueError(f"distance must be one of {METRIC_DISTANCES}, got {distance!r}")
  if distance == "class_specific" and classifier_kernel is None:
    raise ValueError("distance 'class_specific' needs classifier_kernel [d, C]")
  if distance == "learned" and metric_factors is None:
    raise ValueError("distance 'learned' needs metric_factors [C, r, d]")
  with tf.name_scope("class_metric_loss"):
    positive, negative = class_aggregated_features(embeddings, class_activations,
                                                   num_steps)  # [B, C, d]
    positive_pairs = _pairwise_squared_distances(positive, positive, distance,
                                                 classifier_kernel, metric_factors)
    negative_pairs = _pairwise_squared_distances(positive, negative, distance,
                                                 classifier_kernel, metric_factors)
    labels = tf.cast(video_labels, positive.dtype)
    _check_rank(labels, 2, "video_labels", "[B, C]")
    batch_size = tf.shape(labels)[0]
    off_diagonal = 1.0 - tf.eye(batch_size, dtype=labels.dtype)
    pair_mask = labels[:, None, :] * labels[None, :, :] * off_diagonal[..., None]
    num_pairs = tf.reduce_sum(pair_mask, axis=[0, 1])  # n_c (n_c - 1)
    d_positive = tf.math.divide_no_nan(tf.reduce_sum(pair_mask * positive_pairs, [0, 1]),
                                       num_pairs)
    d_negative = tf.math.divide_no_nan(tf.reduce_sum(pair_mask * negative_pairs, [0, 1]),
                                       num_pairs)
    if loss_type == "triplet":
      per_class = triplet_loss(d_positive, d_negative, margin)
    else:
      per_class = d_positive + tf.nn.relu(margin - d_negative)
    has_pairs = tf.cast(num_pairs > 0, per_class.dtype)
    return weighted_mean(per_class * has_pairs, has_pairs)


# --------------------------------------------------------------------------------------
# ETP completeness (ETP Eq. 8).


def completeness_hinge_loss(scores, labels, weights, hard_negative_fraction=0.25):
  """ETP completeness hinge loss (Eq. 8) with online hard example mining -> scalar.

  scores [B, N] completeness scores (raw, unbounded: ETP ranks with exp(s_comp)),
  labels [B, N] = c_i, +1 for complete (positive) and -1 for incomplete proposals,
  weights [B, N] (0 for proposals not used). Positives all count; of the incomplete
  proposals in the mini-batch only the ceil(fraction * count) with the largest hinge
  loss max(0, 1 - c s) are kept (ETP: 1/4 of them, after sampling 1:4). Returns the
  weighted mean hinge loss over the kept proposals.
  """
  # ETP does not say whether mining is per video or per mini-batch; it is done over the
  # whole mini-batch (as SSN's OHEM is), and ceil keeps at least one of any negatives.
  if not 0.0 < float(hard_negative_fraction) <= 1.0:
    raise ValueError(
        f"hard_negative_fraction must be in (0, 1], got {hard_negative_fraction!r}")
  with tf.name_scope("completeness_hinge_loss"):
    scores = tf.convert_to_tensor(scores)
    _check_rank(scores, 2, "scores", "[B, N]")
    labels = tf.cast(labels, scores.dtype)
    weights = tf.cast(weights, scores.dtype)
    hinge = tf.nn.relu(1.0 - labels * scores)
    used = weights > 0
    positive = used & (labels > 0)
    negative = used & (labels < 0)

    flat_hinge = tf.reshape(hinge, [-1])
    flat_negative = tf.reshape(negative, [-1])
    num_negative = tf.reduce_sum(tf.cast(flat_negative, tf.int32))
    # Float64 and a tiny tolerance so that e.g. 0.3 * 10 keeps 3, not 4.
    num_keep = tf.cast(tf.math.ceil(float(hard_negative_fraction) *
                                    tf.cast(num_negative, tf.float64) - 1e-9), tf.int32)
    # Rank the negatives by loss (non-negatives sort last); ties keep input order.
    ranking_key = tf.where(flat_negative, flat_hinge, tf.cast(-1.0, scores.dtype))
    order = tf.argsort(ranking_key, direction="DESCENDING", stable=True)
    rank = tf.math.invert_permutation(order)
    kept_negative = flat_negative & (rank < num_keep)
    kept = tf.reshape(kept_negative, tf.shape(hinge)) | positive
    kept_weights = tf.where(kept, weights, tf.zeros_like(weights))
    return weighted_mean(kept_weights * hinge, kept_weights)
