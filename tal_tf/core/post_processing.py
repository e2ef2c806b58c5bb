"""Post-processing of 1D segment detections: (soft-)NMS, class-agnostic and multi-class.

Everything here uses core TF ops only (the NMS kernel is `NonMaxSuppressionV5`, the op
behind `tf.image.non_max_suppression_with_scores`), so it runs in `tf.function` and in an
exported SavedModel loaded by TF Serving.

Temporal IoU through the 2D kernel: a segment (s, e) is mapped to the box
(ymin, xmin, ymax, xmax) = (0, s, 1, e). Two such boxes intersect in a rectangle of height 1
and width |[s1, e1] & [s2, e2]|, and each has area e - s, so the box IoU the kernel computes
is exactly the temporal IoU (multiplying by a height of 1 is exact in floating point).

Conventions shared by all functions here (those of the kernel, checked in the tests):
  * a segment is suppressed when its tIoU with a kept one is strictly greater than
    `iou_threshold` (tIoU == threshold survives);
  * a segment is a candidate only when its score is strictly greater than
    `score_threshold`;
  * equal scores are visited in input order (lower index first);
  * soft-NMS decays a score by the Gaussian exp(-tIoU^2 / sigma) of the Soft-NMS paper
    (Bodla et al. 2017). The kernel's own parameter is defined by exp(-tIoU^2 / (2 sigma')),
    so `sigma' = sigma / 2` is what gets passed to it. With soft-NMS, tIoU above
    `iou_threshold` still suppresses outright, so pure Gaussian soft-NMS uses
    `iou_threshold=1.0`.
"""
import math

import tensorflow as tf


