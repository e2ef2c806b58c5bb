"""Checkpoints that survive faults, and one trainer per model_dir.

* `ModelDirLock`: a lock file in model_dir (pid, host, start time) taken atomically; a second
  trainer on the same model_dir stops with a one-line error. A lock left by a process that no
  longer exists (a SIGKILLed run on this host) is stale and taken over, so a killed run never
  blocks its own restart.
* `open_manager`: a CheckpointManager even when the `checkpoint` state file is corrupt (it is
  moved aside, named in a warning, and checkpoints are found from their index files).
* `restore_newest_intact`: restores the newest checkpoint that reads; a truncated or damaged
  one is named in a warning and the previous intact one is used.
* `remove_stale_temp_dirs`: removes `ckpt-N_temp*` folders a killed save left behind.
* `save_or_explain`: a save that fails (disk full) cleans up after itself and raises one
  line naming the model_dir and the intact previous checkpoint.
* `restore_checked`: the one way a given checkpoint is read into existing objects (evaluation,
  export, inference, fine-tuning, backbones): a damaged file or a checkpoint that lacks the
  objects' variables is a one-line `CheckpointReadError` naming it, never a traceback or a
  silently half-restored (randomly initialized) model.
"""

import errno
import glob
import json
import os
import re
import shutil
import socket
import time

from absl import logging
import tensorflow as tf

from google.protobuf import text_format
from tensorflow.python.training import checkpoint_state_pb2

LOCK_NAME = ".tal_tf_train.lock"
STATE_FILE = "checkpoint"


class ModelDirInUseError(RuntimeError):
  """Another live trainer holds the model_dir."""


class CheckpointReadError(ValueError):
  """A checkpoint that cannot be read, or does not hold the variables it is restored into."""


# What reading a damaged checkpoint raises: a truncated data file surfaces as IndexError
# ("Read less bytes than requested") or DataLossError depending on where the cut falls; a
# missing data shard as NotFoundError.
_UNREADABLE = (IndexError, tf.errors.OpError)
# The start of TensorFlow's ValueError for a variable whose saved shape differs.
_SHAPE_MISMATCH = "Received incompatible tensor with shape"


def restore_checked(root, path, what="checkpoint", hint=""):
  """Restores checkpoint prefix `path` into `root` (a tf.train.Checkpoint over existing
  variables), requiring every variable of `root` to be in the checkpoint with its shape.

  Create the variables first (e.g. model.create_variables): restoring into objects without
  variables defers, and a checkpoint of another model would then match nothing and leave
  every weight at its initial value. Entries of the checkpoint `root` does not ask for (the
  optimizer, the input position) are fine. `what` names the checkpoint in errors (e.g.
  '--checkpoint'), `hint` is appended to a mismatch. Raises CheckpointReadError.
  """
  try:
    status = root.read(path)
    status.assert_existing_objects_matched()
  except _UNREADABLE as e:
    raise CheckpointReadError(f"{what} {path!r} cannot be read (damaged or incomplete "
                              f"files?): {type(e).__name__}: {_first_line(e)}") from None
  except (AssertionError, ValueError) as e:
    # Variables absent from the checkpoint (AssertionError) or of another shape (ValueError).
    raise CheckpointReadError(f"{what} {path!r} does not hold this model's variables"
                              f"{hint}: {_mismatch_summary(e)}") from None
  status.expect_partial()
  return path


def _mismatch_summary(error):
  """One line for a failed restore: how many variables are unmatched and a few names (the
  AssertionError lists each variable with its values over many lines)."""
  text = str(error)
  names = re.findall(r"<tf\.Variable '([^']+)'", text)
  if not names:
    return _first_line(error)[:400]
  count = re.search(r"Found (\d+) Python objects", text)
  return (f"{count.group(1) if count else len(names)} variables are not in it, e.g. "
          f"{', '.join(names[:3])}")


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class ModelDirLock:
  """An exclusive, stale-aware lock on a model_dir for one trainer process."""

  def __init__(self, model_dir):
    self.path = os.path.join(model_dir, LOCK_NAME)
    self._held = False

  def _read(self):
    try:
      with open(self.path, encoding="utf-8") as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def acquire(self):
    """Takes the lock or raises ModelDirInUseError naming the holder."""
    me = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time())
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._read()
        if holder is None:
          # Half-written by a process killed between create and write: stale.
          logging.warning("removing unreadable lock file %s", self.path)
        elif holder.get("host") != me["host"]:
          raise ModelDirInUseError(
              f"{os.path.dirname(self.path)} is in use by pid {holder.get('pid')} on host "
              f"{holder.get('host')} (lock {self.path}); remove the lock if that run is gone")
        elif holder.get("pid") != me["pid"] and _pid_alive(int(holder.get("pid", -1))):
          raise ModelDirInUseError(
              f"{os.path.dirname(self.path)} is in use by a running trainer (pid "
              f"{holder['pid']}, lock {self.path}); use another --model_dir or stop it")
        else:
          logging.warning("taking over the stale lock of pid %s in %s", holder.get("pid"),
                          self.path)
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(me, f)
      self._held = True
      return self
    raise ModelDirInUseError(f"could not take the lock {self.path}")

  def release(self):
    if self._held:
      holder = self._read()
      if holder is not None and holder.get("pid") == os.getpid():
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
      self._held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def checkpoints_on_disk(directory, prefix="ckpt"):
  """[(number, path prefix)] of checkpoints with an index file, newest first."""
  out = []
  for index in glob.glob(os.path.join(directory, f"{prefix}-*.index")):
    match = re.fullmatch(rf"{re.escape(prefix)}-(\d+)\.index", os.path.basename(index))
    if match:
      out.append((int(match.group(1)), index[:-len(".index")]))
  return sorted(out, reverse=True)


