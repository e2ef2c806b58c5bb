"""S-CNN's training windows (Sec. 3.1-3.2): sliding windows plus a whole-clip window per video,
trimmed-clip detection, window labels and matched overlaps, batched.

Every video of a padded batch gets the same candidate windows: the sliding windows generated
for the padded length T (valid where they end inside the video) followed by one whole-video
window [0, num_steps]. The whole-video window serves trimmed clips: S-CNN trains on "a
segment s of 16 frames" sampled uniformly from a trimmed video, i.e. the whole clip, positive
with overlap v = 1. The converter stores a trimmed clip as one ground-truth segment covering
the whole video (one per label), which is how a trimmed clip is recognized here. For a
trimmed clip only the whole-video window is used; for an untrimmed video only the sliding
windows.

Labels (Sec. 3.2, via a target assigner with the S-CNN matcher): positive with the class of the
ground truth of highest tIoU if that tIoU > 0.7; the best window of a ground truth without any
window above 0.7 is positive if its tIoU > 0.5; background if the highest tIoU < 0.3; other
windows (and invalid ones) are ignored.
"""
import tensorflow as tf

IGNORED = -1


def batch_windows(sliding_windows, num_steps):
  """Per-video candidate windows of a padded batch.

  Args:
    sliding_windows: [N, 2] float32 windows (feature steps) for the padded length.
    num_steps: [B] int32 valid lengths.
  Returns:
    windows [B, N + 1, 2] (the last is the whole video [0, num_steps]) and sliding_valid
    [B, N + 1] bool (sliding windows that end inside the video; False for the last).
  """
  with tf.name_scope("batch_windows"):
    length = tf.cast(num_steps, tf.float32)
    batch = tf.shape(length)[0]
    n = tf.shape(sliding_windows)[0]
    sliding = tf.broadcast_to(sliding_windows[tf.newaxis], tf.stack([batch, n, 2]))
    whole = tf.stack([tf.zeros_like(length), length], axis=-1)[:, tf.newaxis, :]
    windows = tf.concat([sliding, whole], axis=1)
    # A small tolerance keeps windows that end exactly at the last step (float rounding of
    # frames / frames_per_step).
    inside = sliding[..., 1] <= length[:, tf.newaxis] + 1e-4
    sliding_valid = tf.concat([inside, tf.zeros([batch, 1], tf.bool)], axis=1)
    return windows, sliding_valid


def trimmed_clips(gt_segments, num_gt, num_steps, tolerance=1.0):
  """[B] bool: videos whose ground truths (at least one) all cover [0, num_steps] within
  tolerance (the converter writes a trimmed clip as [0, duration] per label).

  gt_segments [B, G, 2] feature steps, num_gt [B], num_steps [B]. The tolerance (steps)
  absorbs the rounding of second-based annotations to feature steps. A clip with several
  labels trains its whole-clip window with the first.
  """
  with tf.name_scope("trimmed_clips"):
    length = tf.cast(num_steps, tf.float32)[:, tf.newaxis]
    segments = tf.cast(gt_segments, tf.float32)
    valid = tf.sequence_mask(num_gt, tf.shape(segments)[1])
    covers = tf.logical_and(segments[..., 0] <= tolerance,
                            segments[..., 1] >= length - tolerance)
    all_cover = tf.reduce_all(tf.logical_or(covers, tf.logical_not(valid)), axis=1)
    return tf.logical_and(tf.logical_and(num_gt > 0, all_cover), length[:, 0] > 0)


def label_windows(windows, sliding_valid, gt_segments, gt_labels, num_gt, num_steps,
                  target_assigner, trimmed_tolerance=1.0):
  """Labels and overlaps of candidate windows (see module docstring).

  Args:
    windows: [B, W, 2] from `batch_windows` (last = whole video); sliding_valid [B, W].
    gt_segments [B, G, 2] (feature steps), gt_labels [B, G] ids (0 pad), num_gt [B],
    num_steps [B].
    target_assigner: TargetAssigner with the S-CNN matcher (ArgMaxMatcher S_CNN_PROPOSAL).
  Returns:
    dict with labels [B, W] int32 (class id > 0, 0 background, -1 ignored / unused window),
    overlaps [B, W] float32 (v: tIoU with the matched ground truth, 1 for a trimmed clip's
    window, 0 elsewhere), trimmed [B] bool.
  """
  with tf.name_scope("label_windows"):
    gt_labels = tf.cast(gt_labels, tf.int32)
    num_gt = tf.cast(num_gt, tf.int32)
    trimmed = trimmed_clips(gt_segments, num_gt, num_steps, trimmed_tolerance)
    width = tf.shape(windows)[1]
    is_whole = tf.equal(tf.range(width), width - 1)[tf.newaxis, :]             # [1, W]
    valid = tf.logical_and(sliding_valid, tf.logical_not(trimmed)[:, tf.newaxis])
    targets = target_assigner.assign(windows, gt_segments, gt_labels, num_gt,
                                     anchor_valid=valid)
    match = targets["match"]
    labels = tf.where(match >= 0, targets["cls_targets"],
                      tf.where(match == -1, 0, IGNORED))
    overlaps = targets["matched_similarity"]
    whole_positive = tf.logical_and(is_whole, trimmed[:, tf.newaxis])            # [B, W]
    first_label = tf.pad(gt_labels, [[0, 0], [0, 1]])[:, :1]
    labels = tf.where(whole_positive, tf.broadcast_to(first_label, tf.shape(labels)), labels)
    overlaps = tf.where(whole_positive, tf.ones_like(overlaps), overlaps)
    return dict(labels=labels, overlaps=overlaps, trimmed=trimmed)
