"""Tests for tal_tf.core.target_assigner against a loop-based numpy reference."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tal_tf.core import segment_coder
from tal_tf.core import target_assigner
from tal_tf.matchers import argmax_matcher
from tal_tf.matchers import three_way_matcher


def np_tiou(a, b):
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = max(0.0, a[1] - a[0]) + max(0.0, b[1] - b[0]) - inter
  return inter / union if union > 0 else 0.0


def np_encode(seg, anchor):
  c, l = (seg[0] + seg[1]) / 2, seg[1] - seg[0]
  ca, la = (anchor[0] + anchor[1]) / 2, anchor[1] - anchor[0]
  return [10.0 * (c - ca) / la, 5.0 * math.log(l / la)]


def np_assign(anchors, gt, labels, num_gt, hi=0.7, lo=0.3):
  """Reference for an ArgMaxMatcher(hi, lo) without forcing; anchors [B, N, 2]."""
  b_size, n = anchors.shape[:2]
  cls = np.zeros((b_size, n), np.int64)
  reg = np.zeros((b_size, n, 2))
  cls_w = np.ones((b_size, n))
  reg_w = np.zeros((b_size, n))
  for b in range(b_size):
    for i in range(n):
      ious = [np_tiou(anchors[b, i], gt[b, j]) for j in range(num_gt[b])]
      best = max(ious) if ious else 0.0
      if best > hi:
        j = int(np.argmax(ious))
        cls[b, i] = labels[b, j]
        reg[b, i] = np_encode(gt[b, j], anchors[b, i])
        reg_w[b, i] = 1.0
      elif best >= lo:
        cls_w[b, i] = 0.0
  return cls, reg, cls_w, reg_w


def make_case():
  anchors = np.array([[t + 0.5 - s / 2, t + 0.5 + s / 2] for t in range(12) for s in (1, 2, 4, 8)],
                     np.float32)
  gt = np.array([[[1.0, 3.0], [5.0, 9.0], [0.0, 0.0]],
                 [[2.0, 10.0], [0.0, 0.0], [0.0, 0.0]],
                 [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]], np.float32)
  labels = np.array([[2, 3, 0], [1, 0, 0], [0, 0, 0]], np.int32)
  num_gt = np.array([2, 1, 0], np.int32)
  return anchors, gt, labels, num_gt


def test_assign_matches_reference_shared_and_batched_anchors():
  anchors, gt, labels, num_gt = make_case()
  assigner = target_assigner.TargetAssigner(argmax_matcher.ArgMaxMatcher(0.7, 0.3),
                                            segment_coder.CenterLengthCoder())
  batched = np.broadcast_to(anchors, (3,) + anchors.shape).copy()
  batched[1] += 0.25  # different anchors per batch element
  for a, a_batched in ((anchors, np.broadcast_to(anchors, batched.shape)), (batched, batched)):
    out = assigner.assign(a, gt, labels, num_gt)
    cls, reg, cls_w, reg_w = np_assign(a_batched, gt, labels, num_gt)
    assert reg_w.sum() > 0 and (cls_w == 0).sum() > 0  # the case exercises every label
    np.testing.assert_array_equal(out["cls_targets"].numpy(), cls)
    np.testing.assert_allclose(out["reg_targets"].numpy(), reg, atol=1e-4)
    np.testing.assert_array_equal(out["cls_weights"].numpy(), cls_w)
    np.testing.assert_array_equal(out["reg_weights"].numpy(), reg_w)
    assert out["match"].dtype == tf.int32
    np.testing.assert_array_equal(out["match"].numpy() >= 0, reg_w > 0)
    assert out["cls_targets"].dtype == tf.int32


def test_forced_match_gives_every_ground_truth_a_positive():
  anchors = np.array([[0.0, 1.0], [0.0, 4.0], [4.0, 8.0]], np.float32)
  # gt 0 overlaps anchor 0 with tIoU 0.2 and anchor 1 with 0.5 (its best); gt 1 is anchor 2.
  gt = np.array([[[0.5, 2.5], [4.0, 8.0]]], np.float32)
  assigner = target_assigner.TargetAssigner(
      argmax_matcher.ArgMaxMatcher(**argmax_matcher.TAL_NET_PROPOSAL),
      segment_coder.CenterLengthCoder())
  out = assigner.assign(anchors, gt, [[1, 1]], [2])
  np.testing.assert_array_equal(out["match"].numpy(), [[-1, 0, 1]])
  np.testing.assert_array_equal(out["cls_targets"].numpy(), [[0, 1, 1]])
  np.testing.assert_allclose(out["reg_targets"].numpy()[0, 1],
                             np_encode([0.5, 2.5], [0.0, 4.0]), atol=1e-5)


def test_anchor_valid_excludes_anchors_from_matching():
  anchors = np.array([[0.0, 4.0], [0.0, 2.0], [6.0, 8.0]], np.float32)
  gt = np.array([[[0.0, 4.0]]], np.float32)
  assigner = target_assigner.TargetAssigner(
      argmax_matcher.ArgMaxMatcher(0.7, 0.3, force_match_for_each_column=True),
      segment_coder.CenterLengthCoder())
  out = assigner.assign(anchors, gt, [[4]], [1], anchor_valid=np.array([False, True, True]))
  # The perfect anchor 0 is invalid, so anchor 1 (tIoU 0.5) is force-matched instead.
  np.testing.assert_array_equal(out["match"].numpy(), [[-2, 0, -1]])
  np.testing.assert_array_equal(out["cls_weights"].numpy(), [[0.0, 1.0, 1.0]])
  np.testing.assert_array_equal(out["cls_targets"].numpy(), [[0, 4, 0]])


def test_three_way_matcher_outputs_incomplete_targets():
  anchors = np.array([[0.0, 10.0], [0.0, 5.0], [8.0, 12.0], [20.0, 22.0]], np.float32)
  gt = np.array([[[0.0, 10.0]]], np.float32)  # tIoUs 1.0, 0.5, 2/12, 0
  assigner = target_assigner.TargetAssigner(three_way_matcher.ThreeWayMatcher(),
                                            segment_coder.CenterLengthCoder())
  out = assigner.assign(anchors, gt, [[3]], [1])
  np.testing.assert_array_equal(out["match"].numpy(), [[0, -2, -2, -1]])
  np.testing.assert_array_equal(out["cls_targets"].numpy(), [[3, 0, 0, 0]])
  np.testing.assert_array_equal(out["reg_weights"].numpy(), [[1, 0, 0, 0]])
  np.testing.assert_array_equal(out["incomplete_weights"].numpy(), [[0, 1, 0, 0]])
  np.testing.assert_array_equal(out["incomplete_match"].numpy(), [[-1, 0, -1, -1]])
  np.testing.assert_allclose(out["reg_targets"].numpy()[0],
                             [[0, 0], np_encode([0, 10], [0, 5]), [0, 0], [0, 0]], atol=1e-5)


def test_degenerate_inputs_give_finite_targets_and_work_in_tf_function():
  assigner = target_assigner.TargetAssigner(
      argmax_matcher.ArgMaxMatcher(0.7, 0.3, force_match_for_each_column=True),
      segment_coder.CenterLengthCoder())
  fn = tf.function(assigner.assign, input_signature=[
      tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, None, 2], tf.float32),
      tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)])
  anchors = np.array([[0.0, 0.0], [1.0, 3.0], [2.0, 2.0]], np.float32)
  gt = np.array([[[1.0, 1.0], [1.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
  out = fn(anchors, gt, np.array([[1, 2], [0, 0]], np.int32), np.array([2, 0], np.int32))
  for value in out.values():
    assert np.all(np.isfinite(value.numpy()))
  np.testing.assert_array_equal(out["match"].numpy(), [[-1, 1, -1], [-1, -1, -1]])
  out = fn(anchors, np.zeros((2, 0, 2), np.float32), np.zeros((2, 0), np.int32),
           np.zeros([2], np.int32))
  np.testing.assert_array_equal(out["match"].numpy(), np.full((2, 3), -1))


def test_matched_similarity_without_coder_matches_reference():
  anchors, gt, labels, num_gt = make_case()
  assigner = target_assigner.TargetAssigner(argmax_matcher.ArgMaxMatcher(0.7, 0.3), None)
  out = assigner.assign(anchors, gt, labels, num_gt)
  assert "reg_targets" not in out and "reg_weights" not in out
  cls, _, cls_w, _ = np_assign(np.broadcast_to(anchors, (3,) + anchors.shape), gt, labels,
                               num_gt)
  np.testing.assert_array_equal(out["cls_targets"].numpy(), cls)
  np.testing.assert_array_equal(out["cls_weights"].numpy(), cls_w)
  want = np.zeros(cls.shape)
  for b in range(3):
    for i in range(len(anchors)):
      ious = [np_tiou(anchors[i], gt[b, j]) for j in range(num_gt[b])]
      if ious and max(ious) > 0.7:
        want[b, i] = max(ious)
  assert (want > 0).sum() >= 3  # the case has positives to check
  np.testing.assert_allclose(out["matched_similarity"].numpy(), want, rtol=1e-6)


def test_bad_arguments():
  coder = segment_coder.CenterLengthCoder()
  m = argmax_matcher.ArgMaxMatcher(0.7, 0.3)
  with pytest.raises(ValueError, match="similarity"):
    target_assigner.TargetAssigner(m, coder, similarity="iou2d")
  with pytest.raises(ValueError, match="matcher"):
    target_assigner.TargetAssigner("argmax", coder)
  assigner = target_assigner.TargetAssigner(m, coder)
  anchors, gt, labels, num_gt = make_case()
  with pytest.raises(ValueError, match="gt_segments"):
    assigner.assign(anchors, gt[0], labels, num_gt)
  with pytest.raises(ValueError, match="gt_labels"):
    assigner.assign(anchors, gt, labels.astype(np.float32), num_gt)
  with pytest.raises(ValueError, match="num_gt"):
    assigner.assign(anchors, gt, labels, num_gt[:, None])
  with pytest.raises(ValueError, match="anchors"):
    assigner.assign(anchors[:, :1], gt, labels, num_gt)
