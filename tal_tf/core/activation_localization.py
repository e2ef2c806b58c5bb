"""Action instances from per-step class scores by thresholding (weakly supervised models).

Islam et al. (WACV 2020), Sec. 3.5: for each class c localized in a video, steps with score
y_i^c < 0.5 are dropped and the one-dimensional connected components of the remaining steps
are the instances (i_s, i_e, c, q) with q = max_{i_s <= i <= i_e} y_i^c + gamma * ybar^c,
gamma = 0.7, ybar^c the video-level score of c.

Which classes are localized is not stated in the paper. Here a class is localized when its
video score ybar^c reaches `video_score_threshold` (0.5 by default: the decision threshold of
the video-level binary classifiers the model is trained as), and, with `localize_top_class`,
the best-scoring class of every non-empty video always is (a localization benchmark's test
videos all contain an action; a video whose scores all fall short still gets its most likely
class's instances rather than none).

Everything is vectorized over the batch and classes with core TF ops (cumsum, segment max,
top_k), so it exports to a SavedModel for TF Serving; padded steps and T = 0 are handled.
"""

import math

import tensorflow as tf

from tal_tf.core import post_processing
from tal_tf.core.standard_fields import DetectionFields


def _runs(keep):
  """Connected components of keep [R, T] bool along T.

  Returns (starts [R, T] bool: first step of a run, run_id [R, T] int32: the run a kept
  step belongs to, counted over all rows in row-major order, num_runs scalar). Steps not
  kept get run_id = num_runs.
  """
  previous = tf.pad(keep[:, :-1], [[0, 0], [1, 0]])
  starts = keep & ~previous
  run_id = tf.cumsum(tf.reshape(tf.cast(starts, tf.int32), [-1])) - 1
  run_id = tf.reshape(run_id, tf.shape(keep))
  num_runs = tf.reduce_sum(tf.cast(starts, tf.int32))
  run_id = tf.where(keep, run_id, tf.fill(tf.shape(keep), num_runs))
  return starts, run_id, num_runs


