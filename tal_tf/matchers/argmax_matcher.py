"""Threshold matcher on each row's best column, with optional forced matches per column."""
import math

import tensorflow as tf

from tal_tf.matchers import matcher

# Presets (plain kwargs) for the papers' label assignment.
# TAL-Net proposals (supplementary Sec. 1): positive if tIoU "higher than 0.7", negative if
# "lower than 0.3" with all ground truth, and each ground truth gets at least one positive
# anchor (its best anchor; see force_match_min_similarity for zero-overlap ground truth).
TAL_NET_PROPOSAL = dict(matched_threshold=0.7, unmatched_threshold=0.3,
                        force_match_for_each_column=True, force_match_min_similarity=0.0,
                        strict_positive=True)
# TAL-Net action classification: a proposal takes the label of its most overlapped ground
# truth "if tIoU over 0.5, otherwise background" -> equal thresholds, no ignored band.
TAL_NET_CLASSIFICATION = dict(matched_threshold=0.5, unmatched_threshold=0.5,
                              force_match_for_each_column=False, strict_positive=True)
# S-CNN proposal network (Sec. 3.2): positive if highest IoU "larger than 0.7", background if
# "smaller than 0.3"; a ground truth with no segment above 0.7 ("if there is no segment that
# overlaps with a ground truth instance with IoU larger than 0.7") gives a positive label to
# its best segment if that IoU is "higher than 0.5": forcing only in (0.5, 0.7].
S_CNN_PROPOSAL = dict(matched_threshold=0.7, unmatched_threshold=0.3,
                      force_match_for_each_column=True, force_match_min_similarity=0.5,
                      force_match_max_similarity=0.7, force_match_overrides_positives=False,
                      strict_positive=True)


