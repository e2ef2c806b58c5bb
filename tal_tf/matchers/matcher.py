"""Matcher interface and the `Match` result it returns.

Rows are anchors (or proposals), columns are ground-truth segments. A match result
[B, N] int32 holds, per row, the matched ground-truth column (>= 0), -1 for a negative
(background / unmatched) row, or -2 for an ignored row.
"""
import abc

import tensorflow as tf

UNMATCHED = -1
IGNORED = -2

# Similarity given to padded ground-truth columns (and to rows a caller wants kept out of
# matching): below any threshold a matcher accepts, so such a column is never a row's best
# match while a real column exists, and is never force-matched.
MASKED_SIMILARITY = -1e9


class Match:
  """Result of matching anchors to ground truth, batched.

  match_results: [B, N] int32; >= 0 matched column, -1 unmatched (negative), -2 ignored.
  incomplete_match_results (optional, three-way matchers): [B, N] int32 holding the
  ground-truth column of rows labelled *incomplete* and -1 elsewhere. Incomplete rows are
  ignored (-2) in match_results so the usual positive / negative logic leaves them out.
  """

  def __init__(self, match_results, incomplete_match_results=None):
    """Wraps match_results [B, N] int32 (and optional incomplete_match_results [B, N])."""
    match_results = tf.convert_to_tensor(match_results)
    if match_results.shape.rank is not None and match_results.shape.rank != 2:
      raise ValueError(
          f"match_results: expected shape [B, N], got {match_results.shape}")
    if not match_results.dtype.is_integer:
      raise ValueError(f"match_results: expected an integer dtype, got {match_results.dtype}")
    self._match_results = tf.cast(match_results, tf.int32)
    if incomplete_match_results is not None:
      incomplete_match_results = tf.cast(
          tf.convert_to_tensor(incomplete_match_results), tf.int32)
      if (incomplete_match_results.shape.rank is not None
          and incomplete_match_results.shape.rank != 2):
        raise ValueError(
            f"incomplete_match_results: expected shape [B, N], "
            f"got {incomplete_match_results.shape}")
    self._incomplete_match_results = incomplete_match_results

  @property
  def match_results(self):
    """[B, N] int32 match results."""
    return self._match_results

  @property
  def incomplete_match_results(self):
    """[B, N] int32 ground-truth column of incomplete rows (-1 elsewhere), or None."""
    return self._incomplete_match_results

  @property
  def has_incomplete(self):
    """True if this match carries an incomplete labelling (three-way matchers)."""
    return self._incomplete_match_results is not None

  def matched_column_indicator(self):
    """[B, N] bool: rows matched to a ground-truth column (positives)."""
    return self._match_results >= 0

  def unmatched_indicator(self):
    """[B, N] bool: rows that are negatives (-1)."""
    return tf.equal(self._match_results, UNMATCHED)

  def ignored_indicator(self):
    """[B, N] bool: rows that are ignored (-2)."""
    return tf.equal(self._match_results, IGNORED)

  def incomplete_indicator(self):
    """[B, N] bool: rows labelled incomplete (all False when there is no such labelling)."""
    if self._incomplete_match_results is None:
      return tf.zeros_like(self._match_results, dtype=tf.bool)
    return self._incomplete_match_results >= 0

  def num_matched_rows(self):
    """[B] int32 number of positive rows per batch element."""
    return tf.reduce_sum(tf.cast(self.matched_column_indicator(), tf.int32), axis=1)

  def gather_based_on_match(self, values, unmatched_value, ignored_value):
    """Gathers per-column values [B, M, ...] to rows -> [B, N, ...], with defaults for -1 / -2 rows.

    unmatched_value / ignored_value: scalars or tensors broadcastable to values' trailing
    shape [...]. Works with M = 0.
    """
    return _gather_rows(values, self._match_results, unmatched_value, ignored_value)

  def gather_incomplete(self, values, default_value):
    """Gathers per-column values [B, M, ...] for incomplete rows -> [B, N, ...], default elsewhere."""
    if self._incomplete_match_results is None:
      raise ValueError("gather_incomplete: this Match has no incomplete labelling")
    return _gather_rows(values, self._incomplete_match_results, default_value, default_value)


