"""Loads a SavedModel through TensorFlow's C API (the loader TF Serving uses) and runs it.

Run as a script in a fresh process that never imports the tensorflow Python package nor
tal_tf: only ctypes, numpy and the shared libraries shipped in the tensorflow wheel.

  python c_api_runner.py SPEC.json

SPEC: {"tf_lib_dir": dir holding libtensorflow_cc.so.2 and libtensorflow_framework.so.2,
"export_dir": ..., "inputs": {key: tensor name}, "outputs": {key: tensor name},
(feeds: float32 / int32 / int64 arrays, or bytes arrays (numpy 'S') as TF_STRING)
"runs": [{"name": str, "feeds": {key: path.npy}, "out_dir": dir or null}]}.
Each run either writes its outputs as <out_dir>/<key>.npy or records its error; the report
{"runs": {name: {"ok": bool, "code": int, "message": str}}, "modules": [tensorflow / tal_tf
modules imported (none)]} goes to stdout as JSON.
"""
import ctypes
import importlib.abc
import json
import os
import sys

import numpy as np


class _Block(importlib.abc.MetaPathFinder):
  """Makes `import tensorflow` / `import tal_tf` fail, proving neither is used."""

  def find_spec(self, fullname, path, target=None):
    if fullname.split(".")[0] in ("tensorflow", "tal_tf", "tf_keras", "keras"):
      raise ImportError(f"{fullname} is blocked in the C API runner")
    return None


sys.meta_path.insert(0, _Block())

_DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int32): 3, np.dtype(np.uint8): 4,
           np.dtype(np.int64): 9}
_NUMPY = {v: k for k, v in _DTYPES.items()}
TF_STRING = 7
TSTRING_BYTES = 24  # sizeof(TF_TString): each element of a TF_STRING tensor.


class TF_Output(ctypes.Structure):  # pylint: disable=invalid-name
  _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def load_library(tf_lib_dir):
  """dlopens the TensorFlow C library and declares the C API functions used here."""
  ctypes.CDLL(os.path.join(tf_lib_dir, "libtensorflow_framework.so.2"), mode=ctypes.RTLD_GLOBAL)
  lib = ctypes.CDLL(os.path.join(tf_lib_dir, "libtensorflow_cc.so.2"), mode=ctypes.RTLD_GLOBAL)
  vp, c_int = ctypes.c_void_p, ctypes.c_int
  signatures = {
      "TF_NewStatus": ([], vp),
      "TF_DeleteStatus": ([vp], None),
      "TF_GetCode": ([vp], c_int),
      "TF_Message": ([vp], ctypes.c_char_p),
      "TF_NewGraph": ([], vp),
      "TF_NewSessionOptions": ([], vp),
      "TF_NewBuffer": ([], vp),
      "TF_LoadSessionFromSavedModel": (
          [vp, vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), c_int, vp, vp, vp], vp),
      "TF_GraphOperationByName": ([vp, ctypes.c_char_p], vp),
      "TF_AllocateTensor": ([c_int, ctypes.POINTER(ctypes.c_int64), c_int, ctypes.c_size_t], vp),
      "TF_TensorData": ([vp], vp),
      "TF_TensorByteSize": ([vp], ctypes.c_size_t),
      "TF_NumDims": ([vp], c_int),
      "TF_Dim": ([vp, c_int], ctypes.c_int64),
      "TF_TensorType": ([vp], c_int),
      "TF_DeleteTensor": ([vp], None),
      "TF_StringInit": ([vp], None),
      "TF_StringCopy": ([vp, ctypes.c_char_p, ctypes.c_size_t], None),
      "TF_StringGetDataPointer": ([vp], vp),
      "TF_StringGetSize": ([vp], ctypes.c_size_t),
      "TF_SessionRun": ([vp, vp, ctypes.POINTER(TF_Output), ctypes.POINTER(vp), c_int,
                         ctypes.POINTER(TF_Output), ctypes.POINTER(vp), c_int,
                         vp, c_int, vp, vp], None),
  }
  for name, (args, result) in signatures.items():
    fn = getattr(lib, name)
    fn.argtypes = args
    fn.restype = result
  return lib


