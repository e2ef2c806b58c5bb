"""Assigns classification and regression targets to anchors from batched ground truth."""
import tensorflow as tf

from tal_tf.core import segment_coder as segment_coder_lib
from tal_tf.core import segment_ops
from tal_tf.matchers import matcher as matcher_lib

_SIMILARITIES = {"tiou": segment_ops.pairwise_tiou}


class TargetAssigner:
  """similarity(anchors, ground truth) -> matcher -> segment coder, fully batched.

  Output dict of `assign`:
    cls_targets [B, N] int32: matched ground-truth label, 0 for background / ignored rows
      (class-agnostic proposals: pass gt_labels of ones).
    reg_targets [B, N, code_size] float32: encoded matched ground truth, zeros elsewhere
      (with a three-way matcher, incomplete rows are encoded too, see below).
    cls_weights [B, N] float32: 0 for ignored rows (and invalid anchors), 1 otherwise.
    reg_weights [B, N] float32: 1 for positives only.
    match [B, N] int32: the match results (>= 0 gt index, -1 negative, -2 ignored).
    matched_similarity [B, N] float32: similarity (tIoU) of each positive row with its
      matched ground truth, 0 elsewhere (S-CNN's overlap v).
  Without a segment coder (segment_coder=None, classification-only models such as S-CNN)
  reg_targets and reg_weights are left out.
  With a matcher that labels incomplete rows (ThreeWayMatcher), also:
    incomplete_weights [B, N] float32: 1 for incomplete rows (their reg_targets are filled in,
      so reg_weights + incomplete_weights weighs ETP's refinement regression).
    incomplete_match [B, N] int32: ground-truth index of incomplete rows, -1 elsewhere.
  """

  def __init__(self, matcher, segment_coder, similarity="tiou"):
    """matcher: a Matcher; segment_coder: a SegmentCoder or None; similarity: 'tiou'."""
    if not isinstance(matcher, matcher_lib.Matcher):
      raise ValueError(f"matcher: expected a Matcher instance, got {matcher!r}")
    if (segment_coder is not None
        and not isinstance(segment_coder, segment_coder_lib.SegmentCoder)):
      raise ValueError(f"segment_coder: expected a SegmentCoder instance, got {segment_coder!r}")
    if similarity not in _SIMILARITIES:
      raise ValueError(
          f"similarity: unknown similarity {similarity!r}, expected one of "
          f"{sorted(_SIMILARITIES)}")
    self._matcher = matcher
    self._segment_coder = segment_coder
    self._similarity = _SIMILARITIES[similarity]

  @property
  def segment_coder(self):
    """The SegmentCoder used for reg_targets (decode predictions with it), or None."""
    return self._segment_coder

  @property
  def matcher(self):
    """The Matcher labelling anchors."""
    return self._matcher

  def assign(self, anchors, gt_segments, gt_labels, num_gt, anchor_valid=None):
    """Targets for anchors [N, 2] or [B, N, 2] from gt_segments [B, G, 2], gt_labels [B, G], num_gt [B].

    anchor_valid: optional bool [N] or [B, N]; invalid anchors (e.g. past a video's valid
    length) are never matched or force-matched, are ignored (match -2) and get zero weights.
    """
    with tf.name_scope("AssignTargets"):
      anchors = segment_ops._as_segments(anchors, "anchors", ranks=(2, 3))
      gt_segments = segment_ops._as_segments(gt_segments, "gt_segments", ranks=(3,))
      gt_labels = tf.convert_to_tensor(gt_labels, name="gt_labels")
      if gt_labels.shape.rank is not None and gt_labels.shape.rank != 2:
        raise ValueError(f"gt_labels: expected shape [B, G], got {gt_labels.shape}")
      if not gt_labels.dtype.is_integer:
        raise ValueError(f"gt_labels: expected integer label ids, got dtype {gt_labels.dtype}")
      gt_labels = tf.cast(gt_labels, tf.int32)
      num_gt = tf.convert_to_tensor(num_gt, name="num_gt")
      if num_gt.shape.rank is not None and num_gt.shape.rank != 1:
        raise ValueError(f"num_gt: expected shape [B], got {num_gt.shape}")
      num_gt = tf.cast(num_gt, tf.int32)

      batch = tf.shape(gt_segments)[0]
      if anchors.shape.rank == 2:
        anchors = tf.broadcast_to(anchors[tf.newaxis],
                                  tf.concat([[batch], tf.shape(anchors)], 0))
      num_anchors = tf.shape(anchors)[1]

      similarity = self._similarity(anchors, gt_segments)                # [B, N, G]
      valid = None
      if anchor_valid is not None:
        valid = tf.convert_to_tensor(anchor_valid, name="anchor_valid")
        if valid.dtype != tf.bool:
          raise ValueError(f"anchor_valid: expected a bool tensor, got dtype {valid.dtype}")
        if valid.shape.rank is not None and valid.shape.rank not in (1, 2):
          raise ValueError(f"anchor_valid: expected shape [N] or [B, N], got {valid.shape}")
        valid = tf.broadcast_to(valid, tf.stack([batch, num_anchors]))
        # Masking the rows keeps invalid anchors out of argmax and forced matching.
        similarity = tf.where(valid[:, :, tf.newaxis], similarity,
                              tf.constant(matcher_lib.MASKED_SIMILARITY, tf.float32))

      match = self._matcher.match(similarity, num_gt)
      if valid is not None:
        incomplete = match.incomplete_match_results
        if incomplete is not None:
          incomplete = tf.where(valid, incomplete, matcher_lib.UNMATCHED)
        match = matcher_lib.Match(
            tf.where(valid, match.match_results, matcher_lib.IGNORED), incomplete)

      positive = match.matched_column_indicator()
      cls_targets = match.gather_based_on_match(gt_labels, 0, 0)
      # Rows' similarity with their matched column (a zero column is appended so the gather
      # is defined for G = 0; only positive rows, which match a real column, keep the value).
      padded_similarity = tf.pad(similarity, [[0, 0], [0, 0], [0, 1]])
      matched_similarity = tf.where(
          positive,
          tf.gather(padded_similarity, tf.maximum(match.match_results, 0), batch_dims=2),
          tf.zeros_like(positive, tf.float32))
      outputs = {
          "cls_targets": cls_targets,
          "cls_weights": 1.0 - tf.cast(match.ignored_indicator(), tf.float32),
          "match": match.match_results,
          "matched_similarity": matched_similarity,
      }
      if match.has_incomplete:
        outputs["incomplete_weights"] = tf.cast(match.incomplete_indicator(), tf.float32)
        outputs["incomplete_match"] = match.incomplete_match_results
      if self._segment_coder is None:
        return outputs
      zeros2 = tf.zeros([2], tf.float32)
      matched_gt = match.gather_based_on_match(gt_segments, zeros2, zeros2)  # [B, N, 2]
      regress = positive
      if match.has_incomplete:
        incomplete_gt = match.gather_incomplete(gt_segments, zeros2)
        incomplete_indicator = match.incomplete_indicator()
        matched_gt = tf.where(incomplete_indicator[..., tf.newaxis], incomplete_gt, matched_gt)
        regress = tf.logical_or(positive, incomplete_indicator)
      # Rows without a ground truth encode a zero segment (finite thanks to the coder's
      # epsilon) and are then zeroed, so targets never carry NaN / inf into the loss.
      encoded = self._segment_coder.encode(matched_gt, anchors)
      reg_targets = tf.where(regress[..., tf.newaxis], encoded, tf.zeros_like(encoded))

      outputs["reg_targets"] = reg_targets
      outputs["reg_weights"] = tf.cast(positive, tf.float32)
      return outputs