def _gather_rows(values, indices, unmatched_value, ignored_value):
  """values [B, M, ...] gathered by indices [B, N] (>= 0), defaults where indices are -1 / other."""
  with tf.name_scope("GatherBasedOnMatch"):
    values = tf.convert_to_tensor(values)
    if values.shape.rank is not None and values.shape.rank < 2:
      raise ValueError(f"values: expected shape [B, M, ...], got {values.shape}")
    unmatched_value = tf.cast(tf.convert_to_tensor(unmatched_value), values.dtype)
    ignored_value = tf.cast(tf.convert_to_tensor(ignored_value), values.dtype)
    # Append one dummy column so gathering is well defined even with M = 0 columns; the
    # dummy is never selected for a real match because negative indices are replaced below.
    shape = tf.shape(values)
    pad = tf.zeros(tf.concat([shape[:1], [1], shape[2:]], 0), values.dtype)
    padded = tf.concat([values, pad], axis=1)
    safe = tf.where(indices >= 0, indices, tf.shape(values)[1])
    gathered = tf.gather(padded, safe, axis=1, batch_dims=1)      # [B, N, ...]
    extra = gathered.shape.rank - 2 if gathered.shape.rank is not None else 0
    expand = lambda m: tf.reshape(m, tf.concat([tf.shape(m), tf.ones([extra], tf.int32)], 0))
    defaults = tf.where(expand(tf.equal(indices, UNMATCHED)),
                        tf.broadcast_to(unmatched_value, tf.shape(gathered)),
                        tf.broadcast_to(ignored_value, tf.shape(gathered)))
    return tf.where(expand(indices >= 0), gathered, defaults)


class Matcher(abc.ABC):
  """Matches rows (anchors) to columns (ground truth) from a similarity matrix [B, N, M]."""

  def match(self, similarity, num_valid_columns=None):
    """Returns a Match for similarity [B, N, M]; columns >= num_valid_columns [B] never match.

    num_valid_columns=None means every column is valid.
    """
    with tf.name_scope(type(self).__name__):
      similarity = tf.convert_to_tensor(similarity, name="similarity")
      if similarity.dtype != tf.float32:
        similarity = tf.cast(similarity, tf.float32)
      if similarity.shape.rank is not None and similarity.shape.rank != 3:
        raise ValueError(
            f"similarity: expected shape [B, N, M] (batch, anchors, ground truth), "
            f"got {similarity.shape}")
      shape = tf.shape(similarity)
      if num_valid_columns is None:
        num_valid_columns = tf.fill([shape[0]], shape[2])
      num_valid_columns = tf.convert_to_tensor(num_valid_columns, name="num_valid_columns")
      if num_valid_columns.shape.rank is not None and num_valid_columns.shape.rank != 1:
        raise ValueError(
            f"num_valid_columns: expected shape [B], got {num_valid_columns.shape}")
      num_valid_columns = tf.cast(num_valid_columns, tf.int32)
      valid_columns = (tf.range(shape[2])[tf.newaxis, :]
                       < num_valid_columns[:, tf.newaxis])                # [B, M]
      masked = tf.where(valid_columns[:, tf.newaxis, :], similarity,
                        tf.constant(MASKED_SIMILARITY, tf.float32))
      return self._match(masked, valid_columns)

  @abc.abstractmethod
  def _match(self, similarity, valid_columns):
    """Matches similarity [B, N, M] (padded columns already masked) -> Match.

    valid_columns: [B, M] bool, False for padded ground-truth columns.
    """


def best_columns(similarity):
  """Per row: best column [B, N] int32 and its similarity [B, N]; M = 0 gives MASKED_SIMILARITY.

  A dummy masked column is appended so argmax / max are defined for M = 0; it can only win
  when every real column is masked, and then its similarity is below every threshold.
  """
  dummy = tf.fill(tf.stack([tf.shape(similarity)[0], tf.shape(similarity)[1], 1]),
                  tf.constant(MASKED_SIMILARITY, tf.float32))
  padded = tf.concat([similarity, dummy], axis=2)
  return (tf.argmax(padded, axis=2, output_type=tf.int32), tf.reduce_max(padded, axis=2))
