"""Per-video feature readers for inference that read only the steps asked for.

Layouts (DESIGN.md exchange formats):
  * `NpyDirSource`: one directory of `<video_id>.npy` float [T, D_stream] per stream; only
    the header is parsed up front and each window's rows are read with a seek, so a window
    of a multi-hour video costs only its own rows (no memory map either, whose touched
    pages would stay resident for the life of the mapping).
  * `Hdf5Source`: one HDF5 file with a dataset `/<video_id>` [T, sum(D)] per video (columns
    split by the stream dims in model order), or one file per stream; sliced through h5py.
  * `TfRecordSource`: SequenceExample TFRecords as written by the converter (each record is
    decoded whole: a record is one video).

Iterating a source yields `(video_id, Video or FeatureError)` pairs, so one bad video is
reported without stopping the others; `Video.read(start, stop)` returns {stream: float32
[stop - start, D]} and raises `FeatureError` naming the file, video and steps when the
values are not finite. Files are untrusted: .npy is never unpickled, shapes and dtypes are
checked before any data is read.
"""

import collections
import glob
import os

import numpy as np

_NUMERIC_KINDS = "fiu"


class FeatureError(ValueError):
  """A video's features cannot be used (missing, wrong shape or dtype, NaN/Inf)."""


def stream_length_tolerance(num_steps):
  """Largest stream-length difference trimmed away (else an error): max(2, 10%) steps, the
  converter's rule, since extractors often give streams one or two steps apart."""
  return max(2.0, 0.1 * num_steps)


class Video:
  """One video's features: id, num_steps, feature_fps and a windowed reader."""

  def __init__(self, video_id, num_steps, feature_fps, reader, where):
    self.video_id = video_id
    self.num_steps = int(num_steps)
    self.feature_fps = float(feature_fps)
    self._reader = reader
    self.where = where

  def read(self, start, stop):
    """{stream: float32 [stop - start, D]} for steps [start, stop); checks finiteness."""
    if not 0 <= start <= stop <= self.num_steps:
      raise ValueError(f"video {self.video_id}: window [{start}, {stop}) outside "
                       f"[0, {self.num_steps}]")
    out = collections.OrderedDict()
    for stream, values in self._reader(start, stop).items():
      values = np.asarray(values, np.float32)
      if not np.all(np.isfinite(values)):
        bad = np.flatnonzero(~np.all(np.isfinite(values), axis=1)) + start
        raise FeatureError(f"{self.where}: stream {stream!r} of video {self.video_id!r} holds "
                           f"NaN/Inf at steps {bad[:10].tolist()}")
      out[stream] = values
    return out


def _check_array_meta(shape, dtype, expected_dim, where):
  if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
    raise FeatureError(f"{where}: dtype {dtype} is not numeric")
  if len(shape) != 2 or shape[1] != expected_dim:
    raise FeatureError(f"{where}: shape {tuple(shape)}, expected [T, {expected_dim}]")


def _common_length(lengths, video_id, where):
  """Shortest stream length, refusing differences beyond the tolerance."""
  shortest, longest = min(lengths.values()), max(lengths.values())
  if longest - shortest > stream_length_tolerance(longest):
    raise FeatureError(f"{where}: streams of video {video_id!r} differ in length "
                       f"({dict(lengths)}), beyond the tolerance of "
                       f"{stream_length_tolerance(longest):g} steps")
  return shortest


def _check_fps(feature_fps, what):
  if feature_fps is None or not np.isfinite(feature_fps) or feature_fps <= 0:
    raise ValueError(f"{what} needs --feature_fps > 0 (feature steps per second), got "
                     f"{feature_fps!r}")
  return float(feature_fps)