class ArgMaxMatcher(matcher.Matcher):
  """Matches each row to its best column by thresholds; optionally forces a row per column.

  For a row with best similarity v to column j:
    positive (j)  if v > matched_threshold (v >= when strict_positive=False),
    negative (-1) if v < unmatched_threshold,
    ignored  (-2) otherwise.
  Both papers use strict comparisons ("higher than 0.7", "lower than 0.3"), hence the
  default strict_positive=True. When matched_threshold == unmatched_threshold there is no
  ignored band: every row that is not positive is negative (TAL-Net's classification stage,
  "over 0.5, otherwise background").

  Forcing (force_match_for_each_column=True): each valid column's best row becomes a positive
  for that column if that best similarity is > force_match_min_similarity, overriding the row's
  threshold label (like Faster R-CNN). The default 0.0 forces every ground truth that overlaps
  any anchor at all; a ground truth that overlaps no anchor is not forced, since a regression
  target from a disjoint anchor is meaningless (pass e.g. -1.0 to force even then). A column
  forces only while its best similarity is <= force_match_max_similarity (default: no upper
  bound, Faster R-CNN's rule). S-CNN forces only ground truth without a segment above 0.7 and
  only above 0.5, i.e. min 0.5 and max 0.7: a ground truth whose best row is above 0.7 then
  leaves that row's own argmax label alone (without the bound it would pull a row shared by
  two overlapping ground truths to itself).
  When several columns force the same row, the row goes to the column it overlaps most.
  force_match_overrides_positives=False leaves rows that are already positive (above
  matched_threshold with their own best column) alone: S-CNN's rule (1) labels such a window
  by its highest-tIoU ground truth, and a forced ground truth's best window is then positive
  already (with the label of the ground truth it overlaps more).
  """

  def __init__(self, matched_threshold, unmatched_threshold=None,
               force_match_for_each_column=False, force_match_min_similarity=0.0,
               strict_positive=True, force_match_max_similarity=math.inf,
               force_match_overrides_positives=True):
    """Thresholds on similarity; unmatched_threshold defaults to matched_threshold."""
    if unmatched_threshold is None:
      unmatched_threshold = matched_threshold
    for name, value in (("matched_threshold", matched_threshold),
                        ("unmatched_threshold", unmatched_threshold),
                        ("force_match_min_similarity", force_match_min_similarity)):
      try:
        ok = math.isfinite(float(value))
      except (TypeError, ValueError):
        ok = False
      if not ok:
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    matched_threshold = float(matched_threshold)
    unmatched_threshold = float(unmatched_threshold)
    if unmatched_threshold > matched_threshold:
      raise ValueError(
          f"unmatched_threshold ({unmatched_threshold}) must be <= matched_threshold "
          f"({matched_threshold})")
    force_match_min_similarity = float(force_match_min_similarity)
    if force_match_min_similarity < -1.0:
      raise ValueError(
          f"force_match_min_similarity: expected >= -1.0, got {force_match_min_similarity}")
    self._matched_threshold = matched_threshold
    self._unmatched_threshold = unmatched_threshold
    self._force_match_for_each_column = bool(force_match_for_each_column)
    self._force_match_min_similarity = force_match_min_similarity
    try:
      force_match_max_similarity = float(force_match_max_similarity)
    except (TypeError, ValueError):
      raise ValueError(f"force_match_max_similarity: expected a number, got "
                       f"{force_match_max_similarity!r}") from None
    if not force_match_max_similarity > force_match_min_similarity:
      raise ValueError(
          f"force_match_max_similarity ({force_match_max_similarity}) must be > "
          f"force_match_min_similarity ({force_match_min_similarity})")
    self._force_match_max_similarity = force_match_max_similarity
    self._force_match_overrides_positives = bool(force_match_overrides_positives)
    self._strict_positive = bool(strict_positive)

  @property
  def matched_threshold(self):
    """Similarity above which (or at which, if not strict) a row is positive."""
    return self._matched_threshold

  @property
  def unmatched_threshold(self):
    """Similarity below which a row is negative."""
    return self._unmatched_threshold

  def _match(self, similarity, valid_columns):
    best_col, best_sim = matcher.best_columns(similarity)                    # [B, N]
    if self._strict_positive:
      positive = best_sim > self._matched_threshold
    else:
      positive = best_sim >= self._matched_threshold
    if self._matched_threshold == self._unmatched_threshold:
      negative = tf.logical_not(positive)
    else:
      negative = best_sim < self._unmatched_threshold
    results = tf.where(positive, best_col,
                       tf.where(negative, matcher.UNMATCHED, matcher.IGNORED))
    if self._force_match_for_each_column:
      results = self._force_matches(similarity, valid_columns, results)
    return matcher.Match(results)

  def _force_matches(self, similarity, valid_columns, results):
    """Overrides results [B, N] so each valid column's best row (above the minimum) matches it."""
    shape = tf.shape(similarity)
    num_rows = shape[1]
    # Dummy row so argmax over rows is defined for N = 0; its index N one-hots to nothing.
    dummy = tf.fill(tf.stack([shape[0], 1, shape[2]]),
                    tf.constant(matcher.MASKED_SIMILARITY, tf.float32))
    padded = tf.concat([similarity, dummy], axis=1)
    col_best_row = tf.argmax(padded, axis=1, output_type=tf.int32)           # [B, M]
    col_best_sim = tf.reduce_max(padded, axis=1)                              # [B, M]
    forcing = tf.logical_and(valid_columns, col_best_sim > self._force_match_min_similarity)
    if self._force_match_max_similarity != math.inf:
      forcing = tf.logical_and(forcing, col_best_sim <= self._force_match_max_similarity)
    # forced_by[b, n, m]: column m forces row n.
    forced_by = tf.logical_and(
        tf.transpose(tf.one_hot(col_best_row, num_rows, on_value=True, off_value=False,
                                dtype=tf.bool), [0, 2, 1]),
        forcing[:, tf.newaxis, :])
    row_forced = tf.reduce_any(forced_by, axis=2)                             # [B, N]
    if not self._force_match_overrides_positives:
      row_forced = tf.logical_and(row_forced, results < 0)
    forced_col, _ = matcher.best_columns(
        tf.where(forced_by, similarity, tf.constant(matcher.MASKED_SIMILARITY, tf.float32)))
    return tf.where(row_forced, forced_col, results)
