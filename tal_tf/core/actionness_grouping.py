"""ETP Algorithm 1: proposals from per-step actionness curves, in core TensorFlow ops.

Given per-step class scores S_1..S_K of a video (ETP Sec. 3.1), Algorithm 1 adds the average
curve S_{K+1} = mean_k S_k, and for each of the K + 1 curves (and each curve's
Gaussian-smoothed version) runs ConnComponent:

  CSet <- {{i} | S_i >= t};  PSet <- {}
  while |CSet| > 1:
    grow every C = {p..q} in CSet to {p-1..q+1}
    merge intersecting members of CSet (transitively)
    move every C with min < |C| < max from CSet to PSet

The union of all PSets is suppressed by NMS. Everything here is vectorized over videos,
curves and thresholds and uses core ops only (it runs inside the exported SavedModel).

Choices where the paper is silent (each also made by the numpy transcription in the tests):
  * Steps are the model's time unit (feature steps for the features variant); `min_length`
    and `max_length` are in steps and compared strictly, as in the paper.
  * Growth stops at the video's edges (a component never covers steps < 0 or >= num_steps),
    so |C| counts real steps only. Two components intersect when they share a step.
  * `num_iterations` bounds the while loop; 0 means `max_length - 1`, which is exact: after
    n growths every component in CSet has at least min(n + 1, num_steps) steps, and a
    component covering the whole video is alone in CSet, so once n + 1 >= max_length no
    component can be moved any more.
  * Several thresholds may be given; their candidates are unioned (one threshold is the
    paper's setting).
  * Smoothing: a Gaussian kernel of standard deviation `smoothing_sigma` steps truncated at
    `smoothing_truncate` sigmas, normalized over the valid steps it covers (a kernel density
    estimate that does not sag at the video's edges). sigma 0 skips the smoothed curves.
  * A candidate's score (what NMS ranks by) is the mean of its class's unsmoothed curve over
    its steps; a candidate from a smoothed curve is scored on the unsmoothed curve too.
  * Steps p..q become the segment [p, q + 1) in step coordinates (step t covers [t, t + 1)).
"""
import math

import tensorflow as tf

from tal_tf.core import post_processing


def _check_args(thresholds, min_length, max_length, smoothing_sigma, num_iterations):
  """Raises ValueError naming the first invalid hyper-parameter."""
  if not thresholds:
    raise ValueError("thresholds: expected at least one threshold")
  for t in thresholds:
    if not math.isfinite(float(t)):
      raise ValueError(f"thresholds: expected finite numbers, got {t!r}")
  if not 0 <= int(min_length) < int(max_length):
    raise ValueError(f"min_length/max_length: expected 0 <= min_length < max_length, got "
                     f"{min_length!r} and {max_length!r}")
  if not float(smoothing_sigma) >= 0.0:
    raise ValueError(f"smoothing_sigma: expected >= 0, got {smoothing_sigma!r}")
  if int(num_iterations) < 0:
    raise ValueError(f"num_iterations: expected >= 0 (0 = max_length - 1), got "
                     f"{num_iterations!r}")


def gaussian_smooth(curves, num_steps, sigma, truncate=3.0):
  """Smooths curves [B, C, T] along T with a Gaussian (sigma in steps) -> [B, C, T].

  Only the first num_steps [B] steps are read; each output is normalized by the kernel
  weight falling on valid steps. Padded steps of the output are 0.
  """
  curves = tf.convert_to_tensor(curves, tf.float32)
  shape = tf.shape(curves)
  valid = tf.sequence_mask(num_steps, shape[2], dtype=tf.float32)[:, None, :]  # [B, 1, T]
  if float(sigma) <= 0.0:
    return curves * valid
  radius = max(int(math.ceil(float(truncate) * float(sigma))), 1)
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(offsets) / (2.0 * float(sigma) ** 2))[:, None, None]
  flat = tf.reshape(curves * valid, [-1, shape[2], 1])
  flat_valid = tf.reshape(tf.broadcast_to(valid, shape), [-1, shape[2], 1])
  numerator = tf.nn.conv1d(flat, kernel, stride=1, padding="SAME")
  denominator = tf.nn.conv1d(flat_valid, kernel, stride=1, padding="SAME")
  smoothed = tf.math.divide_no_nan(numerator, denominator)
  return tf.reshape(smoothed, shape) * valid