class NpyRows:
  """Row ranges of a C-ordered 2-D .npy file, read on demand (header parsed once)."""

  def __init__(self, path):
    self.path = path
    try:
      with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
          shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        else:
          shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        self.offset = f.tell()
        f.seek(0, os.SEEK_END)
        size = f.tell()
    except Exception as e:  # Untrusted bytes: any parse failure is a bad file.
      raise FeatureError(f"{path}: cannot read as a numeric .npy array "
                         f"({type(e).__name__}: {e})") from None
    if dtype.hasobject:
      raise FeatureError(f"{path}: object arrays are refused (they would need unpickling)")
    if fortran_order and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
      raise FeatureError(f"{path}: Fortran-ordered arrays are not supported; save with "
                         "np.save(path, np.ascontiguousarray(x))")
    self.shape = tuple(shape)
    self.dtype = dtype
    expected = self.offset + int(np.prod(shape)) * dtype.itemsize
    if size < expected:
      raise FeatureError(f"{path}: truncated ({size} bytes, header announces {expected})")

  def read(self, start, stop):
    """Rows [start, stop) as an array [stop - start, D]."""
    dim = self.shape[1]
    with open(self.path, "rb") as f:
      f.seek(self.offset + start * dim * self.dtype.itemsize)
      values = np.fromfile(f, dtype=self.dtype, count=(stop - start) * dim)
    return values.reshape(stop - start, dim)


class NpyDirSource:
  """`<video_id>.npy` [T, D] per stream directory, read window by window."""

  def __init__(self, stream_dirs, stream_dims, feature_fps, video_ids=None):
    """stream_dirs {stream: dir}; stream_dims {stream: D} (the model's); feature_fps > 0."""
    self.stream_dims = collections.OrderedDict(stream_dims)
    missing = [s for s in self.stream_dims if s not in stream_dirs]
    extra = [s for s in stream_dirs if s not in self.stream_dims]
    if missing or extra:
      raise ValueError(f"--features streams {list(stream_dirs)} must be the model's streams "
                       f"{list(self.stream_dims)}")
    for stream, directory in stream_dirs.items():
      if not os.path.isdir(directory):
        raise ValueError(f"feature directory of stream {stream!r} does not exist: "
                         f"{directory!r}")
    self.stream_dirs = collections.OrderedDict((s, stream_dirs[s]) for s in self.stream_dims)
    self.feature_fps = _check_fps(feature_fps, "--features")
    first = next(iter(self.stream_dirs.values()))
    found = sorted(name[:-4] for name in os.listdir(first) if name.endswith(".npy"))
    self.video_ids = list(video_ids) if video_ids else found
    if not self.video_ids:
      raise ValueError(f"no <video_id>.npy files in {first!r}")

  def _open(self, video_id):
    arrays, lengths = {}, {}
    for stream, directory in self.stream_dirs.items():
      path = os.path.join(directory, video_id + ".npy")
      if not os.path.isfile(path):
        raise FeatureError(f"{path}: missing (stream {stream!r} of video {video_id!r})")
      rows = NpyRows(path)
      _check_array_meta(rows.shape, rows.dtype, self.stream_dims[stream], path)
      arrays[stream] = rows
      lengths[stream] = rows.shape[0]
    return arrays, lengths

  def __iter__(self):
    for video_id in self.video_ids:
      try:
        yield video_id, self.video(video_id)
      except FeatureError as e:
        yield video_id, e

  def video(self, video_id):
    """Video for one id; raises FeatureError for missing or malformed files."""
    arrays, lengths = self._open(video_id)
    where = os.path.join(next(iter(self.stream_dirs.values())), video_id + ".npy")
    num_steps = _common_length(lengths, video_id, where)
    return Video(video_id, num_steps, self.feature_fps,
                 lambda a, b: {s: x.read(a, b) for s, x in arrays.items()}, where)


