"""Per-video feature readers, one family for the converter and for inference.

Every file is untrusted input. Layouts (DESIGN.md exchange formats):
  * `NpyDirSource`: one directory per stream holding `<video_id>.npy` [T, D_stream].
  * `ConcatNpySource`: one directory of `<video_id>.npy` [T, sum(D)] split into streams by
    the declared dims (in declaration order).
  * `Hdf5Source`: an HDF5 file with one dataset `/<video_id>` per video ([T, sum(D)], split
    by the dims), or one such file per stream ([T, D_stream]); sliced through h5py.
  * `TfRecordSource`: SequenceExample TFRecords as written by the converter (a record is one
    video, decoded whole).

A source gives, per video id, a `Video` (`source.video(video_id)`): its id, num_steps (the
common length of its streams), per-stream lengths, feature_fps and `read(start, stop)` ->
{stream: float32 [stop - start, D]}. Only headers are parsed when a Video is opened; rows are
read on demand (a seek for .npy, no memory map whose touched pages would stay resident), so a
window of a multi-hour video costs only its own rows. The converter reads whole videos
(`source.read(video_id)`), inference iterates `(video_id, Video or FeatureError)` pairs and
reads windows.

Safety: .npy is never unpickled (object arrays are refused from the header); dtypes and shapes
are checked before any data is read; HDF5 files are opened read-only with h5py. Every problem
raises `FeatureError` whose `kind` is a converter quirk kind (quirks.QUIRK_KINDS) and whose
message names the file, video, stream and steps.
"""

import collections
import glob
import os

import numpy as np

_NUMERIC_KINDS = "fiu"  # float, signed int, unsigned int; everything else is refused.


class FeatureError(ValueError):
  """A video's features cannot be used; `kind` is a quirks.QUIRK_KINDS key.

  FeatureError(kind, message), or FeatureError(message) for a reason without a quirk kind
  (counted as features_malformed)."""

  def __init__(self, kind, message=None):
    if message is None:
      kind, message = "features_malformed", kind
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


def check_fps(feature_fps, what):
  """feature_fps as a float > 0, else ValueError naming the flag `what` needs."""
  if feature_fps is None or not np.isfinite(feature_fps) or feature_fps <= 0:
    raise ValueError(f"{what} needs --feature_fps > 0 (feature steps per second), got "
                     f"{feature_fps!r}")
  return float(feature_fps)


def steps_tolerance(num_steps, length_tolerance=0.1):
  """Largest accepted difference in steps (between streams, or from duration x rate): the
  relative tolerance with a 2-step floor, since extractors often give streams one or two
  steps apart (dropping a final partial window)."""
  return max(2.0, float(length_tolerance) * num_steps)


def check_meta(shape, dtype, expected_dim, where):
  """Checks a feature array's shape [T, expected_dim] and numeric dtype before reading it."""
  if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
    raise FeatureError("features_malformed", f"{where}: dtype {dtype} is not numeric")
  if len(shape) != 2 or (expected_dim is not None and shape[1] != expected_dim):
    raise FeatureError("features_wrong_dim", f"{where}: shape {tuple(shape)}, expected "
                       f"[T, {expected_dim if expected_dim is not None else 'D'}]")


def check_features(array, expected_dim, where, first_step=0):
  """Validates one [T, D] feature array and returns it as float32; raises FeatureError
  (NaN/Inf, including float32 overflow, are reported with their steps from first_step)."""
  if not isinstance(array, np.ndarray):
    raise FeatureError("features_malformed", f"{where}: not an array ({type(array).__name__})")
  check_meta(array.shape, array.dtype, expected_dim, where)
  if array.shape[0] == 0:
    raise FeatureError("features_empty", f"{where}: shape {array.shape} has no steps")
  with np.errstate(over="ignore"):  # Overflow to inf is caught just below.
    values = array.astype(np.float32, copy=False)
  finite = np.isfinite(values)
  if not finite.all():
    steps = np.flatnonzero(~finite.all(axis=1)) + first_step
    raise FeatureError("features_non_finite", f"{where}: {int(np.size(finite) - finite.sum())}"
                       f" NaN/Inf values at steps {steps[:10].tolist()}")
  return values


