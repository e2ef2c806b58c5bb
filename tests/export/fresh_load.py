"""Loads a SavedModel in a fresh process where tal_tf cannot be imported, and runs it.

  python -I fresh_load.py EXPORT_DIR INPUTS.npz OUTPUTS.npz

Runs serving_default on the arrays of INPUTS.npz (keyword = input name) and saves every
output to OUTPUTS.npz; exits non-zero if tal_tf got imported.
"""
import importlib.abc
import os
import sys


class _BlockTalTf(importlib.abc.MetaPathFinder):
  """Makes `import tal_tf` fail, proving the SavedModel does not need the library."""

  def find_spec(self, fullname, path, target=None):
    if fullname.split(".")[0] == "tal_tf":
      raise ImportError(f"{fullname} is blocked in this process")
    return None


sys.meta_path.insert(0, _BlockTalTf())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position


def main(export_dir, inputs_path, outputs_path):
  loaded = tf.saved_model.load(export_dir)
  fn = loaded.signatures["serving_default"]
  with np.load(inputs_path) as data:
    inputs = {k: tf.constant(data[k]) for k in data.files}
  outputs = {k: v.numpy() for k, v in fn(**inputs).items()}
  np.savez(outputs_path, **outputs)
  leaked = [m for m in sys.modules if m.split(".")[0] == "tal_tf"]
  if leaked:
    print(f"tal_tf modules imported: {leaked}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main(*sys.argv[1:4]))
