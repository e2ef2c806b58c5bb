"""Streaming video decoding (PyAV, FFmpeg inside its wheel), fps resampling and resizing.

`probe(path)` reads a file's header: VideoInfo (duration, fps, frame count, size, codec).
`iter_frames(path, fps=..., size=... | short_side=...)` yields `Frame(index, time, image)`
one at a time (uint8 RGB [H, W, 3]); it never holds more than the decoder's own buffers and
one frame, so a multi-hour video decodes in bounded memory.

Resampling rule (chosen here; FFmpeg's `fps` filter rounds to the nearest frame instead):
output frame k shows the video at time t_k = k / fps, i.e. the last source frame whose
presentation time is <= t_k (what a player displays at t_k). Output frames are t_k < the
video's decoded end (last frame time + one source frame period), so a D-second video gives
ceil(D * fps) frames. Times are measured from the first decoded frame, so a stream whose
timestamps start late (start_time > 0) still starts at 0 s.

Any file the decoder cannot use raises `VideoError(kind, message)`; kind is one of
VIDEO_ERROR_KINDS (the converters count them as quirks, `dataset_tools/quirks.py`).
Truncation: a file whose decoded frames end more than `truncation_tolerance` (relative, at
least 1 s) before the duration its header announces is refused as 'video_truncated', and a
decode error mid-stream is 'video_corrupt'.
"""

import collections
import fractions
import math
import os

import numpy as np

VIDEO_ERROR_KINDS = ("video_missing", "video_unreadable", "video_no_stream", "video_empty",
                     "video_corrupt", "video_truncated")

VideoInfo = collections.namedtuple(
    "VideoInfo", ["path", "duration", "fps", "num_frames", "width", "height", "codec"])
VideoInfo.__doc__ = """Header facts: duration (s, may be None), fps (average frame rate,
may be None), num_frames (header count, 0 if unknown), width, height, codec name."""

Frame = collections.namedtuple("Frame", ["index", "time", "image"])
Frame.__doc__ = """One (resampled) frame: index k, time in seconds, uint8 RGB [H, W, 3]."""


class VideoError(ValueError):
  """A video file cannot be decoded (or not completely); `kind` is in VIDEO_ERROR_KINDS."""

  def __init__(self, kind, message):
    if kind not in VIDEO_ERROR_KINDS:
      raise KeyError(f"unknown video error kind {kind!r}")
    super().__init__(message)
    self.kind = kind
    self.message = message


def _av():
  import av  # pylint: disable=g-import-not-at-top  # Only video tools need it.
  return av


def _open(path):
  """Opens a container and its first video stream, mapping failures to VideoError."""
  av = _av()
  if not os.path.isfile(path):
    raise VideoError("video_missing", f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise VideoError("video_empty", f"{path}: zero-length file")
  try:
    container = av.open(path, mode="r")
  except Exception as e:  # Untrusted bytes: any open failure is an unreadable file.
    raise VideoError("video_unreadable",
                     f"{path}: cannot open ({type(e).__name__}: {e})") from None
  if not container.streams.video:
    container.close()
    raise VideoError("video_no_stream", f"{path}: no video stream")
  stream = container.streams.video[0]
  if stream.codec_context is None or not stream.codec_context.name:
    container.close()
    raise VideoError("video_unreadable", f"{path}: video codec not supported by FFmpeg")
  return container, stream


def _header(path, container, stream):
  duration = None
  if stream.duration is not None and stream.time_base is not None:
    duration = float(stream.duration * stream.time_base)
  elif container.duration is not None:
    duration = container.duration / 1e6  # AV_TIME_BASE microseconds.
  fps = None
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate is not None and rate > 0:
      fps = float(rate)
      break
  ctx = stream.codec_context
  return VideoInfo(path=path, duration=duration, fps=fps, num_frames=int(stream.frames or 0),
                   width=int(ctx.width or 0), height=int(ctx.height or 0), codec=ctx.name)


def probe(path):
  """VideoInfo from the container header (no frame is decoded); raises VideoError."""
  container, stream = _open(path)
  try:
    return _header(path, container, stream)
  finally:
    container.close()


def parse_size(text):
  """'171x128' -> (width, height); raises ValueError naming the text."""
  try:
    w, h = (int(x) for x in str(text).lower().split("x"))
  except ValueError:
    raise ValueError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 171x128") from None
  if w < 1 or h < 1:
    raise ValueError(f"size {text!r}: width and height must be >= 1")
  return w, h


def output_size(width, height, size=None, short_side=None):
  """(out_w, out_h) for a source of width x height: `size` (w, h) as is, or the aspect-
  preserving size whose shorter side is `short_side`, or the source size."""
  if size is not None and short_side is not None:
    raise ValueError("give size or short_side, not both")
  if size is not None:
    return int(size[0]), int(size[1])
  if short_side:
    scale = float(short_side) / min(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))
  return int(width), int(height)


def resize(image, out_w, out_h):
  """uint8 [H, W, 3] -> [out_h, out_w, 3]; area averaging when shrinking (no aliasing)."""
  import cv2  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  if (w, h) == (out_w, out_h):
    return image
  interp = cv2.INTER_AREA if out_w * out_h < w * h else cv2.INTER_LINEAR
  return cv2.resize(image, (out_w, out_h), interpolation=interp)


