"""Name -> component registries that fail loudly.

A registry maps a config name (the proto `oneof` field name, e.g. "multiscale_anchors")
to a factory. Registering a name twice is an error; looking up a missing name lists the
names that exist, so a typo in a config tells the user what was expected.
"""


class Registry:
  """A named mapping from string keys to factories."""

  def __init__(self, kind):
    self._kind = kind
    self._entries = {}

  @property
  def kind(self):
    return self._kind

  def register(self, name, factory=None):
    """Registers `factory` under `name`; usable as a decorator when `factory` is None."""
    if factory is None:
      return lambda f: self.register(name, f)
    if not isinstance(name, str) or not name:
      raise ValueError(f"{self._kind} registry: name must be a non-empty string, got {name!r}")
    if name in self._entries:
      raise KeyError(
          f"{self._kind} registry: {name!r} is already registered to "
          f"{self._entries[name]!r}; refusing to register {factory!r}")
    self._entries[name] = factory
    return factory

  def get(self, name):
    """Returns the factory for `name` or raises KeyError listing what exists."""
    try:
      return self._entries[name]
    except KeyError:
      known = ", ".join(sorted(self._entries)) or "(none)"
      raise KeyError(f"unknown {self._kind} {name!r}; registered: {known}") from None

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name):
    return name in self._entries