def _segment_max_per_row(values, segment, valid):
  """Per row of [N, T]: max of `values` over entries with `valid` grouped by `segment` ids
  (0..T-1) -> [N, T] (lowest int for empty groups)."""
  n, t = tf.shape(values)[0], tf.shape(values)[1]
  rows = tf.range(n)[:, None] * t
  ids = tf.where(valid, rows + segment, n * t)  # invalid entries go to a dump segment
  out = tf.math.unsorted_segment_max(tf.reshape(values, [-1]), tf.reshape(ids, [-1]),
                                     n * t + 1)
  return tf.reshape(out[:-1], [n, t])


def connected_components(curves, lengths, threshold, min_length, max_length,
                         num_iterations=0):
  """ConnComponent of Algorithm 1 on curves [N, T] with valid lengths [N].

  Returns (found [N, T] bool, starts [N, T] int32, ends [N, T] int32): slot i holds a
  proposal covering steps starts..ends (inclusive) when found[:, i]. A slot stands for the
  component whose leftmost seed is step i, so a curve yields at most T proposals.
  """
  curves = tf.convert_to_tensor(curves, tf.float32)
  lengths = tf.cast(lengths, tf.int32)
  n, t = tf.shape(curves)[0], tf.shape(curves)[1]
  positions = tf.broadcast_to(tf.range(t)[None, :], [n, t])
  last = (lengths - 1)[:, None]
  seeds = (curves >= threshold) & (positions < lengths[:, None])
  iterations = int(num_iterations) if num_iterations else int(max_length) - 1
  min_length, max_length = int(min_length), int(max_length)

  def body(i, active, start, end, found, found_start, found_end):
    # while |CSet| > 1 (evaluated per curve at the top of each pass)
    running = tf.reduce_sum(tf.cast(active, tf.int32), axis=1, keepdims=True) > 1
    grow = active & running
    start = tf.where(grow, tf.maximum(start - 1, 0), start)
    end = tf.where(grow, tf.minimum(end + 1, last), end)
    # Active slots are disjoint intervals in slot order and grow alike, so their ends stay
    # non-decreasing: a slot starts a new merged group unless it meets the previous active
    # interval, and a group ends where its last member ends.
    rank = tf.cumsum(tf.cast(active, tf.int32), axis=1, exclusive=True)
    end_by_rank = _segment_max_per_row(end, rank, active)
    previous_end = tf.where(rank > 0, tf.gather(end_by_rank, tf.maximum(rank - 1, 0),
                                                batch_dims=1), -1)
    new_group = active & (start > previous_end)
    group = tf.cumsum(tf.cast(new_group, tf.int32), axis=1) - 1
    group_end = _segment_max_per_row(end, tf.maximum(group, 0), active)
    merged_end = tf.gather(group_end, tf.maximum(group, 0), batch_dims=1)
    end = tf.where(new_group & running, merged_end, end)
    active = tf.where(running, new_group, active)
    size = end - start + 1
    move = active & running & (size > min_length) & (size < max_length)
    found = found | move
    found_start = tf.where(move, start, found_start)
    found_end = tf.where(move, end, found_end)
    active = active & ~move
    return i + 1, active, start, end, found, found_start, found_end

  def cond(i, active, *unused):
    del unused
    any_running = tf.reduce_any(
        tf.reduce_sum(tf.cast(active, tf.int32), axis=1) > 1)
    return (i < iterations) & any_running

  zeros = tf.zeros([n, t], tf.int32)
  loop_vars = (tf.constant(0), seeds, positions, positions, tf.zeros([n, t], tf.bool),
               zeros, zeros)
  _, _, _, _, found, found_start, found_end = tf.while_loop(cond, body, loop_vars)
  return found, found_start, found_end