class Hdf5Source:
  """HDF5 dataset `/<video_id>` per video: one file [T, sum(D)] or one file per stream."""

  def __init__(self, files, stream_dims, feature_fps, video_ids=None):
    """files: a path, or {stream: path}; stream_dims {stream: D} in model order."""
    import h5py  # pylint: disable=g-import-not-at-top  # Only this layout needs it.
    self._h5py = h5py
    self.stream_dims = collections.OrderedDict(stream_dims)
    self.feature_fps = _check_fps(feature_fps, "--hdf5_features")
    if isinstance(files, str):
      self.files = collections.OrderedDict([(None, files)])
    else:
      files = collections.OrderedDict(files)
      if set(files) != set(self.stream_dims):
        raise ValueError(f"--hdf5_features streams {list(files)} must be the model's streams "
                         f"{list(self.stream_dims)}")
      self.files = collections.OrderedDict((s, files[s]) for s in self.stream_dims)
    self._handles = {}
    for path in self.files.values():
      if not os.path.isfile(path):
        raise ValueError(f"HDF5 feature file does not exist: {path!r}")
      try:
        self._handles[path] = h5py.File(path, "r")
      except Exception as e:  # Not HDF5 / truncated: report, never crash.
        raise ValueError(f"{path}: not a readable HDF5 file ({type(e).__name__}: {e})") from None
    first = self._handles[next(iter(self.files.values()))]
    found = sorted(k for k, v in first.items() if isinstance(v, h5py.Dataset))
    self.video_ids = list(video_ids) if video_ids else found
    if not self.video_ids:
      raise ValueError(f"no per-video datasets in {next(iter(self.files.values()))!r}")

  def __iter__(self):
    for video_id in self.video_ids:
      try:
        yield video_id, self.video(video_id)
      except FeatureError as e:
        yield video_id, e

  def _dataset(self, path, video_id, dim):
    where = f"{path}:/{video_id}"
    handle = self._handles[path]
    dataset = handle.get(video_id)
    if not isinstance(dataset, self._h5py.Dataset):
      raise FeatureError(f"{where}: no such dataset")
    _check_array_meta(dataset.shape, dataset.dtype, dim, where)
    return dataset

  def video(self, video_id):
    """Video for one id; raises FeatureError for missing or malformed datasets."""
    if None in self.files:
      path = self.files[None]
      dataset = self._dataset(path, video_id, sum(self.stream_dims.values()))
      offsets = np.cumsum([0] + list(self.stream_dims.values()))

      def read(a, b):
        """Rows [a, b) of the concatenated dataset, split into streams."""
        block = dataset[a:b]
        return {s: block[:, offsets[i]:offsets[i + 1]]
                for i, s in enumerate(self.stream_dims)}
      return Video(video_id, dataset.shape[0], self.feature_fps, read, f"{path}:/{video_id}")
    datasets = {s: self._dataset(self.files[s], video_id, d)
                for s, d in self.stream_dims.items()}
    where = f"{self.files[next(iter(self.stream_dims))]}:/{video_id}"
    num_steps = _common_length({s: d.shape[0] for s, d in datasets.items()}, video_id, where)
    return Video(video_id, num_steps, self.feature_fps,
                 lambda a, b: {s: d[a:b] for s, d in datasets.items()}, where)


class TfRecordSource:
  """SequenceExample TFRecords (converter output); fps and length come from each record."""

  def __init__(self, patterns, stream_dims, video_ids=None):
    self.stream_dims = collections.OrderedDict(stream_dims)
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
          yield where, FeatureError(f"{where}: cannot decode SequenceExample "
                                    f"({type(e).__name__}: {e})")
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
        raise FeatureError(f"{where}: video {decoded['video_id']!r} has no feature list "
                           f"features/{stream}")
      array = decoded["features"][stream]
      _check_array_meta(array.shape, array.dtype, dim, f"{where} features/{stream}")
      arrays[stream] = array
    lengths = {s: a.shape[0] for s, a in arrays.items()}
    num_steps = _common_length(lengths, decoded["video_id"], where)
    fps = decoded["feature_fps"]
    if not np.isfinite(fps) or fps <= 0:
      raise FeatureError(f"{where}: video/feature_fps must be > 0, got {fps}")
    return Video(decoded["video_id"], num_steps, fps,
                 lambda a, b: {s: x[a:b] for s, x in arrays.items()}, where)