class CApiSession:
  """A session created by TF_LoadSessionFromSavedModel(tags={'serve'})."""

  def __init__(self, lib, export_dir):
    self.lib = lib
    status = lib.TF_NewStatus()
    self.graph = lib.TF_NewGraph()
    tags = (ctypes.c_char_p * 1)(b"serve")
    self.session = lib.TF_LoadSessionFromSavedModel(
        lib.TF_NewSessionOptions(), None, export_dir.encode(), tags, 1, self.graph,
        lib.TF_NewBuffer(), status)
    if lib.TF_GetCode(status) != 0:
      raise RuntimeError("TF_LoadSessionFromSavedModel failed: "
                         + lib.TF_Message(status).decode())
    lib.TF_DeleteStatus(status)

  def _output(self, tensor_name):
    op_name, _, index = tensor_name.partition(":")
    op = self.lib.TF_GraphOperationByName(self.graph, op_name.encode())
    if not op:
      raise KeyError(f"no operation {op_name!r} in the loaded graph")
    return TF_Output(op, int(index or 0))

  def _tensor(self, array):
    array = np.ascontiguousarray(array)
    dims = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
    if array.dtype.kind in ("S", "O"):
      # A TF_STRING tensor holds one TF_TString per element, each set by TF_StringCopy.
      tensor = self.lib.TF_AllocateTensor(TF_STRING, dims, array.ndim,
                                          TSTRING_BYTES * array.size)
      base = self.lib.TF_TensorData(tensor)
      for i, value in enumerate(array.reshape(-1)):
        element = ctypes.c_void_p(base + i * TSTRING_BYTES)
        self.lib.TF_StringInit(element)
        self.lib.TF_StringCopy(element, bytes(value), len(bytes(value)))
      return tensor
    tensor = self.lib.TF_AllocateTensor(_DTYPES[array.dtype], dims, array.ndim, array.nbytes)
    if array.nbytes:
      ctypes.memmove(self.lib.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
    return tensor

  def _array(self, tensor):
    lib = self.lib
    shape = [lib.TF_Dim(tensor, d) for d in range(lib.TF_NumDims(tensor))]
    if lib.TF_TensorType(tensor) == TF_STRING:
      base = lib.TF_TensorData(tensor)
      values = []
      for i in range(int(np.prod(shape))):
        element = ctypes.c_void_p(base + i * TSTRING_BYTES)
        values.append(ctypes.string_at(lib.TF_StringGetDataPointer(element),
                                       lib.TF_StringGetSize(element)))
      return np.array(values, dtype="S").reshape(shape)
    size = lib.TF_TensorByteSize(tensor)
    raw = ctypes.string_at(lib.TF_TensorData(tensor), size) if size else b""
    return np.frombuffer(raw, _NUMPY[lib.TF_TensorType(tensor)]).reshape(shape).copy()

  def run(self, feeds, fetches):
    """feeds {tensor name: array}, fetches [tensor name] -> (code, message, [arrays])."""
    lib = self.lib
    inputs = (TF_Output * len(feeds))(*[self._output(k) for k in feeds])
    values = (ctypes.c_void_p * len(feeds))(*[self._tensor(a) for a in feeds.values()])
    outputs = (TF_Output * len(fetches))(*[self._output(k) for k in fetches])
    results = (ctypes.c_void_p * len(fetches))()
    status = lib.TF_NewStatus()
    lib.TF_SessionRun(self.session, None, inputs, values, len(feeds), outputs, results,
                      len(fetches), None, 0, None, status)
    for i in range(len(feeds)):
      lib.TF_DeleteTensor(values[i])
    code = lib.TF_GetCode(status)
    message = lib.TF_Message(status).decode(errors="replace")
    lib.TF_DeleteStatus(status)
    if code != 0:
      return code, message, None
    arrays = []
    for i in range(len(fetches)):
      arrays.append(self._array(results[i]))
      lib.TF_DeleteTensor(results[i])
    return code, message, arrays


def main(spec_path):
  with open(spec_path) as f:
    spec = json.load(f)
  lib = load_library(spec["tf_lib_dir"])
  session = CApiSession(lib, spec["export_dir"])
  output_keys = sorted(spec["outputs"])
  fetches = [spec["outputs"][k] for k in output_keys]
  report = {}
  for run in spec["runs"]:
    feeds = {spec["inputs"][k]: np.load(path, allow_pickle=False)
             for k, path in run["feeds"].items()}
    code, message, arrays = session.run(feeds, fetches)
    report[run["name"]] = {"ok": code == 0, "code": code, "message": message}
    if arrays is not None and run.get("out_dir"):
      os.makedirs(run["out_dir"], exist_ok=True)
      for key, array in zip(output_keys, arrays):
        np.save(os.path.join(run["out_dir"], key + ".npy"), array)
  modules = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tal_tf"))
  print(json.dumps({"runs": report, "modules": modules}))


if __name__ == "__main__":
  main(sys.argv[1])
