"""Builds mini-batch samplers from `BalancedSampler` protos."""

from tal_tf.core import balanced_sampler


def build(config):
  """BalancedSampler proto -> BalancedPositiveNegativeSampler."""
  return balanced_sampler.BalancedPositiveNegativeSampler(
      batch_size=config.batch_size, positive_fraction=config.positive_fraction)
