"""S-CNN window labelling (Sec. 3.2) and background sampling: hand-worked cases and a numpy
reference written from the paper's wording."""
import numpy as np
import pytest
import tensorflow as tf

from tal_tf.anchor_generators import sliding_window_anchor_generator
from tal_tf.core import background_sampler
from tal_tf.core import target_assigner
from tal_tf.core import window_labeling
from tal_tf.matchers import argmax_matcher


def scnn_assigner():
  return target_assigner.TargetAssigner(
      argmax_matcher.ArgMaxMatcher(**argmax_matcher.S_CNN_PROPOSAL), None)


def np_tiou(a, b):
  inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
  union = (a[1] - a[0]) + (b[1] - b[0]) - inter
  return inter / union if union > 0 else 0.0


def np_label(windows, num_steps, gt, labels, tol=1.0):
  """Sec. 3.2 literally, for one video: windows [N, 2] sliding, gt [M, 2], labels [M]."""
  n = len(windows)
  out_labels = np.full(n + 1, -1)
  out_v = np.zeros(n + 1)
  m = len(gt)
  if m >= 1 and all(g[0] <= tol and g[1] >= num_steps - tol for g in gt) and num_steps > 0:
    out_labels[n] = labels[0]  # trimmed clip: the whole clip, v = 1
    out_v[n] = 1.0
    return out_labels, out_v
  valid = [w[1] <= num_steps + 1e-4 for w in windows]
  iou = np.array([[np_tiou(w, g) for g in gt] for w in windows]).reshape(n, m)
  for i in range(n):
    if not valid[i]:
      continue
    if m == 0:
      out_labels[i] = 0
      continue
    j = int(np.argmax(iou[i]))
    if iou[i, j] > 0.7:          # (1) highest IoU larger than 0.7: positive
      out_labels[i], out_v[i] = labels[j], iou[i, j]
    elif iou[i, j] < 0.3:        # (2) highest IoU smaller than 0.3: background
      out_labels[i] = 0
  for j in range(m):             # ground truth without any segment above 0.7
    col = np.where(valid, iou[:, j], -1.0)
    if n == 0 or col.max() > 0.7:
      continue
    i = int(np.argmax(col))
    if col[i] > 0.5:
      # A row forced by two ground truths goes to the one it overlaps most.
      if out_v[i] < col[i] or out_labels[i] <= 0:
        out_labels[i], out_v[i] = labels[j], col[i]
  return out_labels, out_v


def run(sliding, num_steps, gt, labels, num_gt):
  windows, sliding_valid = window_labeling.batch_windows(
      tf.constant(sliding, tf.float32), tf.constant(num_steps, tf.int32))
  out = window_labeling.label_windows(windows, sliding_valid, tf.constant(gt, tf.float32),
                                      tf.constant(labels, tf.int32),
                                      tf.constant(num_gt, tf.int32),
                                      tf.constant(num_steps, tf.int32), scnn_assigner())
  return windows.numpy(), out["labels"].numpy(), out["overlaps"].numpy(), out["trimmed"].numpy()


