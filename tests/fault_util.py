"""Fault injection helpers for tests: a small disk (tmpfs) to fill, and random SIGKILLs."""
import contextlib
import os
import signal
import subprocess
import time

import pytest


@contextlib.contextmanager
def small_disk(path, size_bytes):
  """Mounts a tmpfs of `size_bytes` at `path` for the block (skips the test, with the reason,
  where mounting is refused: it needs root / CAP_SYS_ADMIN)."""
  os.makedirs(path, exist_ok=True)
  size = max(int(size_bytes), 65536)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    pytest.skip(f"cannot mount a {size}-byte tmpfs at {path} to simulate a full disk: "
                f"{(result.stderr or result.stdout).strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", path], capture_output=True, check=False)


def free_bytes(path):
  """Bytes available to a writer on the file system holding `path`."""
  stat = os.statvfs(path)
  return stat.f_bavail * stat.f_frsize


def fill_disk(path, leave_bytes=0):
  """Writes a filler file in `path` until at most `leave_bytes` stay free; returns it."""
  filler = os.path.join(path, "filler.bin")
  chunk = b"\0" * 65536
  with open(filler, "ab") as f:
    try:
      while free_bytes(path) > leave_bytes:
        f.write(chunk[:max(4096, min(len(chunk), free_bytes(path) - leave_bytes))])
        f.flush()
    except OSError:
      pass
  return filler


def kill_at_random(cmd, rng, started, max_delay, env=None, timeout=600):
  """Starts `cmd`, waits until `started()` is true (e.g. its lock file exists), then sleeps a
  random time in [0, max_delay) and SIGKILLs it. Returns (killed, returncode): killed is
  False when the process finished before the kill."""
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + timeout
    while not started() and proc.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    time.sleep(float(rng.uniform(0.0, max_delay)))
    killed = proc.poll() is None
    if killed:
      proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
  return killed, proc.returncode, stderr.decode("utf-8", "replace")
