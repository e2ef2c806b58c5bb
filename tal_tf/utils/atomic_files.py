"""Atomic output files: written under a temporary name, renamed into place on success.

A reader (or a resumed run) then sees either no file or a complete one, never a partial
file left by a crash or an interrupted run. Temporary names are hidden (they start with '.',
so globs such as `<prefix>-*` never match them) and carry the writer's process id, so
`remove_stale_temporaries` can delete what a killed writer left once that process is gone.
"""

import contextlib
import ctypes
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


def pid_alive(pid):
  """True if process `pid` exists on this host (possibly owned by another user)."""
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
    if pid != os.getpid() and pid_alive(pid):
      continue  # Another live writer's file.
    path = os.path.join(directory, name)
    try:
      os.remove(path)
      removed.append(path)
    except FileNotFoundError:
      pass
  return removed


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = None


def exchange_paths(a, b):
  """Swaps two existing paths of one filesystem in a single step (Linux renameat2 with
  RENAME_EXCHANGE): no moment exists where either name is missing, which two renames cannot
  give. Returns False (nothing changed) where the kernel, the C library or the filesystem
  does not support it, so the caller can fall back; raises OSError for other failures."""
  global _libc
  if _libc is None:
    try:
      _libc = ctypes.CDLL(None, use_errno=True)
      _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                  ctypes.c_char_p, ctypes.c_uint]
    except (OSError, AttributeError):
      _libc = False
  if not _libc:
    return False
  result = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                           _RENAME_EXCHANGE)
  if result == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), a, None, b)


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
  for i, (t, p) in enumerate(zip(temps, paths)):
    try:
      os.replace(t, p)
    except OSError as e:
      # Name the output, not the hidden temporary (e.g. 'out.json: is a directory'), and
      # leave no temporaries behind.
      for rest in temps[i:]:
        if os.path.exists(rest):
          os.remove(rest)
      raise OSError(e.errno, e.strerror, p) from None


@contextlib.contextmanager
def atomic_output(path):
  """atomic_outputs for one path: yields its temporary name."""
  with atomic_outputs([path]) as temps:
    yield temps[0]