def _decoded(path, container, stream):
  """(seconds from the first frame, av.VideoFrame) for every decodable frame, in order."""
  av = _av()
  stream.thread_type = "AUTO"  # Frame + slice threads: decode uses both cores.
  time_base = stream.time_base or fractions.Fraction(1, 1)
  first = None
  last_pts = None
  count = 0
  try:
    for frame in container.decode(stream):
      pts = frame.pts if frame.pts is not None else frame.dts
      if pts is None:
        # No timestamps at all (raw streams): count frames at the nominal rate.
        t = count / float(stream.average_rate or 25)
      else:
        if last_pts is not None and pts <= last_pts:
          continue  # Duplicated / out-of-order timestamps: keep presentation order.
        last_pts = pts
        t = float(pts * time_base)
      if first is None:
        first = t
      count += 1
      yield t - first, frame
  except av.error.FFmpegError as e:
    raise VideoError("video_corrupt", f"{path}: decode failed after {count} frames "
                     f"({type(e).__name__}: {e})") from None


def iter_frames(path, fps=None, size=None, short_side=None, truncation_tolerance=0.05,
                info=None):
  """Yields Frame(index, time_s, uint8 RGB [H, W, 3]) of a video, streamed.

  Args:
    path: video file.
    fps: output frame rate (resampled as the module doc says); None = every source frame.
    size: (width, height) to resize to, or None.
    short_side: resize keeping the aspect ratio so the shorter side is this; or None.
    truncation_tolerance: relative shortfall of the decoded end vs the header duration
      (floor 1 s) beyond which the file is refused as truncated.
    info: the file's VideoInfo if already probed.
  Raises:
    VideoError for missing / empty / unreadable / stream-less / corrupt / truncated files
    (raised when met: frames before a mid-stream failure have already been yielded, so
    callers that write outputs must write them only after the generator is exhausted).
  """
  if fps is not None and not fps > 0:
    raise ValueError(f"fps must be > 0 or None, got {fps}")
  container, stream = _open(path)
  try:
    header = info or _header(path, container, stream)
    out_w = out_h = None
    source_period = 1.0 / header.fps if header.fps else None
    k = 0
    previous = None  # (time, av frame) waiting for the next frame to bound its interval.
    end = 0.0
    for t, frame in _decoded(path, container, stream):
      if out_w is None:
        out_w, out_h = output_size(frame.width, frame.height, size, short_side)
      if fps is None:
        yield Frame(k, t, resize(frame.to_ndarray(format="rgb24"), out_w, out_h))
        k += 1
      else:
        # Emit every output time t_k in [previous time, t): the previous frame is on screen.
        if previous is not None:
          k = yield from _emit_until(previous, t, k, fps, out_w, out_h)
        previous = (t, frame)
      end = t + (source_period or 0.0)
    if k == 0 and previous is None:
      raise VideoError("video_empty", f"{path}: no decodable video frame")
    if previous is not None:
      period = source_period
      if period is None:
        period = 1.0 / fps
      end = previous[0] + period
      k = yield from _emit_until(previous, end - 1e-9, k, fps, out_w, out_h)
    _check_complete(path, header, end, truncation_tolerance)
  finally:
    container.close()


def _emit_until(previous, stop, k, fps, out_w, out_h):
  """Yields previous's image for every t_k = k / fps < stop; returns the next k. (Repeated
  frames share one array: callers must not modify yielded images in place.)"""
  t_prev, frame = previous
  image = None
  del t_prev  # Every t_k before it was emitted with the frame before.
  while k / fps < stop:
    if image is None:
      image = resize(frame.to_ndarray(format="rgb24"), out_w, out_h)
    yield Frame(k, k / fps, image)
    k += 1
  return k


def announced_duration(info):
  """Duration (s) the header promises: the larger of its duration and frame count / fps
  (an AVI cut before its index reports a duration estimated from the file size, but keeps
  the frame count of its main header)."""
  candidates = [info.duration or 0.0]
  if info.num_frames and info.fps:
    candidates.append(info.num_frames / info.fps)
  return max(candidates)


def _check_complete(path, header, decoded_end, tolerance):
  announced = announced_duration(header)
  if announced <= 0:
    return
  if announced - decoded_end > max(1.0, tolerance * announced):
    raise VideoError("video_truncated", f"{path}: frames end at {decoded_end:.2f} s, the header "
                     f"announces {announced:.2f} s (truncated file?)")


def num_resampled_frames(duration, fps):
  """Frames `iter_frames` gives for a `duration`-second video at `fps`: ceil(D * fps)."""
  return int(math.ceil(duration * fps - 1e-6))


def decode_all(path, **kwargs):
  """(times [N] float64, images uint8 [N, H, W, 3]) of a whole video: for short clips and
  tests only (holds every frame; long videos should iterate `iter_frames`)."""
  times, images = [], []
  for frame in iter_frames(path, **kwargs):
    times.append(frame.time)
    images.append(frame.image)
  if not images:
    return np.zeros(0), np.zeros((0, 0, 0, 3), np.uint8)
  return np.asarray(times), np.stack(images)


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ts")


def list_videos(path):
  """{video_id: file} for a video file or a directory of them (id = file name without its
  extension; sorted; when one id has several files the first extension of
  VIDEO_EXTENSIONS wins). Raises ValueError when nothing is found."""
  if os.path.isfile(path):
    return {os.path.splitext(os.path.basename(path))[0]: path}
  if not os.path.isdir(path):
    raise ValueError(f"{path!r} is neither a video file nor a directory")
  found = {}
  rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
  for name in os.listdir(path):
    stem, ext = os.path.splitext(name)
    ext = ext.lower()
    if ext not in rank or not os.path.isfile(os.path.join(path, name)):
      continue
    if stem not in found or rank[ext] < rank[os.path.splitext(found[stem])[1].lower()]:
      found[stem] = os.path.join(path, name)
  if not found:
    raise ValueError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {path!r}")
  return dict(sorted(found.items()))
