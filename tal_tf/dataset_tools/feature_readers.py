"""Readers of per-video feature files, treating every file as untrusted input.

Three layouts (DESIGN.md exchange format):
  * `NpyDirSource`: one directory per stream holding `<video_id>.npy` float [T, D_stream].
  * `ConcatNpySource`: one directory of `<video_id>.npy` [T, sum(D)] split into streams by
    declared dims (in declaration order).
  * `Hdf5Source`: an HDF5 file with one dataset `/<video_id>` per video ([T, sum(D)], split
    by dims), or one such file per stream. Read through tensorflow-io.

Safety: .npy files are loaded with allow_pickle=False (an object array is reported, never
unpickled); HDF5 files are opened read-only and their structure is first checked with h5py,
because tensorflow-io's HDF5 reader crashes the process on a file that is not HDF5. Any bad
file raises FeatureError with a quirk kind, which the converter counts and skips.
"""

import collections
import os

import numpy as np

_NUMERIC_KINDS = "fiu"  # float, signed int, unsigned int; everything else is refused.


class FeatureError(Exception):
  """A video's features cannot be used; `kind` is a quirks.QUIRK_KINDS key."""

  def __init__(self, kind, message):
    super().__init__(message)
    self.kind = kind
    self.message = message


def _parse_stream_list(text, what, example, convert, expected=None):
  """'NAME:VALUE,...' -> OrderedDict(NAME=convert(VALUE)); strict (split at the first ':').

  `convert` returns None for a bad value; `expected` describes the form in errors."""
  expected = expected or f"NAME:{what.upper()}"
  out = collections.OrderedDict()
  for part in [p.strip() for p in str(text).split(",") if p.strip()]:
    name, sep, value = part.partition(":")
    name, value = name.strip(), value.strip()
    converted = convert(value) if sep and name and value else None
    if converted is None:
      raise ValueError(f"bad stream {what} {part!r} in {text!r}: expected {expected}, "
                       f"e.g. {example!r}")
    if name in out:
      raise ValueError(f"stream {name!r} given twice in {text!r}")
    out[name] = converted
  if not out:
    raise ValueError(f"no streams in {text!r}: expected e.g. {example!r}")
  return out


def _positive_int(value):
  try:
    dim = int(value)
  except ValueError:
    return None
  return dim if dim >= 1 else None


def parse_stream_dims(text):
  """'rgb:1024,flow:1024' -> OrderedDict(rgb=1024, flow=1024); strict (DIM >= 1)."""
  return _parse_stream_list(text, "dim", "rgb:1024,flow:1024", _positive_int,
                            expected="NAME:DIM with DIM >= 1")


def parse_stream_paths(text, what="path"):
  """'rgb:DIR1,flow:DIR2' -> OrderedDict(rgb=DIR1, flow=DIR2) (split at the first ':')."""
  return _parse_stream_list(text, what, "rgb:features/rgb,flow:features/flow", lambda v: v)


def check_features(array, expected_dim, where):
  """Validates one [T, D] feature array and returns it as float32; raises FeatureError."""
  if not isinstance(array, np.ndarray):
    raise FeatureError("features_malformed", f"{where}: not an array ({type(array).__name__})")
  if array.dtype.kind not in _NUMERIC_KINDS or array.dtype.fields is not None:
    raise FeatureError("features_malformed", f"{where}: dtype {array.dtype} is not numeric")
  if array.ndim != 2:
    raise FeatureError("features_wrong_dim", f"{where}: shape {array.shape}, expected "
                       f"[T, {expected_dim}]")
  if array.shape[0] == 0:
    raise FeatureError("features_empty", f"{where}: shape {array.shape} has no steps")
  if expected_dim is not None and array.shape[1] != expected_dim:
    raise FeatureError("features_wrong_dim", f"{where}: shape {array.shape}, expected "
                       f"[T, {expected_dim}]")
  with np.errstate(over="ignore"):  # Overflow to inf is caught just below.
    values = array.astype(np.float32, copy=False)
  if not np.all(np.isfinite(values)):
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    raise FeatureError("features_non_finite", f"{where}: {bad} NaN/Inf values")
  return values