def actionness_proposals(class_scores, num_steps, thresholds=(0.5,), min_length=0,
                         max_length=64, smoothing_sigma=1.0, smoothing_truncate=3.0,
                         num_iterations=0, nms_iou_threshold=0.7, max_proposals=100):
  """Algorithm 1 for a batch: class_scores [B, T, K] (S_1..S_K per step), num_steps [B].

  Returns (segments [B, P, 2] float32 in steps, scores [B, P], num_proposals [B] int32) with
  P = max_proposals, in decreasing score order, zero padded (see the module docstring).
  """
  _check_args(thresholds, min_length, max_length, smoothing_sigma, num_iterations)
  with tf.name_scope("actionness_proposals"):
    class_scores = tf.convert_to_tensor(class_scores, tf.float32)
    num_steps = tf.cast(num_steps, tf.int32)
    batch, t = tf.shape(class_scores)[0], tf.shape(class_scores)[1]
    num_steps = tf.clip_by_value(num_steps, 0, t)
    raw = tf.transpose(class_scores, [0, 2, 1])  # [B, K, T]
    raw = tf.concat([raw, tf.reduce_mean(raw, axis=1, keepdims=True)], axis=1)  # S_{K+1}
    raw = raw * tf.sequence_mask(num_steps, t, dtype=tf.float32)[:, None, :]
    curves = [raw]
    if float(smoothing_sigma) > 0.0:
      curves.append(gaussian_smooth(raw, num_steps, smoothing_sigma, smoothing_truncate))
    curves = tf.stack(curves, axis=1)  # [B, S, K+1, T]  (S = raw / smoothed)
    num_curves = tf.shape(curves)[1] * tf.shape(curves)[2]
    flat = tf.reshape(curves, [-1, t])
    lengths = tf.repeat(num_steps, num_curves)

    found, starts, ends = [], [], []
    for threshold in thresholds:
      f, s, e = connected_components(flat, lengths, float(threshold), min_length,
                                     max_length, num_iterations)
      found.append(tf.reshape(f, [batch, -1, t]))
      starts.append(tf.reshape(s, [batch, -1, t]))
      ends.append(tf.reshape(e, [batch, -1, t]))
    found = tf.reshape(tf.concat(found, axis=1), [batch, -1])
    starts = tf.reshape(tf.concat(starts, axis=1), [batch, -1])
    ends = tf.reshape(tf.concat(ends, axis=1), [batch, -1])

    # Score: mean of the class's unsmoothed curve over the candidate's steps.
    k1 = tf.shape(raw)[1]
    cumulative = tf.pad(tf.cumsum(raw, axis=2), [[0, 0], [0, 0], [1, 0]])  # [B, K+1, T+1]
    per_curve = len(thresholds) * (2 if float(smoothing_sigma) > 0.0 else 1)
    class_index = tf.tile(tf.repeat(tf.range(k1), t), [per_curve])[None, :]
    class_index = tf.broadcast_to(class_index, tf.shape(found))
    total = (tf.gather_nd(cumulative, tf.stack([class_index, ends + 1], -1), batch_dims=1) -
             tf.gather_nd(cumulative, tf.stack([class_index, starts], -1), batch_dims=1))
    scores = total / tf.cast(tf.maximum(ends - starts + 1, 1), tf.float32)
    scores = tf.where(found, scores, -math.inf)
    segments = tf.cast(tf.stack([starts, ends + 1], axis=-1), tf.float32)
    total_candidates = tf.shape(found)[1]
    kept_segments, kept_scores, _, count = post_processing.batch_class_agnostic_nms(
        segments, scores, tf.fill([batch], total_candidates),
        iou_threshold=float(nms_iou_threshold), max_output=int(max_proposals))
    return kept_segments, kept_scores, count