def _check_nonnegative_int(value, name):
  """Raises ValueError unless `value` is a Python int >= 0."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"{name} must be a non-negative Python int, got {value!r}")


def _check_iou_threshold(value, name="iou_threshold"):
  """Raises ValueError unless 0 <= value <= 1."""
  if not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _check_sigma(value, name):
  """Raises ValueError unless value >= 0."""
  if not float(value) >= 0.0:
    raise ValueError(f"{name} must be >= 0 (0 disables soft-NMS), got {value!r}")


def _check_rank(tensor, rank, name, shape_text):
  """Raises ValueError if the static rank of `tensor` is known and differs from `rank`."""
  if tensor.shape.rank is not None and tensor.shape.rank != rank:
    raise ValueError(f"{name} must have shape {shape_text}, got shape {tensor.shape}")


def _check_last_dim(tensor, size, name, shape_text):
  """Raises ValueError if the static last dimension is known and differs from `size`."""
  if tensor.shape.rank and tensor.shape[-1] is not None and tensor.shape[-1] != size:
    raise ValueError(f"{name} must have shape {shape_text}, got shape {tensor.shape}")


def segments_to_boxes(segments):
  """Maps segments [..., 2] (start, end) to boxes [..., 4] (0, start, 1, end)."""
  segments = tf.convert_to_tensor(segments)
  start, end = tf.unstack(segments, num=2, axis=-1)
  zeros = tf.zeros_like(start)
  return tf.stack([zeros, start, tf.ones_like(start), end], axis=-1)


def _nms_kernel(segments, scores, max_output_size, iou_threshold, score_threshold,
                soft_nms_sigma):
  """Runs the padded V5 kernel on segments [N, 2]; returns indices, scores [K], count."""
  scores = tf.convert_to_tensor(scores)
  segments = tf.cast(tf.convert_to_tensor(segments), scores.dtype)
  selected, selected_scores, num_valid = tf.raw_ops.NonMaxSuppressionV5(
      boxes=segments_to_boxes(segments),
      scores=scores,
      max_output_size=tf.constant(max_output_size, tf.int32),
      iou_threshold=tf.constant(iou_threshold, scores.dtype),
      score_threshold=tf.constant(score_threshold, scores.dtype),
      # Convert the Soft-NMS paper's sigma to the kernel's (see module docstring).
      soft_nms_sigma=tf.constant(soft_nms_sigma / 2.0, scores.dtype),
      pad_to_max_output_size=True)
  # The padded kernel output has a static length; say so for downstream shape inference.
  selected = tf.ensure_shape(selected, [max_output_size])
  selected_scores = tf.ensure_shape(selected_scores, [max_output_size])
  return selected, selected_scores, num_valid


def nms_1d(segments, scores, iou_threshold, max_output_size, score_threshold=-math.inf):
  """Greedy NMS on segments [N, 2], scores [N] -> (indices [max_output_size] int32, num_valid).

  `indices` lists the kept segments in decreasing score order, padded with 0 after
  `num_valid` (a scalar int32).
  """
  _check_iou_threshold(iou_threshold)
  _check_nonnegative_int(max_output_size, "max_output_size")
  with tf.name_scope("nms_1d"):
    segments = tf.convert_to_tensor(segments)
    scores = tf.convert_to_tensor(scores)
    _check_rank(segments, 2, "segments", "[N, 2]")
    _check_last_dim(segments, 2, "segments", "[N, 2]")
    _check_rank(scores, 1, "scores", "[N]")
    indices, _, num_valid = _nms_kernel(segments, scores, max_output_size, iou_threshold,
                                        score_threshold, 0.0)
    return indices, num_valid


def soft_nms_1d(segments, scores, sigma, max_output_size, iou_threshold=1.0,
                score_threshold=-math.inf):
  """Gaussian soft-NMS on segments [N, 2], scores [N] -> (indices [K], scores [K], num_valid).

  Scores decay by exp(-tIoU^2 / sigma) (Soft-NMS paper convention; see module docstring)
  for every kept segment overlapping them; the returned scores are these decayed scores,
  in decreasing order, padded with 0 (indices padded with 0) after `num_valid`.
  Candidates whose decayed score drops to `score_threshold` or below are dropped.
  """
  _check_iou_threshold(iou_threshold)
  _check_nonnegative_int(max_output_size, "max_output_size")
  _check_sigma(sigma, "sigma")
  with tf.name_scope("soft_nms_1d"):
    segments = tf.convert_to_tensor(segments)
    scores = tf.convert_to_tensor(scores)
    _check_rank(segments, 2, "segments", "[N, 2]")
    _check_last_dim(segments, 2, "segments", "[N, 2]")
    _check_rank(scores, 1, "scores", "[N]")
    return _nms_kernel(segments, scores, max_output_size, iou_threshold, score_threshold,
                       float(sigma))


def _mask_invalid_scores(scores, num_valid):
  """Sets scores [B, N] or [B, N, C] of entries n >= num_valid[b] to -inf (never candidates)."""
  valid = tf.sequence_mask(num_valid, tf.shape(scores)[1])
  if scores.shape.rank == 3:
    valid = valid[:, :, None]
  return tf.where(valid, scores, tf.cast(-math.inf, scores.dtype))


def _gather_with_dummy(params, indices):
  """tf.gather(params [N, 2], indices) that also works when N == 0 (reads a zero row)."""
  # The kernel pads indices with 0, which is out of range for an empty input; an extra
  # zero row keeps every index valid without a data-dependent branch.
  dummy = tf.zeros([1, 2], params.dtype)
  return tf.gather(tf.concat([params, dummy], 0), indices)


def batch_class_agnostic_nms(segments, scores, num_valid, iou_threshold, max_output,
                             score_threshold=-math.inf, soft_nms_sigma=0.0):
  """Per-video NMS of segments [B, N, 2], scores [B, N] with num_valid [B] valid entries.

  Returns (segments [B, K, 2], scores [B, K], indices [B, K] int32, num_detections [B]
  int32) with K = max_output, kept entries in decreasing score order; padded entries have
  zero segments, zero scores and index 0. `soft_nms_sigma` > 0 switches to Gaussian
  soft-NMS (returned scores are then the decayed ones).
  """
  _check_iou_threshold(iou_threshold)
  _check_nonnegative_int(max_output, "max_output")
  _check_sigma(soft_nms_sigma, "soft_nms_sigma")
  with tf.name_scope("batch_class_agnostic_nms"):
    scores = tf.convert_to_tensor(scores)
    segments = tf.cast(tf.convert_to_tensor(segments), scores.dtype)
    num_valid = tf.cast(tf.convert_to_tensor(num_valid), tf.int32)
    _check_rank(segments, 3, "segments", "[B, N, 2]")
    _check_last_dim(segments, 2, "segments", "[B, N, 2]")
    _check_rank(scores, 2, "scores", "[B, N]")
    _check_rank(num_valid, 1, "num_valid", "[B]")
    scores = _mask_invalid_scores(scores, num_valid)

    def _single(args):
      item_segments, item_scores = args
      indices, kept_scores, count = _nms_kernel(item_segments, item_scores, max_output,
                                                iou_threshold, score_threshold,
                                                float(soft_nms_sigma))
      kept_segments = _gather_with_dummy(item_segments, indices)
      return kept_segments, kept_scores, indices, count

    kept_segments, kept_scores, indices, count = tf.map_fn(
        _single, (segments, scores),
        fn_output_signature=(
            tf.TensorSpec([max_output, 2], scores.dtype),
            tf.TensorSpec([max_output], scores.dtype),
            tf.TensorSpec([max_output], tf.int32),
            tf.TensorSpec([], tf.int32)))
    # The kernel already pads indices/scores with 0; zero the gathered padded segments too.
    valid = tf.sequence_mask(count, max_output)
    kept_segments = tf.where(valid[..., None], kept_segments, tf.zeros_like(kept_segments))
    return kept_segments, kept_scores, indices, count


def _combined_multiclass_nms(segments, scores, score_threshold, iou_threshold, max_per_class,
                             max_total):
  """Hard-NMS path of batch_multiclass_nms: one CombinedNonMaxSuppression kernel.

  The kernel runs every (video, class) problem and the merge in C++, instead of one NMS per
  (video, class) in a graph loop (whose per-iteration cost dominated post-processing, and
  grew with the batch). Same greedy rule as the V5 kernel (suppress tIoU > threshold, keep
  scores > score_threshold); the merge's ties are put back in batch_multiclass_nms's order
  (lower class first) by a stable re-sort on (score, class).
  """
  num_classes = tf.shape(scores)[2]
  # -inf marks padding (and the threshold may be -inf): give the kernel finite values only,
  # padding strictly below a threshold that every finite score passes when it was -inf.
  # (x - 1 - |x| < x holds in float32 for any finite x; `low` <= 0 is finite even for N = 0.)
  finite = tf.math.is_finite(scores)
  low = tf.minimum(tf.reduce_min(tf.where(finite, scores, tf.zeros_like(scores))), 0.0)
  threshold = tf.cast(score_threshold, scores.dtype)
  threshold = tf.where(tf.math.is_finite(threshold), threshold, low - 1.0 - tf.abs(low))
  lowest = tf.minimum(threshold, low)
  finite_scores = tf.where(finite, scores, lowest - 1.0 - tf.abs(lowest))
  boxes, kept_scores, kept_classes, count = tf.raw_ops.CombinedNonMaxSuppression(
      boxes=segments_to_boxes(segments),
      scores=finite_scores,
      max_output_size_per_class=tf.constant(max_per_class, tf.int32),
      max_total_size=tf.constant(max_total, tf.int32),
      iou_threshold=tf.constant(iou_threshold, tf.float32),
      score_threshold=tf.cast(threshold, tf.float32),
      pad_per_class=False, clip_boxes=False)
  classes = tf.cast(kept_classes, tf.int32)
  valid = tf.sequence_mask(count, max_total)
  # Stable order: decreasing score, then increasing class (ties between classes only arise
  # from exactly equal scores).
  key_order = tf.argsort(tf.where(valid, classes, num_classes), axis=1, stable=True)
  by_class = lambda x: tf.gather(x, key_order, batch_dims=1)
  order = tf.argsort(by_class(tf.where(valid, kept_scores, -math.inf)), axis=1,
                     direction="DESCENDING", stable=True)
  by_score = lambda x: tf.gather(by_class(x), order, batch_dims=1)
  segments_out = tf.stack([by_score(boxes[..., 1]), by_score(boxes[..., 3])], axis=-1)
  scores_out = by_score(kept_scores)
  classes_out = by_score(classes)
  return {
      "detection_segments": tf.where(valid[..., None], segments_out,
                                     tf.zeros_like(segments_out)),
      "detection_scores": tf.where(valid, scores_out, tf.zeros_like(scores_out)),
      "detection_classes": tf.where(valid, classes_out, tf.zeros_like(classes_out)),
      "num_detections": count,
  }


def batch_multiclass_nms(segments, scores, num_valid, score_threshold, iou_threshold,
                         max_per_class, max_total, soft_nms_sigma=0.0):
  """Per-class NMS then top-`max_total` merge for a batch of videos.

  Args:
    segments: [B, N, C, 2] class-specific or [B, N, 2] shared segments.
    scores: [B, N, C] class scores, no background column.
    num_valid: [B] number of valid entries along N (the rest is padding).
    score_threshold: candidates need a score strictly above this.
    iou_threshold: per-class suppression threshold (strictly greater tIoU suppresses).
    max_per_class: Python int, kept segments per class and video.
    max_total: Python int, detections per video after merging classes.
    soft_nms_sigma: > 0 switches to Gaussian soft-NMS exp(-tIoU^2 / sigma) (scores are
      then the decayed ones; use iou_threshold=1.0 for pure Gaussian decay).

  Returns:
    dict with detection_segments [B, max_total, 2], detection_scores [B, max_total],
    detection_classes [B, max_total] int32 and num_detections [B] int32. Detections are
    sorted by decreasing score (ties: lower class index, then per-class NMS order);
    padded entries are all zeros. detection_classes are 0-based column indices of
    `scores` (column k holds label-map id k + 1, so callers reporting ids add 1).
  """
  _check_iou_threshold(iou_threshold)
  _check_nonnegative_int(max_per_class, "max_per_class")
  _check_nonnegative_int(max_total, "max_total")
  _check_sigma(soft_nms_sigma, "soft_nms_sigma")
  with tf.name_scope("batch_multiclass_nms"):
    scores = tf.convert_to_tensor(scores)
    segments = tf.cast(tf.convert_to_tensor(segments), scores.dtype)
    num_valid = tf.cast(tf.convert_to_tensor(num_valid), tf.int32)
    _check_rank(scores, 3, "scores", "[B, N, C]")
    _check_rank(num_valid, 1, "num_valid", "[B]")
    _check_last_dim(segments, 2, "segments", "[B, N, C, 2] or [B, N, 2]")
    if segments.shape.rank == 3:
      segments = segments[:, :, None, :]  # Shared across classes.
    elif segments.shape.rank != 4:
      raise ValueError(
          f"segments must have shape [B, N, C, 2] or [B, N, 2], got shape {segments.shape}")

    batch_size = tf.shape(scores)[0]
    num_entries = tf.shape(scores)[1]
    num_classes = tf.shape(scores)[2]
    scores = _mask_invalid_scores(scores, num_valid)
    if not soft_nms_sigma:
      return _combined_multiclass_nms(segments, scores, score_threshold, iou_threshold,
                                      max_per_class, max_total)
    segments = tf.broadcast_to(segments, tf.stack([batch_size, num_entries, num_classes, 2]))

    # One NMS problem per (video, class): [B * C, N, ...].
    flat_segments = tf.reshape(tf.transpose(segments, [0, 2, 1, 3]), [-1, num_entries, 2])
    flat_scores = tf.reshape(tf.transpose(scores, [0, 2, 1]), [-1, num_entries])

    def _single(args):
      item_segments, item_scores = args
      indices, kept_scores, count = _nms_kernel(item_segments, item_scores, max_per_class,
                                                iou_threshold, score_threshold,
                                                float(soft_nms_sigma))
      return _gather_with_dummy(item_segments, indices), kept_scores, count

    kept_segments, kept_scores, counts = tf.map_fn(
        _single, (flat_segments, flat_scores),
        fn_output_signature=(
            tf.TensorSpec([max_per_class, 2], scores.dtype),
            tf.TensorSpec([max_per_class], scores.dtype),
            tf.TensorSpec([], tf.int32)))

    # Merge classes: candidates [B, C * max_per_class], padded ones at -inf.
    kept_valid = tf.sequence_mask(counts, max_per_class)
    candidate_scores = tf.where(kept_valid, kept_scores,
                                tf.cast(-math.inf, scores.dtype))
    candidate_scores = tf.reshape(candidate_scores, [batch_size, -1])
    candidate_segments = tf.reshape(kept_segments, [batch_size, -1, 2])
    candidate_classes = tf.reshape(
        tf.tile(tf.range(num_classes)[:, None], [1, max_per_class]), [-1])
    candidate_classes = tf.tile(candidate_classes[None], [batch_size, 1])
    # top_k needs at least max_total candidates: pad with -inf entries (static size).
    candidate_scores = tf.pad(candidate_scores, [[0, 0], [0, max_total]],
                              constant_values=-math.inf)
    candidate_segments = tf.pad(candidate_segments, [[0, 0], [0, max_total], [0, 0]])
    candidate_classes = tf.pad(candidate_classes, [[0, 0], [0, max_total]])

    # top_k is stable for ties (lower index first): lower class, then per-class order.
    top_scores, top_indices = tf.math.top_k(candidate_scores, k=max_total, sorted=True)
    top_segments = tf.gather(candidate_segments, top_indices, batch_dims=1)
    top_classes = tf.gather(candidate_classes, top_indices, batch_dims=1)

    total = tf.reduce_sum(tf.reshape(counts, [batch_size, -1]), axis=1)
    num_detections = tf.minimum(total, max_total)
    valid = tf.sequence_mask(num_detections, max_total)
    return {
        "detection_segments": tf.where(valid[..., None], top_segments,
                                       tf.zeros_like(top_segments)),
        "detection_scores": tf.where(valid, top_scores, tf.zeros_like(top_scores)),
        "detection_classes": tf.where(valid, top_classes, tf.zeros_like(top_classes)),
        "num_detections": num_detections,
    }
