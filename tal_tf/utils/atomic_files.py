"""Atomic output files: written under a temporary name, renamed into place on success.

A reader (or a resumed run) then sees either no file or a complete one, never a partial
file left by a crash or an interrupted run.
"""

import contextlib
import os
import uuid


def temp_name(path):
  """A unique temporary name beside `path` (same directory, so the rename is atomic)."""
  head, tail = os.path.split(os.path.abspath(path))
  return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_outputs(paths):
  """Yields temporary names for `paths` (list); on normal exit renames each into place, on
  an exception deletes them and re-raises. Parent directories are created."""
  paths = list(paths)
  for p in paths:
    os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
  temps = [temp_name(p) for p in paths]
  try:
    yield temps
  except BaseException:
    for t in temps:
      if os.path.exists(t):
        os.remove(t)
    raise
  for t, p in zip(temps, paths):
    os.replace(t, p)


@contextlib.contextmanager
def atomic_output(path):
  """atomic_outputs for one path: yields its temporary name."""
  with atomic_outputs([path]) as temps:
    yield temps[0]