def load_npy(path):
  """Loads an untrusted .npy file without pickle; raises FeatureError on any problem."""
  if not os.path.isfile(path):
    raise FeatureError("features_missing", f"{path} does not exist")
  try:
    array = np.load(path, allow_pickle=False)
  except Exception as e:  # Any parse failure of untrusted bytes is a malformed file.
    raise FeatureError("features_malformed", f"{path}: cannot load as .npy without pickle "
                       f"({type(e).__name__}: {e})") from None
  if not isinstance(array, np.ndarray):
    if hasattr(array, "close"):
      array.close()
    raise FeatureError("features_malformed", f"{path}: not a single .npy array "
                       f"(got {type(array).__name__})")
  return array


def _npy_shape(path):
  """Reads only the header of an .npy file -> shape, or None if unreadable."""
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
      else:
        return None
    return shape if dtype.kind in _NUMERIC_KINDS else None
  except Exception:  # Unreadable headers are reported when the video itself is read.
    return None


class NpyDirSource:
  """One directory of `<video_id>.npy` [T, D] per stream."""

  def __init__(self, stream_dirs, stream_dims=None):
    self.stream_dirs = collections.OrderedDict(stream_dirs)
    for stream, directory in self.stream_dirs.items():
      if not os.path.isdir(directory):
        raise ValueError(f"feature directory of stream {stream!r} does not exist: "
                         f"{directory!r}")
    if stream_dims is not None:
      unknown = set(stream_dims) ^ set(self.stream_dirs)
      if unknown:
        raise ValueError(f"--stream_dims streams {list(stream_dims)} do not match the "
                         f"--features streams {list(self.stream_dirs)}")
      stream_dims = collections.OrderedDict((s, int(stream_dims[s])) for s in self.stream_dirs)
    self.stream_dims = stream_dims

  def prepare(self, video_ids):
    """Infers undeclared dims: the most common D among the videos' .npy headers."""
    if self.stream_dims is not None:
      return self.stream_dims
    dims = collections.OrderedDict()
    for stream, directory in self.stream_dirs.items():
      counts = collections.Counter()
      for video_id in video_ids:
        shape = _npy_shape(os.path.join(directory, video_id + ".npy"))
        if shape is not None and len(shape) == 2 and shape[0] > 0:
          counts[shape[1]] += 1
      if not counts:
        raise ValueError(f"cannot infer the feature dim of stream {stream!r}: no readable "
                         f"[T, D] .npy file for the selected videos in {directory!r}; pass "
                         f"--stream_dims")
      # Most common dim wins; ties go to the smaller dim so the choice is deterministic.
      dims[stream] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    self.stream_dims = dims
    return dims

  def read(self, video_id):
    """-> {stream: float32 [T_s, D_s]}; raises FeatureError."""
    if self.stream_dims is None:
      raise RuntimeError("call prepare(video_ids) before read()")
    out = collections.OrderedDict()
    for stream, directory in self.stream_dirs.items():
      path = os.path.join(directory, video_id + ".npy")
      out[stream] = check_features(load_npy(path), self.stream_dims[stream], path)
    return out


def split_streams(array, stream_dims, where):
  """Splits a checked [T, sum(D)] array into {stream: [T, D]} columns in declared order."""
  out = collections.OrderedDict()
  col = 0
  for stream, dim in stream_dims.items():
    out[stream] = array[:, col:col + dim]
    col += dim
  return out


class ConcatNpySource:
  """One directory of `<video_id>.npy` [T, sum(D)], split by declared stream dims."""

  def __init__(self, directory, stream_dims):
    if not os.path.isdir(directory):
      raise ValueError(f"--concat_features directory does not exist: {directory!r}")
    if not stream_dims:
      raise ValueError("--concat_features needs --stream_dims, e.g. rgb:1024,flow:1024")
    self.directory = directory
    self.stream_dims = collections.OrderedDict(stream_dims)

  def prepare(self, video_ids):
    """Nothing to scan: dims are declared. Returns them."""
    return self.stream_dims

  def read(self, video_id):
    """-> {stream: float32 [T, D_s]} split from one [T, sum(D)] file; raises FeatureError."""
    path = os.path.join(self.directory, video_id + ".npy")
    total = sum(self.stream_dims.values())
    array = check_features(load_npy(path), total, path)
    return split_streams(array, self.stream_dims, path)