def remove_stale_temp_dirs(directory, prefix="ckpt"):
  """Removes `<prefix>-N_temp*` folders (unfinished saves of a killed run); returns them."""
  removed = []
  for path in glob.glob(os.path.join(directory, f"{prefix}-*_temp*")):
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  if removed:
    logging.warning("removed unfinished checkpoint folders of an interrupted save: %s",
                    ", ".join(removed))
  return removed


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. the disk is full); the previous ones are kept."""


def save_or_explain(manager, step):
  """manager.save(step); a failed write (disk full, permissions) removes what it left of
  checkpoint `step` and raises CheckpointWriteError naming the folder and the intact
  previous checkpoint. TensorFlow only updates the `checkpoint` state file after a
  complete save, so the earlier checkpoints stay the ones a re-run restores."""
  try:
    return manager.save(checkpoint_number=step, check_interval=False)
  except (tf.errors.OpError, OSError) as e:
    directory = manager.directory
    prefix = os.path.join(directory, f"ckpt-{int(step)}")
    for leftover in glob.glob(prefix + ".*") + glob.glob(prefix + "_temp*"):
      if os.path.isdir(leftover):
        shutil.rmtree(leftover, ignore_errors=True)
      else:
        try:
          os.remove(leftover)
        except OSError:
          pass
    reason = _first_line(e)
    previous = tf.train.latest_checkpoint(directory)
    kept = (f"the previous checkpoint {previous} is intact; free space and re-run to resume "
            "from it") if previous else "no earlier checkpoint exists"
    raise CheckpointWriteError(
        f"{directory}: writing checkpoint ckpt-{int(step)} failed ({reason}); {kept}") from None


def _first_line(error):
  """An OSError's or OpError's message on one line, without TensorFlow's node prefix."""
  text = error.message if isinstance(error, tf.errors.OpError) else str(error)
  text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text).strip()
  return text.splitlines()[0] if text else type(error).__name__


def open_manager(checkpoint, directory, **kwargs):
  """tf.train.CheckpointManager; a corrupt `checkpoint` state file is moved aside first."""
  state = os.path.join(directory, STATE_FILE)
  if os.path.isfile(state):
    try:
      # TensorFlow logs and ignores an unparsable state file; parse it here to say so once,
      # clearly, and keep the damaged file for inspection.
      with open(state, encoding="utf-8") as f:
        text_format.Parse(f.read(), checkpoint_state_pb2.CheckpointState())
    except (text_format.ParseError, UnicodeDecodeError, ValueError) as e:
      aside = f"{state}.corrupt-{int(time.time())}"
      os.replace(state, aside)
      logging.warning("the checkpoint state file %s is corrupt (%s); moved it to %s and "
                      "looking for checkpoints by their index files", state,
                      str(e).splitlines()[0][:200], aside)
  return tf.train.CheckpointManager(checkpoint, directory, **kwargs)


def restore_newest_intact(checkpoint, directory, newest=None):
  """Restores the newest readable checkpoint of `directory` (trying `newest` first); returns
  its path or None. Damaged checkpoints are named in warnings and skipped."""
  candidates = [p for _, p in checkpoints_on_disk(directory)]
  if newest and newest not in candidates and tf.io.gfile.exists(newest + ".index"):
    candidates.insert(0, newest)
  for path in candidates:
    try:
      checkpoint.restore(path).expect_partial()
      return path
    except (tf.errors.OpError, ValueError, AssertionError, OSError, IndexError,
            RuntimeError) as e:
      # A truncated file surfaces as IndexError ("Read less bytes than requested") or
      # DataLossError, depending on where the cut falls.
      if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        raise
      if isinstance(e, ValueError) and _SHAPE_MISMATCH in str(e):
        # An intact checkpoint of another model (the config changed since the run began):
        # every older checkpoint has the same shapes, and calling them damaged would mislead.
        raise CheckpointReadError(
            f"{directory}: checkpoint {os.path.basename(path)} does not match the model "
            f"built from the config (changed since this model_dir was trained? its config "
            f"is {os.path.join(directory, 'pipeline.config')}; or use another --model_dir): "
            f"{_first_line(e)[:300]}") from None
      logging.warning("checkpoint %s is unreadable (%s: %s); trying the previous one", path,
                      type(e).__name__, str(e).splitlines()[0][:200])
  if candidates:
    raise ValueError(f"no readable checkpoint in {directory}: all of "
                     f"{[os.path.basename(p) for p in candidates]} are damaged")
  return None
