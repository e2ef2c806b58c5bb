"""Command-line flags parsed in-process, as the entry points parse them."""
from absl import flags


def parse_flags(module, *argv):
  """`module`'s flags (its define_flags) on a fresh FlagValues, parsed from `argv`."""
  fv = flags.FlagValues()
  module.define_flags(fv)
  fv([getattr(module, "__name__", "prog").rsplit(".", 1)[-1], *argv])
  return fv
