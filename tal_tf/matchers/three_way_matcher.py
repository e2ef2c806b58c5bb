"""ETP proposal labelling: positive / incomplete / background / ignored by best tIoU."""
import math

import tensorflow as tf

from tal_tf.matchers import matcher


class ThreeWayMatcher(matcher.Matcher):
  """Labels each row by its best similarity v (tIoU with its ground truth), ETP Sec. 3:

    positive   (match_results = column)      if v >  positive_threshold          (0.7)
    incomplete (incomplete_match_results = column, match_results = -2)
                                             if incomplete_threshold <= v <= positive_threshold
    background (match_results = -1)          if v <  background_threshold        (0.1)
    ignored    (match_results = -2)          otherwise (0.1 <= v < 0.3).

  The ETP paper defines positives by IoU > 0.7 and incomplete proposals by 0.3 <= IoU < 0.7,
  which leaves IoU exactly 0.7 in no class; that value does occur (e.g. a 7-step proposal
  inside a 10-step action), so it is put with the incomplete proposals: it is not a positive
  by the paper's strict rule, and it is a partial cover of the action. The paper labels by
  IoU only (no separate coverage criterion), so none is applied here. No ground truth is
  force-matched (the paper does not ask for it).

  Incomplete rows keep their ground-truth column in `Match.incomplete_match_results` so that
  the refinement stage (which regresses positives and incomplete proposals) and the
  completeness classifier (positives vs incomplete) can use them.
  """

  def __init__(self, positive_threshold=0.7, incomplete_threshold=0.3,
               background_threshold=0.1):
    """Thresholds with background_threshold <= incomplete_threshold <= positive_threshold."""
    values = {}
    for name, value in (("positive_threshold", positive_threshold),
                        ("incomplete_threshold", incomplete_threshold),
                        ("background_threshold", background_threshold)):
      try:
        v = float(value)
      except (TypeError, ValueError):
        v = float("nan")
      if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
      values[name] = v
    if not (values["background_threshold"] <= values["incomplete_threshold"]
            <= values["positive_threshold"]):
      raise ValueError(
          "thresholds must satisfy background_threshold <= incomplete_threshold <= "
          f"positive_threshold, got background_threshold={values['background_threshold']}, "
          f"incomplete_threshold={values['incomplete_threshold']}, "
          f"positive_threshold={values['positive_threshold']}")
    self._positive_threshold = values["positive_threshold"]
    self._incomplete_threshold = values["incomplete_threshold"]
    self._background_threshold = values["background_threshold"]

  def _match(self, similarity, valid_columns):
    del valid_columns  # Padded columns are already masked below every threshold.
    best_col, best_sim = matcher.best_columns(similarity)
    positive = best_sim > self._positive_threshold
    incomplete = tf.logical_and(best_sim >= self._incomplete_threshold,
                                tf.logical_not(positive))
    background = best_sim < self._background_threshold
    results = tf.where(positive, best_col,
                       tf.where(background, matcher.UNMATCHED, matcher.IGNORED))
    incomplete_results = tf.where(incomplete, best_col, matcher.UNMATCHED)
    return matcher.Match(results, incomplete_match_results=incomplete_results)