def localize_by_thresholding(step_scores, num_steps, video_scores, feature_fps,
                             step_threshold=0.5, video_score_weight=0.7,
                             video_score_threshold=0.5, localize_top_class=True,
                             max_detections=100, nms_iou_threshold=None):
  """Thresholded connected components of per-step class scores -> detections dict.

  Args:
    step_scores: float [B, T, C] per-step class scores y = sigmoid(s) in [0, 1].
    num_steps: int [B] valid steps (the rest is padding).
    video_scores: float [B, C] video-level scores ybar (noisy-OR, Eq. 2-3).
    feature_fps: float [B] feature steps per second; step i covers [i, i + 1) / fps seconds.
    step_threshold: steps with y < this are dropped (paper: 0.5).
    video_score_weight: gamma of q = max y + gamma * ybar (paper: 0.7).
    video_score_threshold / localize_top_class: which classes are localized (module doc).
    max_detections: N, Python int: the N best-scoring instances per video are returned.
    nms_iou_threshold: None = no NMS (the paper's); else per-class NMS at this tIoU. The
      connected components of one class are disjoint, so within one pass it keeps every
      instance; it matters where instances of overlapping windows are pooled.
  Returns:
    dict of detection_segments [B, N, 2] seconds, detection_scores [B, N],
    detection_classes int32 [B, N] (label-map ids 1..C, 0 = padding), num_detections [B];
    sorted by decreasing score (ties: lower class id, then earlier start).
  """
  if isinstance(max_detections, bool) or int(max_detections) < 1:
    raise ValueError(f"max_detections must be >= 1, got {max_detections!r}")
  max_detections = int(max_detections)
  with tf.name_scope("localize_by_thresholding"):
    step_scores = tf.convert_to_tensor(step_scores, tf.float32)
    if step_scores.shape.rank is not None and step_scores.shape.rank != 3:
      raise ValueError(f"step_scores must have shape [B, T, C], got {step_scores.shape}")
    video_scores = tf.cast(video_scores, tf.float32)
    num_steps = tf.cast(num_steps, tf.int32)
    feature_fps = tf.cast(feature_fps, tf.float32)
    shape = tf.shape(step_scores)
    batch, length, classes = shape[0], shape[1], shape[2]

    selected = video_scores >= video_score_threshold  # [B, C]
    if localize_top_class:
      top = tf.one_hot(tf.argmax(video_scores, axis=-1, output_type=tf.int32), classes,
                       on_value=True, off_value=False)
      selected = selected | (top & (num_steps > 0)[:, None])
    valid = tf.sequence_mask(num_steps, length)  # [B, T]
    scores_bct = tf.transpose(step_scores, [0, 2, 1])  # [B, C, T]
    keep = ((scores_bct >= step_threshold) & valid[:, None, :] & selected[:, :, None])

    rows = tf.reshape(keep, tf.stack([batch * classes, length]))
    starts, run_id, num_runs = _runs(rows)
    flat_id = tf.reshape(run_id, [-1])
    flat_scores = tf.reshape(scores_bct, [-1])
    steps = tf.reshape(tf.broadcast_to(tf.range(length)[None, :], tf.shape(rows)), [-1])
    # One extra segment collects the steps that were not kept.
    run_max = tf.math.unsorted_segment_max(flat_scores, flat_id, num_runs + 1)
    run_end = tf.math.unsorted_segment_max(steps, flat_id, num_runs + 1)

    # Candidates sit at each run's first step: [B, C * T] (class-major, then time).
    start_id = tf.reshape(tf.where(starts, run_id, num_runs), [-1])
    best = tf.reshape(tf.gather(run_max, start_id), tf.shape(keep))
    score = best + float(video_score_weight) * video_scores[:, :, None]
    score = tf.where(tf.reshape(starts, tf.shape(keep)), score,
                     tf.cast(-math.inf, tf.float32))
    end = tf.reshape(tf.gather(run_end, start_id), tf.shape(keep))
    flat_candidates = tf.reshape(score, tf.stack([batch, classes * length]))
    flat_end = tf.reshape(end, tf.stack([batch, classes * length]))
    # top_k needs at least N candidates: pad with -inf ones.
    flat_candidates = tf.pad(flat_candidates, [[0, 0], [0, max_detections]],
                             constant_values=-math.inf)
    flat_end = tf.pad(flat_end, [[0, 0], [0, max_detections]])
    top_scores, index = tf.math.top_k(flat_candidates, k=max_detections, sorted=True)
    found = top_scores > -math.inf
    safe_length = tf.maximum(length, 1)
    class_index = index // safe_length
    start_step = index % safe_length
    end_step = tf.gather(flat_end, index, batch_dims=1)
    fps = feature_fps[:, None]
    segments = tf.stack([tf.cast(start_step, tf.float32) / fps,
                         tf.cast(end_step + 1, tf.float32) / fps], axis=-1)

    segments = tf.where(found[..., None], segments, tf.zeros_like(segments))
    detection_scores = tf.where(found, top_scores, tf.zeros_like(top_scores))
    detection_classes = tf.where(found, class_index + 1, tf.zeros_like(class_index))
    num_detections = tf.reduce_sum(tf.cast(found, tf.int32), axis=-1)
    if nms_iou_threshold is None:
      return {
          DetectionFields.detection_segments: segments,
          DetectionFields.detection_scores: detection_scores,
          DetectionFields.detection_classes: detection_classes,
          DetectionFields.num_detections: num_detections,
      }
    # Per-class NMS over the candidates: each scored in its own class column only.
    class_scores = tf.one_hot(detection_classes - 1, classes) * detection_scores[..., None]
    nms = post_processing.batch_multiclass_nms(
        segments, class_scores, num_detections, score_threshold=0.0,
        iou_threshold=float(nms_iou_threshold), max_per_class=max_detections,
        max_total=max_detections)
    count = nms[DetectionFields.num_detections]
    kept = tf.sequence_mask(count, max_detections)
    nms[DetectionFields.detection_classes] = tf.where(
        kept, tf.cast(nms[DetectionFields.detection_classes], tf.int32) + 1, 0)
    return nms
