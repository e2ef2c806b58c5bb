"""Atomic output files: written under a temporary name, renamed into place on success.

A reader (or a resumed run) then sees either no file or a complete one, never a partial
file left by a crash or an interrupted run. Temporary names are hidden (they start with '.',
so globs such as `<prefix>-*` never match them) and carry the writer's process id, so
`remove_stale_temporaries` can delete what a killed writer left once that process is gone.
"""

import contextlib
import errno
import os
import re
import uuid

_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_name(path):
  """A unique temporary name beside `path` (same directory, so the rename is atomic):
  dir/.<name>.tmp-<pid>-<random>."""
  head, tail = os.path.split(os.path.abspath(path))
  return os.path.join(head, f".{tail}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, owned by someone else.
    return True
  return True


def remove_stale_temporaries(directory, target_pattern):
  """Deletes temporaries in `directory` of targets whose name fully matches the regex
  `target_pattern`, left by processes that no longer run. Returns the removed paths."""
  if not os.path.isdir(directory):
    return []
  target_re = re.compile(target_pattern)
  removed = []
  for name in sorted(os.listdir(directory)):
    match = _TEMP_RE.match(name)
    if not match or not target_re.fullmatch(match.group("target")):
      continue
    pid = int(match.group("pid"))
    if pid != os.getpid() and _pid_alive(pid):
      continue  # Another live writer's file.
    path = os.path.join(directory, name)
    try:
      os.remove(path)
      removed.append(path)
    except FileNotFoundError:
      pass
  return removed


def describe_os_error(error, path):
  """One line for an OSError while writing `path`, e.g. 'x: no space left on device'."""
  if error.errno == errno.ENOSPC:
    return f"{path}: no space left on device"
  reason = os.strerror(error.errno) if error.errno else str(error)
  return f"{path}: {reason.lower()}"


def write_text(path, text):
  """Writes `text` (utf-8) to `path` atomically (temporary file, fsync, rename)."""
  with atomic_output(path) as temp:
    with open(temp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
  return path


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