class Hdf5Source:
  """HDF5 file(s) with one dataset per video, read through tensorflow-io.

  `files`: one path (each dataset [T, sum(D)] split by dims) or {stream: path} (each
  dataset [T, D_stream]).
  """

  def __init__(self, files, stream_dims):
    if not stream_dims:
      raise ValueError("--hdf5_features needs --stream_dims, e.g. rgb:1024,flow:1024")
    self.stream_dims = collections.OrderedDict(stream_dims)
    if isinstance(files, str):
      self.files = collections.OrderedDict([(None, files)])
    else:
      files = collections.OrderedDict(files)
      if set(files) != set(self.stream_dims):
        raise ValueError(f"--hdf5_features streams {list(files)} do not match --stream_dims "
                         f"streams {list(self.stream_dims)}")
      self.files = files
    for path in self.files.values():
      if not os.path.isfile(path):
        raise ValueError(f"HDF5 feature file does not exist: {path!r}")
    self._meta = {}       # path -> {key: (shape, dtype kind)} or an error string
    self._io = {}         # path -> tfio IOTensor

  def _scan(self, path):
    """Lists datasets (shape, dtype) with h5py, read-only; returns dict or error string."""
    import h5py  # Imported lazily: only the HDF5 path needs it.
    try:
      meta = {}
      with h5py.File(path, "r") as f:
        def visit(name, obj):
          if isinstance(obj, h5py.Dataset):
            meta["/" + name] = (tuple(obj.shape), obj.dtype.kind, obj.dtype)
        f.visititems(visit)
      return meta
    except Exception as e:  # Not HDF5, truncated, unreadable: report, never pass to tfio.
      return f"{path}: not a readable HDF5 file ({type(e).__name__}: {e})"

  def prepare(self, video_ids):
    """Checks every file's structure with h5py (read-only). Returns the declared dims."""
    for path in self.files.values():
      self._meta[path] = self._scan(path)
    return self.stream_dims

  def _read_dataset(self, path, video_id, expected_dim):
    """Reads and checks /<video_id> of one file through tensorflow-io."""
    meta = self._meta.get(path)
    if meta is None:
      meta = self._meta[path] = self._scan(path)
    if isinstance(meta, str):
      raise FeatureError("features_malformed", meta)
    key = "/" + video_id
    where = f"{path}:{key}"
    if key not in meta:
      raise FeatureError("features_missing", f"{where} does not exist")
    shape, kind, dtype = meta[key]
    if kind not in _NUMERIC_KINDS or dtype.fields is not None:
      raise FeatureError("features_malformed", f"{where}: dtype {dtype} is not numeric")
    if len(shape) != 2:
      raise FeatureError("features_wrong_dim", f"{where}: shape {shape}, expected "
                         f"[T, {expected_dim}]")
    if shape[0] == 0:
      raise FeatureError("features_empty", f"{where}: shape {shape} has no steps")
    if shape[1] != expected_dim:
      raise FeatureError("features_wrong_dim", f"{where}: shape {shape}, expected "
                         f"[T, {expected_dim}]")
    try:
      if path not in self._io:
        import tensorflow_io as tfio  # Lazy: loading its ops costs time.
        self._io[path] = tfio.IOTensor.from_hdf5(path)
      array = self._io[path](key).to_tensor().numpy()
    except Exception as e:
      raise FeatureError("features_malformed", f"{where}: tensorflow-io could not read it "
                         f"({type(e).__name__}: {e})") from None
    return check_features(array, expected_dim, where)

  def read(self, video_id):
    """-> {stream: float32 [T, D_s]} for one video; raises FeatureError."""
    if None in self.files:
      path = self.files[None]
      array = self._read_dataset(path, video_id, sum(self.stream_dims.values()))
      return split_streams(array, self.stream_dims, path)
    return collections.OrderedDict(
        (stream, self._read_dataset(self.files[stream], video_id, self.stream_dims[stream]))
        for stream in self.stream_dims)
