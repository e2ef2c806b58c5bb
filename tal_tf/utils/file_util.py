"""Atomic file output: write under a hidden temporary name, rename over the target when done.

A reader therefore sees either the old file or the whole new one, never a partial file, and a
killed writer leaves only a hidden temporary file (named after the target and the writer's
process id) that `remove_stale_temporaries` deletes once that process is gone. Temporary
names start with '.', so globs such as `<prefix>-*` or `dir/*.tfrecord` never match them.
"""

import errno
import os
import re

_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.tmp-(?P<pid>\d+)$")


def temporary_path(path):
  """Hidden temporary name beside `path` for this process: dir/.<name>.tmp-<pid>."""
  directory, name = os.path.split(os.path.abspath(path))
  return os.path.join(directory, f".{name}.tmp-{os.getpid()}")


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
  reason = os.strerror(error.errno) if error.errno else str(error)
  if error.errno == errno.ENOSPC:
    reason = "no space left on device"
  return f"{path}: {reason.lower()}"


def atomic_write_text(path, text):
  """Writes `text` (utf-8) to `path` atomically: temporary file, fsync, rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temp = temporary_path(path)
  try:
    with open(temp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, path)
  except BaseException:
    if os.path.exists(temp):
      os.remove(temp)
    raise
  return path
