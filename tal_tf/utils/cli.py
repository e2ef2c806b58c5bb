"""Command-line entry points: an error of the library becomes one line and a non-zero exit.

Every tal_tf CLI calls `cli.run(main)` instead of `absl.app.run(main)`:

- a flag that fails to parse or validate, or an `app.UsageError` raised by `main`:
  one line `<program>: error: <message>` on stderr, exit code 2 (no usage dump);
- an error the library raises on bad input or a failing machine (ValueError and its
  subclasses ConfigError / ExportError / DataMismatchError / LabelMapError / ..., OSError
  such as a missing file or a full disk, FloatingPointError from a diverged loss, a
  TensorFlow OpError such as a corrupt record, any exception class defined in tal_tf (e.g.
  ModelDirInUseError), plus the CLI's own `errors`): the same one line, exit code 2 (a CLI
  returns 1 itself when it ran but produced nothing, e.g. no video converted);
- Ctrl-C: one line, exit code 130.

Their messages already name the file, field or flag; a traceback would only bury them.

Where the home folder cannot hold matplotlib's configuration (a read-only or missing home, as
in containers and sandboxes), `run` points MPLCONFIGDIR at a per-user folder in the system's
temporary folder first: matplotlib (imported by the evaluator's plots and by Model Garden)
would otherwise print a multi-line warning on every run and rebuild its font cache each time.
Anything else (a bug) keeps its traceback, and TAL_TF_TRACEBACK=1 shows the traceback of
library errors too. This module does not import TensorFlow (some CLIs run without it).
"""

import functools
import math
import os
import re
import sys
import tempfile

from absl import app
from absl import flags

from tal_tf.utils import atomic_files

EXIT_ERROR = 2
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
TRACEBACK_ENV = "TAL_TF_TRACEBACK"

_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


def library_errors(extra=()):
  """The exception types reported as one line (TensorFlow's OpError once it is loaded)."""
  types = [ValueError, OSError, FloatingPointError, *extra]
  tf_errors = sys.modules.get("tensorflow.python.framework.errors_impl")
  if tf_errors is not None:
    types.append(tf_errors.OpError)
  return tuple(types)


def is_library_error(error, extra=()):
  """True for the errors reported as one line: `library_errors`, and every exception class
  tal_tf defines itself (e.g. ModelDirInUseError), whatever its base."""
  if isinstance(error, library_errors(extra)):
    return True
  return any(cls.__module__.split(".")[0] == "tal_tf" for cls in type(error).__mro__)


def one_line(error):
  """An exception's message on one line (for an OpError: its first line, without the
  graph-node context TensorFlow appends)."""
  if isinstance(error, OSError) and error.filename and error.errno:
    # 'path: no space left on device' rather than '[Errno 28] No space left ...: path'.
    return atomic_files.describe_os_error(error, error.filename)
  text = getattr(error, "message", None)
  if not isinstance(text, str):
    text = str(error)
  is_op_error = hasattr(error, "error_code") and hasattr(error, "node_def")
  text = _FUNCTION_NODE.sub("", text)
  lines = [line.strip() for line in text.splitlines()]
  lines = [line for line in lines if line and not line.startswith("[[")]
  if is_op_error:
    lines = lines[:1]
  text = " ".join(lines)
  return text or type(error).__name__


def program_name():
  """The running script's name without '.py', e.g. 'train_main'."""
  name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  if not name or name.startswith("-"):
    return "tal_tf"
  return name[:-3] if name.endswith(".py") else name


def fail(error, code, program=None):
  """Prints `<program>: error: <message>` (one line) to stderr; returns `code`."""
  message = error if isinstance(error, str) else one_line(error)
  sys.stdout.flush()
  print(f"{program or program_name()}: error: {message}", file=sys.stderr)
  sys.stderr.flush()
  return code


def guard(main=None, errors=(), program=None):
  """Wraps an absl `main(argv)`: library errors -> one line + exit code (see module doc).

  Also a decorator (`@cli.guard(program="create_tfrecord")`), so the main stays guarded
  when another runner (a test, plain `app.run`) calls it. `program` names the CLI in the
  error line (default: the script's name).
  """
  if main is None:
    return functools.partial(guard, errors=errors, program=program)

  @functools.wraps(main)
  def guarded(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      return fail(e, EXIT_USAGE, program)
    except KeyboardInterrupt:
      return fail("interrupted", EXIT_INTERRUPTED, program)
    except Exception as e:  # pylint: disable=broad-except
      if is_library_error(e, errors) and not os.environ.get(TRACEBACK_ENV):
        return fail(e, EXIT_ERROR, program)
      raise

  return guarded


def parse_flags(argv):
  """absl flags parser that reports a bad or missing flag as one line (exit code 2).

  A float flag must also be finite: absl parses 'nan' and 'inf', which pass every bound.
  """
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(fail(e, EXIT_USAGE))
  for name in flags.FLAGS:
    value = flags.FLAGS[name].value
    if isinstance(value, float) and not math.isfinite(value):
      sys.exit(fail(f"flag --{name}: must be a finite number, got {value}", EXIT_USAGE))
  return rest


MPLCONFIGDIR_ENV = "MPLCONFIGDIR"


def _writable_or_creatable(path):
  """True when `path` is a writable folder, or its nearest existing ancestor is one."""
  while path and not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return False
    path = parent
  return bool(path) and os.path.isdir(path) and os.access(path, os.W_OK)


def matplotlib_config_dir(environ=None):
  """MPLCONFIGDIR to set, or None when matplotlib's default folder is usable (or the user
  chose one): the default is $XDG_CONFIG_HOME/matplotlib, else ~/.config/matplotlib."""
  environ = os.environ if environ is None else environ
  if environ.get(MPLCONFIGDIR_ENV):
    return None
  base = environ.get("XDG_CONFIG_HOME") or os.path.join(
      environ.get("HOME") or os.path.expanduser("~"), ".config")
  if _writable_or_creatable(os.path.join(base, "matplotlib")):
    return None
  return os.path.join(tempfile.gettempdir(), f"tal_tf-matplotlib-{os.getuid()}")


def run(main, argv=None, errors=()):
  """`absl.app.run(main)` with one-line errors: the entry point of every tal_tf CLI."""
  config_dir = matplotlib_config_dir()
  if config_dir:
    os.environ[MPLCONFIGDIR_ENV] = config_dir
  app.run(guard(main, errors), argv=argv, flags_parser=parse_flags)
