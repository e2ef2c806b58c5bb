"""Builds matchers from `Matcher` protos."""

import math

from tal_tf.matchers import argmax_matcher
from tal_tf.matchers import three_way_matcher
from tal_tf.utils import registry

MATCHERS = registry.Registry("matcher")


@MATCHERS.register("argmax_matcher")
def _argmax(config):
  return argmax_matcher.ArgMaxMatcher(
      matched_threshold=config.matched_threshold,
      unmatched_threshold=config.unmatched_threshold,
      force_match_for_each_column=config.force_match_for_each_groundtruth,
      force_match_min_similarity=config.force_match_min_tiou,
      force_match_max_similarity=(config.force_match_max_tiou
                                  if config.HasField("force_match_max_tiou") else math.inf),
      force_match_overrides_positives=config.force_match_overrides_positives)


@MATCHERS.register("three_way_matcher")
def _three_way(config):
  return three_way_matcher.ThreeWayMatcher(
      positive_threshold=config.positive_threshold,
      incomplete_threshold=config.incomplete_low,
      background_threshold=config.background_threshold)


def build(config, default=None):
  """Matcher proto -> Matcher. An unset oneof builds `default` (a Matcher proto) if given."""
  choice = config.WhichOneof("matcher_oneof")
  if choice is None:
    if default is None:
      raise ValueError(f"matcher: none set; expected one of {MATCHERS.names()}")
    return build(default)
  return MATCHERS.get(choice)(getattr(config, choice))
