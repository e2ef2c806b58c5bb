"""Window planning and the NMS merge of window detections, against loop-based references."""
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

from tal_tf.inference import windowing


@pytest.mark.parametrize("num_steps, window, overlap, expected", [
    (10, 0, 0.25, [(0, 10)]),                      # no window: whole video
    (10, 16, 0.25, [(0, 10)]),                     # fits in one window
    (16, 16, 0.25, [(0, 16)]),
    (0, 16, 0.25, [(0, 0)]),
    (70, 32, 0.25, [(0, 32), (24, 32), (38, 32)]),  # stride 24, last end-aligned
    (64, 32, 0.5, [(0, 32), (16, 32), (32, 32)]),   # last window already ends at 64
    (33, 32, 0.0, [(0, 32), (1, 32)]),
])
def test_plan_windows_hand_cases(num_steps, window, overlap, expected):
  assert windowing.plan_windows(num_steps, window, overlap) == expected


@settings(max_examples=60, deadline=None)
@given(num_steps=st.integers(1, 3000), window=st.integers(1, 600),
       overlap=st.sampled_from([0.0, 0.25, 0.5, 0.9]))
def test_plan_windows_cover_the_video_with_full_windows(num_steps, window, overlap):
  plan = windowing.plan_windows(num_steps, window, overlap)
  covered = np.zeros(num_steps, bool)
  for start, length in plan:
    assert 0 <= start and start + length <= num_steps
    assert length == min(window, num_steps)
    covered[start:start + length] = True
  assert covered.all()
  starts = [s for s, _ in plan]
  assert starts == sorted(set(starts))
  stride = max(1, round(window * (1 - overlap)))
  # Consecutive windows share at least the asked overlap (the last may share more).
  for a, b in zip(starts, starts[1:]):
    assert b - a <= stride
  # Bounded count: about num_steps / stride windows.
  assert len(plan) <= max(1, -(-(num_steps - window) // stride) + 1)


def test_plan_windows_rejects_bad_overlap():
  with pytest.raises(ValueError, match="overlap must be in"):
    windowing.plan_windows(100, 10, 1.0)


@pytest.mark.parametrize("feature_fps, frame_fps, expected", [
    (25 / 16, 10.0, 5),       # 6.4 frames per step
    (2.0, 4.0, 1),
    (2.5, 1.0, 5),            # frames sparser than steps: 0.4 frames per step
    (30 / 16, 10.0, 3),       # 5.333... frames per step
    (29.97 / 16, 10.0, None),  # 16000 / 2997 frames per step: no q <= 64
    (np.float32(25 / 16), np.float32(10.0), 5),  # float32-stored rates
])
def test_frame_quantum_hand_cases(feature_fps, frame_fps, expected):
  assert windowing.frame_quantum(feature_fps, frame_fps) == expected


@pytest.mark.parametrize("start, end, feature_fps, frame_fps, num_frames, expected", [
    # 6.4 frames per step: steps [5, 10) are [3.2 s, 6.4 s); frame 32 is at 3.2 s, frame 64 at
    # 6.4 s is the first after the window (kept for a nearest-frame look-up).
    (5, 10, 25 / 16, 10.0, 1000, (32, 65)),
    (5, 10, 25 / 16, 10.0, 50, (32, 50)),   # the video ends first
    (0, 4, 2.0, 4.0, 24, (0, 9)),
    (8, 12, 2.0, 4.0, 24, (16, 24)),
    (3, 6, 2.5, 1.0, 100, (1, 4)),          # 1.2 s -> nearest frame 1; 2.4 s -> frames < 3
])
def test_frame_window_hand_cases(start, end, feature_fps, frame_fps, num_frames, expected):
  assert windowing.frame_window(start, end, feature_fps, frame_fps, num_frames) == expected


def test_plan_windows_with_a_quantum_hand_case():
  # stride 24 -> 20; last start: (100 - 32) // 5 * 5 = 65, a 35-step window.
  assert windowing.plan_windows(100, 32, 0.25, 5) == [
      (0, 32), (20, 32), (40, 32), (60, 32), (65, 35)]


@settings(max_examples=60, deadline=None)
@given(num_steps=st.integers(1, 2000), window=st.integers(1, 300),
       overlap=st.sampled_from([0.0, 0.25, 0.5, 0.9]), quantum=st.integers(1, 12))
def test_plan_windows_with_a_quantum_keep_starts_on_it(num_steps, window, overlap, quantum):
  plan = windowing.plan_windows(num_steps, window, overlap, quantum)
  covered = np.zeros(num_steps, bool)
  for start, length in plan:
    assert start % quantum == 0 and start + length <= num_steps
    assert min(window, num_steps) <= length < max(window, num_steps) + quantum
    covered[start:start + length] = True
  assert covered.all()
  starts = [s for s, _ in plan]
  assert starts == sorted(set(starts))


def _frame_steps(num_frames, feature_fps, frame_fps):
  """Reference step of each frame: floor(i * feature_fps / frame_fps) in exact fractions."""
  from fractions import Fraction  # pylint: disable=g-import-not-at-top
  ratio = Fraction(feature_fps).limit_denominator(10000) / Fraction(frame_fps).limit_denominator(
      10000)
  return np.array([int(i * ratio) for i in range(num_frames)])


@pytest.mark.parametrize("feature_fps, frame_fps", [
    (25 / 16, 10.0), (2.0, 4.0), (30 / 16, 10.0), (2.5, 1.0), (2.0, 25.0)])
def test_aligned_windows_see_the_frames_a_cut_video_would(feature_fps, frame_fps):
  """Each window's frames, placed from time 0 by the model's convention, fall into the same
  steps as in the whole video, and every frame of the window's steps is there."""
  num_steps = 200
  num_frames = int(np.ceil(num_steps / feature_fps * frame_fps))
  whole = _frame_steps(num_frames, feature_fps, frame_fps)
  quantum = windowing.frame_quantum(feature_fps, frame_fps)
  assert quantum is not None
  for start, length in windowing.plan_windows(num_steps, 37, 0.25, quantum):
    a, b = windowing.frame_window(start, start + length, feature_fps, frame_fps, num_frames)
    local = _frame_steps(b - a, feature_fps, frame_fps)
    np.testing.assert_array_equal(local, whole[a:b] - start)
    inside = np.flatnonzero((whole >= start) & (whole < start + length))
    assert inside.size == 0 or (a <= inside[0] and inside[-1] < b)
    # The frame after the window is there when the video has it (nearest-frame look-ups).
    after = np.flatnonzero(whole >= start + length)
    if after.size:
      assert b == after[0] + 1


def _reference_nms(segments, scores, threshold, max_output=None):
  """Plain loop greedy NMS: highest score first, ties by index, suppress tIoU > threshold."""
  order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
  keep = []
  for i in order:
    if max_output is not None and len(keep) >= max_output:
      break
    ok = True
    for j in keep:
      inter = max(0.0, min(segments[i][1], segments[j][1]) - max(segments[i][0], segments[j][0]))
      union = (segments[i][1] - segments[i][0]) + (segments[j][1] - segments[j][0]) - inter
      if union > 0 and inter / union > threshold:
        ok = False
        break
    if ok:
      keep.append(i)
  return keep


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(0, 25),
       threshold=st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_matches_reference(data, n, threshold):
  starts = data.draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
  lengths = data.draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
  # Few distinct scores, so ties are common.
  scores = data.draw(st.lists(st.sampled_from([0.1, 0.5, 0.5, 0.9]), min_size=n, max_size=n))
  segments = [(float(s), float(s + l)) for s, l in zip(starts, lengths)]
  max_output = data.draw(st.one_of(st.none(), st.integers(0, 10)))
  got = windowing.nms(np.array(segments).reshape(-1, 2), np.array(scores), threshold,
                      max_output)
  assert got.tolist() == _reference_nms(segments, scores, threshold, max_output)


def test_merge_detections_hand_case():
  # Window A [0, 32) and window B [24, 56) at 1 step/s both see an action around 26-30 s.
  segments = np.array([[25.0, 30.0],   # A, class 1, 0.6
                       [26.0, 30.0],   # B, class 1, 0.8 -> suppresses A's (tIoU 0.8)
                       [26.0, 30.0],   # B, class 2, 0.7 -> other class: kept
                       [40.0, 44.0],   # B, class 1, 0.2
                       [2.0, 6.0]])    # A, class 3, 0.9
  scores = np.array([0.6, 0.8, 0.7, 0.2, 0.9])
  classes = np.array([1, 1, 2, 1, 3])
  segs, sc, cl = windowing.merge_detections(segments, scores, classes, 0.5, 10)
  np.testing.assert_array_equal(sc, [0.9, 0.8, 0.7, 0.2])
  np.testing.assert_array_equal(cl, [3, 1, 2, 1])
  np.testing.assert_array_equal(segs, [[2, 6], [26, 30], [26, 30], [40, 44]])
  segs, sc, cl = windowing.merge_detections(segments, scores, classes, 0.5, 2)
  np.testing.assert_array_equal(sc, [0.9, 0.8])
  segs, sc = windowing.merge_proposals(segments, scores, 0.5, 10)
  np.testing.assert_array_equal(sc, [0.9, 0.8, 0.2])  # class-agnostic