def test_hand_worked_case_untrimmed_trimmed_and_padded():
  # Windows of 8 and 16 steps at 50% overlap over a padded length of 40.
  sliding = [[s, s + 8] for s in range(0, 33, 4)] + [[s, s + 16] for s in range(0, 25, 8)]
  gt = [[[4, 12], [21, 31], [33, 36]],   # video 0: untrimmed, 40 steps
        [[0, 10], [0, 0], [0, 0]],       # video 1: trimmed clip of 10 steps
        [[2, 10], [0, 0], [0, 0]]]       # video 2: untrimmed, 20 steps (padding after)
  labels = [[2, 5, 7], [3, 0, 0], [4, 0, 0]]
  windows, got, v, trimmed = run(sliding, [40, 10, 20], gt, labels, [3, 1, 1])
  np.testing.assert_array_equal(trimmed, [False, True, False])
  idx = {tuple(w): i for i, w in enumerate(sliding)}
  # Video 0. gt [4, 12]: window [4, 12] has tIoU 1 -> positive class 2, v = 1; [0, 8] and
  # [8, 16] have 4/12 = 0.33 -> ignored; [12, 20] has 0 -> background.
  assert got[0, idx[(4, 12)]] == 2 and v[0, idx[(4, 12)]] == pytest.approx(1.0)
  assert got[0, idx[(0, 8)]] == -1 and got[0, idx[(8, 16)]] == -1
  assert got[0, idx[(12, 20)]] == 0
  # gt [21, 31] (10 steps): best windows [20, 28] and [24, 32] at 7/11 = 0.636 (< 0.7), the
  # first wins the tie -> forced positive class 5 (0.636 > 0.5) with v = 0.636; the other
  # stays ignored; [16, 32] at 10/16 = 0.625 ignored.
  assert got[0, idx[(20, 28)]] == 5 and v[0, idx[(20, 28)]] == pytest.approx(7 / 11)
  assert got[0, idx[(24, 32)]] == -1 and got[0, idx[(16, 32)]] == -1
  # gt [33, 36]: best window [32, 40] at 3/8 = 0.375 <= 0.5 -> not forced: ignored.
  assert got[0, idx[(32, 40)]] == -1
  assert got[0, -1] == -1  # the whole-video window is unused for an untrimmed video
  # Video 1 (trimmed): only the whole clip [0, 10], positive with class 3 and v = 1.
  np.testing.assert_array_equal(windows[1, -1], [0, 10])
  assert got[1, -1] == 3 and v[1, -1] == 1.0
  assert (got[1, :-1] == -1).all()
  # Video 2: windows past step 20 are padding (ignored); [0, 8] has 6/10 = 0.6 with gt
  # [2, 10] and is its best: forced positive (class 4); [4, 12] 6/10 tie, later -> ignored.
  assert (got[2, [i for i, w in enumerate(sliding) if w[1] > 20]] == -1).all()
  assert got[2, idx[(0, 8)]] == 4 and v[2, idx[(0, 8)]] == pytest.approx(0.6)
  assert got[2, idx[(4, 12)]] == -1 and got[2, idx[(12, 20)]] == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_numpy_reference_on_random_videos(seed):
  rng = np.random.default_rng(seed)
  gen = sliding_window_anchor_generator.SlidingWindowAnchorGenerator(
      window_lengths=(16, 32, 64, 128), overlap=0.75, frames_per_step=8)
  t = 48
  sliding = gen.generate(t).numpy()
  b, g = 5, 4
  num_steps = rng.integers(1, t + 1, size=b)
  num_gt = rng.integers(0, g + 1, size=b)
  gt = np.zeros((b, g, 2), np.float32)
  labels = np.zeros((b, g), np.int32)
  for i in range(b):
    for j in range(num_gt[i]):
      s = rng.uniform(0, num_steps[i] - 1)
      gt[i, j] = [s, min(num_steps[i], s + rng.uniform(1, 16))]
      labels[i, j] = rng.integers(1, 6)
  num_steps[0], num_gt[0], gt[0, 0], labels[0, 0] = 12, 1, [0, 12], 4   # a trimmed clip
  num_steps[1], num_gt[1], gt[1, :2], labels[1, :2] = 9, 2, [[0, 9.5], [0.4, 8.2]], [2, 3]
  _, got, v, _ = run(sliding, num_steps, gt, labels, num_gt)
  for i in range(b):
    want, want_v = np_label(sliding, num_steps[i], gt[i, :num_gt[i]], labels[i, :num_gt[i]])
    np.testing.assert_array_equal(got[i], want, err_msg=f"video {i}")
    np.testing.assert_allclose(v[i], want_v, rtol=1e-5, atol=1e-6, err_msg=f"video {i}")
  assert (got > 0).sum() >= 3  # the random case does exercise positives


def test_empty_video_and_no_ground_truth():
  sliding = np.zeros((0, 2), np.float32)
  _, got, v, trimmed = run(sliding, [0, 5], np.zeros((2, 0, 2)), np.zeros((2, 0)), [0, 0])
  assert got.shape == (2, 1) and (got == -1).all() and not trimmed.any() and (v == 0).all()


def test_background_sampler_counts_and_randomness():
  positive = np.zeros((2, 50), bool)
  positive[0, :3] = True
  positive[1, 10:15] = True                       # 8 positives in the batch
  background = ~positive
  background[1, 40:] = False                      # 82 backgrounds available
  sampler = background_sampler.ProportionalBackgroundSampler(1.0)
  for seed in range(3):
    s = sampler.subsample(tf.constant(positive), tf.constant(background), seed=seed).numpy()
    assert (s & positive).sum() == 8               # every positive
    assert (s & ~positive).sum() == 8              # as many backgrounds
    assert not (s & ~positive & ~background).any()  # only eligible backgrounds
  picks = [sampler.subsample(tf.constant(positive), tf.constant(background), seed=k).numpy()
           for k in range(2)]
  assert (picks[0] != picks[1]).any()
  # Ratio 1/K with stochastic rounding: 8 / 20 = 0.4 backgrounds on average.
  small = background_sampler.ProportionalBackgroundSampler(1.0 / 20)
  counts = [int((small.subsample(tf.constant(positive), tf.constant(background),
                                 seed=k).numpy() & background).sum()) for k in range(200)]
  assert set(counts) <= {0, 1}
  assert 0.3 < np.mean(counts) < 0.5
  # More asked than available: all backgrounds.
  many = background_sampler.ProportionalBackgroundSampler(20.0)
  s = many.subsample(tf.constant(positive), tf.constant(background), seed=0).numpy()
  assert (s & background).sum() == background.sum()
  with pytest.raises(ValueError, match="background_ratio"):
    background_sampler.ProportionalBackgroundSampler(-1)
