"""Video units of ETP's Refinement Network (Sec. 3.2): grid fitting, cutting, context.

A unit U(s, d) covers [s, s + d] (d = unit length, in steps). Units lie on a grid of stride h
(the paper sweeps d in {16, 32, 64, 128} frames with h = d / 2). For a proposal [s, e]:

  * fitting (the paper: "input proposals and the target boundary coordinates are first fit
    to the applicable video unit"): the proposal starts at the grid point at or before s,
    fs = floor(s / h) h, and takes the fewest units n >= 1 that reach e:
    n = max(1, ceil((e - fs - d) / h) + 1); the fitted proposal is [fs, fs + (n - 1) h + d],
    the span of its units, whose center and length are Eq. 4's c_unit and l_unit;
  * a target (ground truth) is snapped to the nearest grid points,
    [round(s / h) h, max(round(e / h) h, round(s / h) h + h)], so the RN regresses to
    unit precision ("coarse boundary regression", Fig. 3) and the LN refines further;
  * units are the n windows [fs + i h, fs + i h + d]; at most `max_units` are kept, evenly
    spread over the proposal (indices round(j (n - 1) / (max_units - 1))) so long proposals
    keep their start, end and a uniform sampling in between;
  * each unit is extended to [u - d/2, u + d + d/2] for context (SSN's augmentation).
"""
import tensorflow as tf


def _check(unit_length, stride):
  if not float(unit_length) > 0.0 or not float(stride) > 0.0:
    raise ValueError(f"unit_length and unit_stride must be > 0, got {unit_length!r} and "
                     f"{stride!r}")


def fit_to_grid(segments, unit_length, stride):
  """Fitted proposals [..., 2] and their unit counts [...] int32 for segments [..., 2]."""
  _check(unit_length, stride)
  segments = tf.convert_to_tensor(segments, tf.float32)
  d, h = float(unit_length), float(stride)
  start = tf.floor(segments[..., 0] / h) * h
  # A small tolerance keeps ends that sit exactly on the grid from taking an extra unit.
  extra = tf.math.ceil((segments[..., 1] - start - d) / h - 1e-6)
  count = tf.maximum(extra + 1.0, 1.0)
  end = start + (count - 1.0) * h + d
  return tf.stack([start, end], axis=-1), tf.cast(count, tf.int32)


def snap_to_grid(segments, stride):
  """Targets snapped to the nearest grid points [..., 2] (at least one stride long)."""
  _check(1.0, stride)
  segments = tf.convert_to_tensor(segments, tf.float32)
  h = float(stride)
  start = tf.round(segments[..., 0] / h) * h
  end = tf.maximum(tf.round(segments[..., 1] / h) * h, start + h)
  return tf.stack([start, end], axis=-1)


def cut_units(fitted, counts, unit_length, stride, max_units):
  """Units [s, s + d] of fitted proposals [..., 2] with counts [...] -> (units [..., U, 2],
  valid [..., U] bool), U = max_units (see the module docstring; `unit_context` adds the
  context)."""
  _check(unit_length, stride)
  if int(max_units) < 1:
    raise ValueError(f"max_units must be >= 1, got {max_units!r}")
  d, h, u = float(unit_length), float(stride), int(max_units)
  counts = tf.cast(counts, tf.float32)[..., None]
  j = tf.range(u, dtype=tf.float32)
  spread = tf.round(j * (counts - 1.0) / max(u - 1, 1))
  index = tf.where(counts > u, spread, j)
  valid = j < counts
  unit_start = fitted[..., :1] + index * h
  units = tf.stack([unit_start, unit_start + d], axis=-1)
  return units, valid


def unit_context(units, unit_length):
  """Units [..., 2] = [s, s + d] extended for context to [s - d/2, s + d + d/2]."""
  units = tf.convert_to_tensor(units, tf.float32)
  half = float(unit_length) / 2.0
  return tf.stack([units[..., 0] - half, units[..., 1] + half], axis=-1)