class NpyRows:
  """Row ranges of a 2-D .npy file read on demand (header parsed once, never unpickled)."""

  def __init__(self, path):
    self.path = path
    if not os.path.isfile(path):
      raise FeatureError("features_missing", f"{path} does not exist")
    try:
      with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
          shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
          shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
          raise ValueError(f"unsupported .npy version {version}")
        self.offset = f.tell()
        size = f.seek(0, os.SEEK_END)
    except Exception as e:  # Untrusted bytes: any parse failure is a malformed file.
      raise FeatureError("features_malformed", f"{path}: cannot read as a numeric .npy array "
                         f"without pickle ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
      raise FeatureError("features_malformed", f"{path}: object arrays are refused (reading "
                         "them would need unpickling)")
    self.shape = tuple(shape)
    self.dtype = dtype
    self.fortran_order = fortran_order
    expected = self.offset + int(np.prod(shape)) * dtype.itemsize
    if size < expected:
      raise FeatureError("features_malformed", f"{path}: truncated ({size} bytes, header "
                         f"announces {expected})")

  def read(self, start, stop):
    """Rows [start, stop) as an array [stop - start, D] (shape checked by the caller)."""
    dim = self.shape[1]
    if self.fortran_order:
      # Column-major rows are not contiguous: map the file and copy the rows asked for.
      mapped = np.load(self.path, mmap_mode="r", allow_pickle=False)
      return np.array(mapped[start:stop])
    with open(self.path, "rb") as f:
      f.seek(self.offset + start * dim * self.dtype.itemsize)
      values = np.fromfile(f, dtype=self.dtype, count=(stop - start) * dim)
    return values.reshape(stop - start, dim)


def _npy_dim(path):
  """D of a readable numeric [T>0, D] .npy header, or None."""
  try:
    rows = NpyRows(path)
  except FeatureError:
    return None
  if rows.dtype.kind not in _NUMERIC_KINDS or len(rows.shape) != 2 or rows.shape[0] == 0:
    return None
  return rows.shape[1]


class Video:
  """One video's features: id, num_steps (common length of its streams), per-stream lengths,
  feature_fps (None when the source has none), duration in seconds when the source knows it
  apart from the features (records' video/duration; None otherwise) and a windowed reader."""

  def __init__(self, video_id, num_steps, feature_fps, reader, where, stream_lengths=None,
               duration=None):
    self.video_id = video_id
    self.num_steps = int(num_steps)
    self.feature_fps = None if feature_fps is None else float(feature_fps)
    self.duration = float(duration) if duration and np.isfinite(duration) and duration > 0 \
        else None
    self._reader = reader
    self.where = where
    self.stream_lengths = dict(stream_lengths or {})

  def read(self, start, stop):
    """{stream: float32 [stop - start, D]} for steps [start, stop); checks finiteness.
    Frame streams (uint8 [stop - start, H, W, 3], inference/video_source.py) pass as they
    are."""
    if not 0 <= start <= stop <= self.num_steps:
      raise ValueError(f"video {self.video_id}: window [{start}, {stop}) outside "
                       f"[0, {self.num_steps}]")
    out = collections.OrderedDict()
    for stream, values in self._reader(start, stop).items():
      values = np.asarray(values)
      if values.dtype == np.uint8 and values.ndim == 4:
        out[stream] = values
        continue
      if stop > start:
        values = check_features(values, None,
                                f"{self.where}: stream {stream!r} of video {self.video_id!r}",
                                first_step=start)
      out[stream] = values.astype(np.float32, copy=False)
    return out


class _Source:
  """Shared behaviour: video ids, iteration for inference, whole-video reads for the
  converter. Subclasses set stream_dims / feature_fps / length_tolerance and define
  `video(video_id)` and `_discover_ids()`."""

  flag = "features"
  stream_dims = None
  feature_fps = None
  length_tolerance = 0.1
  _video_ids = None

  def prepare(self, video_ids):
    """Returns the stream dims {stream: D} (declared, or inferred by NpyDirSource)."""
    del video_ids
    return self.stream_dims

  def read(self, video_id):
    """{stream: float32 [T, D]}: the whole video (streams trimmed to their common length);
    raises FeatureError."""
    video = self.video(video_id)
    return video.read(0, video.num_steps)

  @property
  def video_ids(self):
    """Ids to iterate: the ones given, else every video found."""
    if self._video_ids is None:
      self._video_ids = self._discover_ids()
    return self._video_ids

  def __iter__(self):
    """(video_id, Video or FeatureError) pairs: one bad video never stops the others."""
    check_fps(self.feature_fps, f"--{self.flag}")
    ids = self.video_ids

    def pairs():
      for video_id in ids:
        try:
          yield video_id, self.video(video_id)
        except FeatureError as e:
          yield video_id, e
    return pairs()


def common_length(lengths, video_id, where, length_tolerance=0.1):
  """Shortest of the stream lengths {stream: T}, refusing differences beyond the tolerance
  (an empty stream makes an empty video)."""
  shortest, longest = min(lengths.values()), max(lengths.values())
  tolerance = steps_tolerance(longest, length_tolerance)
  if shortest > 0 and longest - shortest > tolerance:
    raise FeatureError(
        "stream_length_mismatch",
        f"{where}: streams of video {video_id!r} differ in length "
        f"({', '.join(f'{s}={n}' for s, n in lengths.items())}), beyond the tolerance of "
        f"{tolerance:g} steps")
  return shortest


def _ordered_dims(stream_dims, names, flag):
  """stream_dims reordered like `names` after checking both name the same streams."""
  if set(stream_dims) != set(names):
    raise ValueError(f"--{flag} streams {list(names)} must be the streams "
                     f"{list(stream_dims)} of the model (or of --stream_dims)")
  return collections.OrderedDict((s, int(stream_dims[s])) for s in stream_dims)


class NpyDirSource(_Source):
  """One directory of `<video_id>.npy` [T, D] per stream."""

  def __init__(self, stream_dirs, stream_dims=None, feature_fps=None, video_ids=None,
               length_tolerance=0.1):
    """stream_dirs {stream: dir}; stream_dims {stream: D} (None: inferred by prepare());
    feature_fps > 0 (needed to iterate); video_ids to iterate (None: every .npy found)."""
    stream_dirs = collections.OrderedDict(stream_dirs)
    for stream, directory in stream_dirs.items():
      if not os.path.isdir(directory):
        raise ValueError(f"feature directory of stream {stream!r} does not exist: "
                         f"{directory!r}")
    if stream_dims is not None:
      stream_dims = _ordered_dims(stream_dims, stream_dirs, self.flag)
      stream_dirs = collections.OrderedDict((s, stream_dirs[s]) for s in stream_dims)
    self.stream_dirs = stream_dirs
    self.stream_dims = stream_dims
    self.feature_fps = feature_fps
    self.length_tolerance = length_tolerance
    self._video_ids = list(video_ids) if video_ids else None

  def _discover_ids(self):
    first = next(iter(self.stream_dirs.values()))
    found = sorted(name[:-4] for name in os.listdir(first) if name.endswith(".npy"))
    if not found:
      raise ValueError(f"no <video_id>.npy files in {first!r}")
    return found

  def prepare(self, video_ids):
    """Infers undeclared dims: the most common D among the videos' .npy headers."""
    if self.stream_dims is not None:
      return self.stream_dims
    dims = collections.OrderedDict()
    for stream, directory in self.stream_dirs.items():
      counts = collections.Counter(
          d for d in (_npy_dim(os.path.join(directory, v + ".npy")) for v in video_ids)
          if d is not None)
      if not counts:
        raise ValueError(f"cannot infer the feature dim of stream {stream!r}: no readable "
                         f"[T, D] .npy file for the selected videos in {directory!r}; pass "
                         f"--stream_dims")
      # Most common dim wins; ties go to the smaller dim so the choice is deterministic.
      dims[stream] = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    self.stream_dims = dims
    return dims

  def video(self, video_id):
    """Video for one id (headers checked); raises FeatureError."""
    if self.stream_dims is None:
      raise RuntimeError("call prepare(video_ids) first, or give stream_dims")
    rows, lengths = {}, collections.OrderedDict()
    for stream, directory in self.stream_dirs.items():
      path = os.path.join(directory, video_id + ".npy")
      rows[stream] = NpyRows(path)
      check_meta(rows[stream].shape, rows[stream].dtype, self.stream_dims[stream], path)
      lengths[stream] = rows[stream].shape[0]
    where = os.path.join(next(iter(self.stream_dirs.values())), video_id + ".npy")
    num_steps = common_length(lengths, video_id, where, self.length_tolerance)
    return Video(video_id, num_steps, self.feature_fps,
                 lambda a, b: {s: r.read(a, b) for s, r in rows.items()}, where, lengths)


def _split_columns(block, stream_dims):
  """[T, sum(D)] -> {stream: [T, D]} in declared order."""
  offsets = np.cumsum([0] + list(stream_dims.values()))
  return {s: block[:, offsets[i]:offsets[i + 1]] for i, s in enumerate(stream_dims)}


class ConcatNpySource(_Source):
  """One directory of `<video_id>.npy` [T, sum(D)], split by the declared stream dims."""

  flag = "concat_features"

  def __init__(self, directory, stream_dims, feature_fps=None, video_ids=None,
               length_tolerance=0.1):
    if not os.path.isdir(directory):
      raise ValueError(f"--concat_features directory does not exist: {directory!r}")
    if not stream_dims:
      raise ValueError("--concat_features needs --stream_dims, e.g. rgb:1024,flow:1024")
    self.directory = directory
    self.stream_dims = collections.OrderedDict(stream_dims)
    self.feature_fps = feature_fps
    self.length_tolerance = length_tolerance
    self._video_ids = list(video_ids) if video_ids else None

  def _discover_ids(self):
    return sorted(n[:-4] for n in os.listdir(self.directory) if n.endswith(".npy"))

  def video(self, video_id):
    """Video for one id (header checked); raises FeatureError."""
    path = os.path.join(self.directory, video_id + ".npy")
    rows = NpyRows(path)
    check_meta(rows.shape, rows.dtype, sum(self.stream_dims.values()), path)
    lengths = {s: rows.shape[0] for s in self.stream_dims}
    return Video(video_id, rows.shape[0], self.feature_fps,
                 lambda a, b: _split_columns(rows.read(a, b), self.stream_dims), path, lengths)


class Hdf5Source(_Source):
  """HDF5 dataset `/<video_id>` per video: one file [T, sum(D)] or one file per stream."""

  flag = "hdf5_features"

  def __init__(self, files, stream_dims, feature_fps=None, video_ids=None,
               length_tolerance=0.1):
    """files: a path, or {stream: path}; stream_dims {stream: D} in model order."""
    if not stream_dims:
      raise ValueError("--hdf5_features needs --stream_dims, e.g. rgb:1024,flow:1024")
    self.stream_dims = collections.OrderedDict(stream_dims)
    if isinstance(files, str):
      self.files = collections.OrderedDict([(None, files)])
    else:
      files = collections.OrderedDict(files)
      _ordered_dims(self.stream_dims, files, self.flag)
      self.files = collections.OrderedDict((s, files[s]) for s in self.stream_dims)
    for path in self.files.values():
      if not os.path.isfile(path):
        raise ValueError(f"HDF5 feature file does not exist: {path!r}")
    self.feature_fps = feature_fps
    self.length_tolerance = length_tolerance
    self._video_ids = list(video_ids) if video_ids else None
    self._handles = {}

  def _handle(self, path):
    """Read-only h5py handle; a file that is not HDF5 is a FeatureError for every video."""
    if path not in self._handles:
      import h5py  # pylint: disable=g-import-not-at-top  # Only this layout needs it.
      try:
        self._handles[path] = h5py.File(path, "r")
      except Exception as e:  # Not HDF5 / truncated: report, never crash.
        self._handles[path] = FeatureError(
            "features_malformed", f"{path}: not a readable HDF5 file ({type(e).__name__}: "
                                  f"{e})")
    handle = self._handles[path]
    if isinstance(handle, FeatureError):
      raise handle
    return handle

  def _discover_ids(self):
    import h5py  # pylint: disable=g-import-not-at-top
    path = next(iter(self.files.values()))
    try:
      handle = self._handle(path)
    except FeatureError as e:
      raise ValueError(e.message) from None
    found = sorted(k for k, v in handle.items() if isinstance(v, h5py.Dataset))
    if not found:
      raise ValueError(f"no per-video datasets in {path!r}")
    return found

  def _dataset(self, path, video_id, dim):
    import h5py  # pylint: disable=g-import-not-at-top
    where = f"{path}:/{video_id}"
    dataset = self._handle(path).get(video_id)
    if not isinstance(dataset, h5py.Dataset):
      raise FeatureError("features_missing", f"{where} does not exist")
    check_meta(dataset.shape, dataset.dtype, dim, where)
    return dataset

  def video(self, video_id):
    """Video for one id (dataset shapes and dtypes checked); raises FeatureError."""
    if None in self.files:
      path = self.files[None]
      dataset = self._dataset(path, video_id, sum(self.stream_dims.values()))
      lengths = {s: dataset.shape[0] for s in self.stream_dims}
      return Video(video_id, dataset.shape[0], self.feature_fps,
                   lambda a, b: _split_columns(dataset[a:b], self.stream_dims),
                   f"{path}:/{video_id}", lengths)
    datasets = {s: self._dataset(self.files[s], video_id, d)
                for s, d in self.stream_dims.items()}
    where = f"{self.files[next(iter(self.stream_dims))]}:/{video_id}"
    lengths = collections.OrderedDict((s, d.shape[0]) for s, d in datasets.items())
    num_steps = common_length(lengths, video_id, where, self.length_tolerance)
    return Video(video_id, num_steps, self.feature_fps,
                 lambda a, b: {s: d[a:b] for s, d in datasets.items()}, where, lengths)


class TfRecordSource:
  """SequenceExample TFRecords (converter output); fps and length come from each record."""

  def __init__(self, patterns, stream_dims, video_ids=None, length_tolerance=0.1):
    self.stream_dims = collections.OrderedDict(stream_dims)
    self.length_tolerance = length_tolerance
    paths = []
    for pattern in patterns:
      matched = sorted(glob.glob(pattern))
      if not matched:
        raise ValueError(f"--tfrecords pattern {pattern!r} matches no file")
      paths.extend(matched)
    self.paths = paths
    self._wanted = set(video_ids) if video_ids else None

  def __iter__(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tal_tf.data import sequence_example  # pylint: disable=g-import-not-at-top
    for path in self.paths:
      for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        where = f"{path}[record {index}]"
        try:
          decoded = sequence_example.decode_sequence_example_numpy(record, self.stream_dims)
        except Exception as e:  # A corrupt record is reported, not fatal for the others.
          yield where, FeatureError("features_malformed", f"{where}: cannot decode "
                                    f"SequenceExample ({type(e).__name__}: {e})")
          continue
        video_id = decoded["video_id"]
        if self._wanted is not None and video_id not in self._wanted:
          continue
        try:
          yield video_id, self._video(decoded, where)
        except FeatureError as e:
          yield video_id, e

  def _video(self, decoded, where):
    arrays = {}
    for stream, dim in self.stream_dims.items():
      if stream not in decoded["features"]:
        raise FeatureError("features_missing", f"{where}: video {decoded['video_id']!r} has "
                           f"no feature list features/{stream}")
      array = decoded["features"][stream]
      check_meta(array.shape, array.dtype, dim, f"{where} features/{stream}")
      arrays[stream] = array
    lengths = {s: a.shape[0] for s, a in arrays.items()}
    num_steps = common_length(lengths, decoded["video_id"], where, self.length_tolerance)
    fps = decoded["feature_fps"]
    if not np.isfinite(fps) or fps <= 0:
      raise FeatureError("features_malformed", f"{where}: video/feature_fps must be > 0, got "
                         f"{fps}")
    return Video(decoded["video_id"], num_steps, fps,
                 lambda a, b: {s: x[a:b] for s, x in arrays.items()}, where, lengths,
                 duration=decoded.get("duration"))


def hdf5_files(spec):
  """--hdf5_features value -> one path, or {stream: path} for 'rgb:FILE,flow:FILE'."""
  if ":" in spec and not os.path.exists(spec):
    return parse_stream_paths(spec, "file")
  return spec


def open_source(stream_dims, features=None, hdf5_features=None, tfrecords=None,
                feature_fps=None, video_ids=None):
  """The inference source named by exactly one of `features` ('rgb:DIR,flow:DIR'),
  `hdf5_features` (a file, or 'rgb:FILE,flow:FILE') and `tfrecords` (glob patterns); npy
  and HDF5 need feature_fps > 0. stream_dims: the model's {stream: D}; video_ids: the videos
  to read (None: all found)."""
  given = [n for n, v in (("features", features), ("hdf5_features", hdf5_features),
                          ("tfrecords", tfrecords)) if v]
  if len(given) != 1:
    raise ValueError("give exactly one of --features, --hdf5_features or --tfrecords")
  if features:
    return NpyDirSource(parse_stream_paths(features, "dir"), stream_dims,
                        check_fps(feature_fps, "--features"), video_ids)
  if hdf5_features:
    return Hdf5Source(hdf5_files(hdf5_features), stream_dims,
                      check_fps(feature_fps, "--hdf5_features"), video_ids)
  return TfRecordSource(list(tfrecords), stream_dims, video_ids)
