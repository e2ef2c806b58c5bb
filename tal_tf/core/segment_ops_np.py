"""Host-side (numpy) segment operations, for evaluation and window merging.

The graph-side twins are in segment_ops.py. One tIoU for every host-side user: the
ActivityNet and THUMOS14 protocols and the NMS that merges overlapping inference windows.
"""

import numpy as np


def intersection(a, b):
  """Pairwise intersection lengths (may be negative where disjoint): a [N, 2], b [M, 2] ->
  float64 [N, M]."""
  a = np.asarray(a, np.float64).reshape(-1, 2)
  b = np.asarray(b, np.float64).reshape(-1, 2)
  return (np.minimum(a[:, None, 1], b[None, :, 1])
          - np.maximum(a[:, None, 0], b[None, :, 0]))


def pairwise_tiou(a, b):
  """tIoU [N, M] between segments a [N, 2] and b [M, 2] (start, end); 0 where the union is 0.

  Operation order as in ActivityNet's reference (`segment_iou`): (len_b + len_a) - inter,
  so the detection protocol reproduces it to the last bit.
  """
  a = np.asarray(a, np.float64).reshape(-1, 2)
  b = np.asarray(b, np.float64).reshape(-1, 2)
  inter = intersection(a, b).clip(0)
  union = ((b[None, :, 1] - b[None, :, 0]) + (a[:, None, 1] - a[:, None, 0])) - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = inter / union
  # Two zero-length identical segments give 0/0; the reference yields NaN, which never
  # passes a threshold, so 0 is equivalent and keeps the arithmetic clean.
  return np.where(union > 0, iou, 0.0)
