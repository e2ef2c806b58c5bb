"""ETP: evolving temporal proposals (Qiu et al., ICMR 2018) as a three-phase meta-architecture.

Chain (inference, `predict` + `postprocess`, one graph of core TF ops):
  Actionness Network (AN)   per-step class scores S_1..S_K -> Algorithm 1 (actionness
                            grouping) -> initial proposals (at most `max_proposals` per video)
  Refinement Network (RN)   each proposal fitted to the unit grid and cut into units with
                            context; unit features -> BiGRU -> Eq. 4 codes -> refined proposals
                            (the `proposal_*` outputs)
  Localization Network (LN) structured temporal pyramid (+ non-local block) over each refined
                            proposal -> K + 1 activity logits, completeness s_comp, Eq. 4
                            codes -> score p_k exp(s_comp) -> NMS at tIoU 0.36

Training phases (in order): "actionness" (AN from per-step labels derived from the
segments), "refinement" (RN on AN's proposals that the three-way matcher labels positive or
incomplete) and "localization" (LN on RN's refined proposals). `use_refinement: false`
(Fig. 5's ablation) drops the RN phase and feeds AN's proposals to the LN.

Proposals of the previous phase (`begin_phase`): before "refinement" (and "localization")
starts, the phase's training proposals are generated once with the previous phases' weights
over the whole training set (`context.dataset_fn(is_training=False, repeat=False)`: whole,
uncropped videos) and written atomically to `context.cache_dir/<phase>_proposals.npz`
(video ids, proposals in the video's feature steps, counts); a resumed run loads the file
instead of recomputing. The model then holds them in a lookup table (video id -> row), and
`preprocess` adds to each training batch the proposals of its videos, shifted by the batch's
`window_offset` (random crops), clipped to the window, under the feature keys
CACHED_PROPOSALS / CACHED_NUM_PROPOSALS, and `predict` reads them instead of running the
previous networks (whose weights are frozen, so the result is the same); without
begin_phase (tests, inference) it runs the chain.

Unit features before the LN is trained: the paper represents units by the LN's non-local
pyramid features, but the RN is trained before the LN exists. The RN uses the parameter-free
part of that representation, the structured temporal pyramid pooling of the unit with its
context (the unit [u, u + d] with context d/2 each side is exactly SSN's start / course /
end stages with context fraction 1/2), so its input does not change when the LN trains.

Streams are concatenated along channels and read by all three networks.

Frame Actionness Network (`frames_stream` set; the paper's AN): a ResNet classifies every
RGB frame (etp_networks.FrameActionnessNetwork, S_k = sigmoid). The actionness phase trains
it on the frames stream of its own input reader, trimmed clips whose single segment covers
the clip, so every frame is labelled with its clip's class (step_targets on frame steps);
begin_phase restores the backbone's ImageNet checkpoint when the phase starts fresh. The
refinement and localization phases read the feature streams only: begin_phase runs the AN
once over the untrimmed training videos' frame records (`proposal_frames_fn`; a long video
stored as several records is reassembled from their first frames), pools each video's frame
scores into its feature steps (tal_tf/core/frame_step_pooling.py: the mean of the frames whose
times i / frame_fps fall in the step's interval [k / feature_fps, (k + 1) / feature_fps), a
step without frames takes the frame nearest its center), runs Algorithm 1 on the step
curves and caches the proposals as above. In `predict` the chain takes the frames stream
(uint8 [B, F, H, W, 3]) beside the feature streams, with NUM_FRAMES [B], FRAME_FPS [B] and
FEATURE_FPS [B] (defaults: all F frames, one frame per step) or FRAME_SCORES [B, F, K]
instead of the frames.
"""
import os

import numpy as np
import tensorflow as tf

from tal_tf.core import actionness_grouping
from tal_tf.core import frame_step_pooling
from tal_tf.core import losses as losses_lib
from tal_tf.core import post_processing
from tal_tf.core import pyramid_pooling
from tal_tf.core import segment_coder
from tal_tf.core import segment_ops
from tal_tf.core import unit_ops
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch
from tal_tf.utils import atomic_files

ACTIONNESS, REFINEMENT, LOCALIZATION = "actionness", "refinement", "localization"
CACHED_PROPOSALS = "etp/cached_proposals"          # [B, P, 2] steps, in the batch's window
CACHED_NUM_PROPOSALS = "etp/cached_num_proposals"  # [B] int32, -1 = video not in the cache
# Frame Actionness Network inputs besides the frames stream (feature keys of `predict`; the
# exported serving_default's input names):
NUM_FRAMES = "num_frames"      # [B] int32 valid frames (default: all F frames)
FRAME_FPS = "fps"              # [B] float32 frames per second of the frames stream
FEATURE_FPS = "feature_fps"    # [B] float32 feature steps per second (default: = frame_fps)
FRAME_SCORES = "etp/frame_scores"  # [B, F, K] precomputed S_k of the frames (instead of them)


def _sample(mask, count, seed=None):
  """Uniformly random subset of mask [B, N] with at most count [B] True entries per row.

  seed: optional [2] int tensor for a deterministic (stateless) draw."""
  if seed is None:
    keys = tf.random.uniform(tf.shape(mask))
  else:
    keys = tf.random.stateless_uniform(tf.shape(mask), seed=seed)
  keys = tf.where(mask, keys, 2.0)
  rank = tf.argsort(tf.argsort(keys, axis=1, stable=True), axis=1, stable=True)
  return mask & (rank < count[:, None])


class EtpMetaArch(meta_arch.TemporalDetectionModel):
  """AN -> Algorithm 1 -> RN (BiGRU over units) -> LN (non-local pyramid) -> NMS."""

  def __init__(self, num_classes, stream_names, actionness_head, refinement_network,
               localization_head, matcher, grouping=None, unit_length=4.0, unit_stride=2.0,
               max_units=16, max_proposals=100, use_refinement=True,
               pyramid_context_fraction=0.5, start_levels=(1,), course_levels=(1, 2),
               end_levels=(1,), refinement_batch_size=128, max_positives=16,
               background_ratio=1.0, incomplete_ratio=4.0, hard_incomplete_fraction=0.25,
               completeness_weight=0.1, localization_weight=0.1, nms_iou_threshold=0.36,
               per_class_nms=True, score_threshold=0.0, max_per_class=100,
               max_detections=100, frames_stream=None, pretrained_checkpoint=None,
               proposal_frames_fn=None, eval_frames_fn=None, name="etp"):
    """Builds ETP from its three Keras networks and plain settings (defaults: the paper's).

    actionness_head: etp_networks.ActionnessHead (the `features` AN, on the streams) or
      etp_networks.FrameActionnessNetwork (the paper's AN on frames; `frames_stream` names
      the frames input, module docstring "Frame Actionness Network").
    grouping: kwargs of actionness_grouping.actionness_proposals except nms/max (thresholds,
      min_length, max_length, smoothing_sigma, smoothing_truncate, num_iterations,
      nms_iou_threshold = the grouping's own NMS).
    pretrained_checkpoint: frames AN only: local checkpoint of the backbone's ImageNet
      weights, restored when the actionness phase starts fresh (None: random init, tests).
    proposal_frames_fn: frames AN only: () -> tf.data.Dataset of padded batches (InputFields
      keys) of the untrimmed training videos' frame records, read when the RN / LN phases
      generate their proposals.
    eval_frames_fn: frames AN only: the same for the evaluation videos (evaluation_batches);
      None: evaluation batches must hold the frames themselves.
    """
    super().__init__(name=name)
    if num_classes < 1:
      raise ValueError(f"etp: num_classes must be >= 1, got {num_classes}")
    if not stream_names:
      raise ValueError("etp: at least one stream name is required")
    self._num_classes = int(num_classes)
    self._stream_names = tuple(stream_names)
    self._an, self._rn, self._ln = actionness_head, refinement_network, localization_head
    self._frames_stream = frames_stream or None
    if self._frames_stream in self._stream_names:
      raise ValueError(f"etp: the frames stream {frames_stream!r} cannot also be a feature "
                       f"stream ({list(stream_names)})")
    if self._frames_stream and not hasattr(actionness_head, "video_logits"):
      raise ValueError("etp: frames_stream needs a frame actionness network")
    self._pretrained_checkpoint = pretrained_checkpoint or None
    self._proposal_frames_fn = proposal_frames_fn
    self._eval_frames_fn = eval_frames_fn
    self._matcher = matcher
    self._grouping = dict(grouping or {})
    self._unit_length, self._unit_stride = float(unit_length), float(unit_stride)
    self._max_units = int(max_units)
    self._max_proposals = int(max_proposals)
    self._use_refinement = bool(use_refinement)
    self._has_refinement = self._use_refinement
    self._pyramid = dict(context_fraction=float(pyramid_context_fraction),
                         start_levels=tuple(start_levels), course_levels=tuple(course_levels),
                         end_levels=tuple(end_levels))
    self._rn_batch = int(refinement_batch_size)
    self._max_positives = int(max_positives)
    self._background_ratio = float(background_ratio)
    self._incomplete_ratio = float(incomplete_ratio)
    self._hard_fraction = float(hard_incomplete_fraction)
    self._completeness_weight = float(completeness_weight)
    self._localization_weight = float(localization_weight)
    self._nms_iou = float(nms_iou_threshold)
    self._per_class_nms = bool(per_class_nms)
    self._score_threshold = float(score_threshold)
    self._max_per_class = int(max_per_class)
    self._max_detections = int(max_detections)
    self._coder = segment_coder.CenterLengthCoder(scale_factors=(1.0, 1.0))  # Eq. 4
    # Proposal caches live outside tf.Module's tracking (they are not model state).
    self._caches = _CacheHolder()

  # ------------------------------------------------------------------ what it is
  @property
  def num_classes(self):
    return self._num_classes

  @property
  def stream_names(self):
    """Feature streams, then the frames stream when the AN reads frames."""
    return self._stream_names + ((self._frames_stream,) if self._frames_stream else ())

  @property
  def frames_stream(self):
    """Name of the frames input of the frame Actionness Network (None: features AN)."""
    return self._frames_stream

  def phase_stream_names(self, phase):
    """Streams a training phase reads: with the frames AN, the actionness phase reads only
    frames (trimmed clips) and the later phases only the feature streams (their proposals
    come from the cache that begin_phase builds from the untrimmed videos' frames)."""
    if not self._frames_stream:
      return self._stream_names
    if phase is None:
      # Evaluation: the frames come with the batches unless the model reads them itself.
      return self._stream_names if self._eval_frames_fn else self.stream_names
    return (self._frames_stream,) if phase == ACTIONNESS else self._stream_names

  def evaluation_batches(self, dataset):
    """With the frame AN and `eval_frames_fn`: each evaluation batch (feature streams) gains
    its videos' frame scores, computed once from the evaluation videos' frame records."""
    if not (self._frames_stream and self._eval_frames_fn):
      return dataset
    frame_scores = self.video_frame_scores(self._eval_frames_fn)

    def batches():
      for batch in dataset:
        out = dict(batch)
        out[InputFields.features] = self._with_frame_scores(batch[InputFields.features], batch,
                                                            frame_scores)
        yield out
    return batches()

  @property
  def max_detections(self):
    return self._max_detections

  @property
  def optional_outputs(self):
    return meta_arch.PROPOSAL_OUTPUTS

  @property
  def window_merge(self):
    return dict(nms_iou_threshold=self._nms_iou, max_detections=self._max_detections,
                proposal_nms_iou_threshold=self._grouping.get("nms_iou_threshold", 0.7),
                max_proposals=self._max_proposals)

  @property
  def use_refinement(self):
    """Whether inference runs the RN (the configured value unless bypassed)."""
    return self._use_refinement

  @property
  def has_refinement(self):
    """Whether the configuration trains an RN (Fig. 5's ablation does not)."""
    return self._has_refinement

  def set_inference_refinement(self, enabled):
    """Runs (True) or bypasses (False: the LN on AN's proposals) the RN at inference.

    Enabling it on a model configured without the RN is an error: that RN never trained
    (its zero-initialized regressor would only snap AN's proposals to the unit grid).
    Functions traced before the call keep the setting they were traced with.
    """
    if enabled and not self._has_refinement:
      raise ValueError("etp: this model is configured with use_refinement: false; its "
                       "refinement network is untrained and cannot be enabled")
    self._use_refinement = bool(enabled)

  # ------------------------------------------------------------------ phases
  @property
  def training_phases(self):
    if self._has_refinement:
      return (ACTIONNESS, REFINEMENT, LOCALIZATION)
    return (ACTIONNESS, LOCALIZATION)

  def phase_variables(self, phase):
    layer = {ACTIONNESS: self._an, REFINEMENT: self._rn, LOCALIZATION: self._ln}.get(phase)
    if layer is None or phase not in self.training_phases:
      raise ValueError(f"etp: unknown training phase {phase!r}; expected one of "
                       f"{self.training_phases}")
    return list(layer.trainable_variables)

  def begin_phase(self, phase, context):
    """Generates (or loads) the phase's training proposals and activates them (module doc)."""
    if phase == ACTIONNESS:
      self._caches.active = None
      if self._frames_stream and self._pretrained_checkpoint and context.fresh:
        # ImageNet weights, then fine-tuning (Sec. 4.2); a resumed run has its own weights.
        self._an.restore_pretrained(self._pretrained_checkpoint)
      return
    path = os.path.join(context.cache_dir, f"{phase}_proposals.npz")
    if os.path.exists(path):
      with np.load(path) as data:
        ids, proposals, counts = data["ids"], data["proposals"], data["counts"]
    else:
      ids, proposals, counts = self.generate_proposals(
          context.dataset_fn(is_training=False, repeat=False), phase)
      _atomic_savez(path, ids=ids, proposals=proposals, counts=counts)
    self.set_proposal_cache(ids, proposals, counts)

  def generate_proposals(self, dataset, phase):
    """Runs the networks before `phase` over a dataset of whole videos.

    Returns (ids [V] bytes, proposals [V, P, 2] float32 steps, counts [V] int32): the input
    proposals of `phase` (AN's for the RN; RN's refined ones, or AN's without RN, for the LN).
    """
    frame_scores = None
    if self._frames_stream:
      if self._proposal_frames_fn is None:
        raise ValueError("etp: the frame Actionness Network needs the untrimmed training "
                         "videos' frame records to make the RN / LN training proposals "
                         "(model.etp.frame_actionness.proposal_input_reader)")
      frame_scores = self.video_frame_scores(self._proposal_frames_fn)
    # Videos differ in length: one trace with a dynamic time axis, not one per length.
    fn = tf.function(lambda f, n: self._phase_inputs(f, n, phase), reduce_retracing=True)
    ids, proposals, counts = [], [], []
    for batch in dataset:
      features = batch[InputFields.features]
      if frame_scores is not None:
        features = self._with_frame_scores(features, batch, frame_scores)
      segments, _, num = fn(features, batch[InputFields.num_steps])
      ids.extend(v.numpy() if hasattr(v, "numpy") else v for v in batch[InputFields.video_id])
      proposals.append(segments.numpy())
      counts.append(num.numpy())
    if not ids:
      return (np.zeros([0], object), np.zeros([0, self._max_proposals, 2], np.float32),
              np.zeros([0], np.int32))
    return (np.array(ids, dtype=object), np.concatenate(proposals).astype(np.float32),
            np.concatenate(counts).astype(np.int32))

  def video_frame_scores(self, frames_fn):
    """Runs the frame AN over the videos of frames_fn() (a dataset of frame-record batches):
    {video id (str): (S_k of every frame float32 [F, K], frames per second)}. A video stored
    as several records (long videos) is reassembled from their window offsets (first
    frames)."""
    fn = tf.function(lambda frames, n: tf.sigmoid(self._an.video_logits(frames, n)),
                     reduce_retracing=True)
    pieces = {}
    for batch in frames_fn():
      frames = batch[InputFields.features][self._frames_stream]
      num = batch[InputFields.num_steps]
      scores = fn(frames, num).numpy()
      offsets = batch.get(InputFields.window_offset, tf.zeros_like(num)).numpy()
      for i, video_id in enumerate(batch[InputFields.video_id].numpy()):
        n = int(num[i])
        pieces.setdefault(video_id.decode(), []).append(
            (int(offsets[i]), scores[i, :n], float(batch[InputFields.feature_fps][i])))
    out = {}
    for video_id, parts in pieces.items():
      total = max(o + len(p) for o, p, _ in parts)
      scores = np.zeros([total, self._num_classes], np.float32)
      for offset, part, _ in parts:
        scores[offset:offset + len(part)] = part
      out[video_id] = (scores, parts[0][2])
    return out

  def _with_frame_scores(self, features, batch, frame_scores):
    """Adds a feature batch's videos' frame scores (FRAME_SCORES, NUM_FRAMES, FRAME_FPS,
    FEATURE_FPS) from video_frame_scores()' table; a video without frames gets none (and
    so no proposals)."""
    ids = [v.decode() for v in batch[InputFields.video_id].numpy()]
    entries = [frame_scores.get(v, (np.zeros([0, self._num_classes], np.float32), 1.0))
               for v in ids]
    missing = [v for v, e in zip(ids, entries) if not len(e[0])]
    if missing:
      tf.get_logger().warning("etp: no frame records for videos %s: no proposals", missing)
    longest = max([len(e[0]) for e in entries] + [0])
    scores = np.zeros([len(ids), longest, self._num_classes], np.float32)
    for i, (s, _) in enumerate(entries):
      scores[i, :len(s)] = s
    out = dict(features)
    out[FRAME_SCORES] = tf.constant(scores)
    out[NUM_FRAMES] = tf.constant([len(e[0]) for e in entries], tf.int32)
    out[FRAME_FPS] = tf.constant([e[1] for e in entries], tf.float32)
    out[FEATURE_FPS] = tf.cast(batch[InputFields.feature_fps], tf.float32)
    return out

  def set_proposal_cache(self, ids, proposals, counts):
    """Activates a proposal table: ids [V] (str/bytes), proposals [V, P, 2], counts [V]."""
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
    proposals = np.asarray(proposals, np.float32).reshape([-1, self._max_proposals, 2])
    counts = np.asarray(counts, np.int32).reshape([-1])
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids or [""], tf.string),
                                            tf.range(max(len(ids), 1), dtype=tf.int64)),
        default_value=-1)
    if not ids:
      proposals = np.zeros([1, self._max_proposals, 2], np.float32)
      counts = np.full([1], -1, np.int32)
    self._caches.active = (table, tf.constant(proposals), tf.constant(counts))

  def preprocess(self, inputs):
    """Adds the active phase's cached proposals of the batch's videos (module docstring)."""
    if self._caches.active is None or InputFields.video_id not in inputs:
      return inputs
    table, proposals, counts = self._caches.active
    rows = table.lookup(tf.convert_to_tensor(inputs[InputFields.video_id]))
    found = rows >= 0
    rows = tf.maximum(rows, 0)
    segments = tf.gather(proposals, rows)  # [B, P, 2]
    num = tf.where(found, tf.gather(counts, rows), -1)
    offset = tf.zeros_like(num)
    if InputFields.window_offset in inputs:
      offset = tf.cast(inputs[InputFields.window_offset], tf.int32)
    length = tf.cast(inputs[InputFields.num_steps], tf.float32)[:, None]
    shifted = tf.clip_by_value(segments - tf.cast(offset, tf.float32)[:, None, None], 0.0,
                               length[..., None])
    # Keep proposals that still have some extent inside the window, in their order.
    keep = (tf.sequence_mask(tf.maximum(num, 0), self._max_proposals) &
            (shifted[..., 1] - shifted[..., 0] > 0.0))
    order = tf.argsort(tf.cast(~keep, tf.int32), axis=1, stable=True)
    shifted = tf.gather(shifted, order, batch_dims=1)
    kept = tf.reduce_sum(tf.cast(keep, tf.int32), axis=1)
    shifted = tf.where(tf.sequence_mask(kept, self._max_proposals)[..., None], shifted, 0.0)
    out = dict(inputs)
    features = dict(inputs[InputFields.features])
    features[CACHED_PROPOSALS] = shifted
    features[CACHED_NUM_PROPOSALS] = tf.where(found, kept, -1)
    out[InputFields.features] = features
    return out

  # ------------------------------------------------------------------ forward
  def _inputs(self, features, num_steps):
    """Feature streams concatenated [B, max(T, 1), D] and num_steps clipped to T."""
    missing = [s for s in self._stream_names if s not in features]
    if missing:
      raise KeyError(f"etp: feature streams {missing} missing from the input; "
                     f"got {sorted(features)}")
    x = tf.concat([tf.convert_to_tensor(features[s], tf.float32)
                   for s in self._stream_names], axis=-1)
    # An empty input (T = 0) becomes one masked step: convolutions need a time axis.
    x = tf.pad(x, [[0, 0], [0, tf.maximum(1 - tf.shape(x)[1], 0)], [0, 0]])
    num_steps = tf.clip_by_value(tf.cast(num_steps, tf.int32), 0, tf.shape(x)[1])
    return x, num_steps

  def _actionness(self, x, num_steps, training):
    return self._an(x, num_steps, training=training)

  def step_actionness(self, features, x, num_steps):
    """S_1..S_K per feature step [B, T, K] (T = x's time axis).

    Features AN: the sigmoid of its per-step logits. Frames AN: the sigmoid of each frame's
    logits (or FRAME_SCORES when given), pooled into the feature steps by
    frame_step_pooling (mean of the frames whose times fall in a step's interval; a step
    without frames takes the frame nearest its center)."""
    if not self._frames_stream:
      return tf.sigmoid(self._actionness(x, num_steps, False))
    if FRAME_SCORES in features:
      frame_scores = tf.convert_to_tensor(features[FRAME_SCORES], tf.float32)
    else:
      if self._frames_stream not in features:
        raise KeyError(f"etp: the frames stream {self._frames_stream!r} (or "
                       f"{FRAME_SCORES!r}) is missing from the input; got {sorted(features)}")
      frames = features[self._frames_stream]
      count = features.get(NUM_FRAMES, tf.fill(tf.shape(frames)[:1], tf.shape(frames)[1]))
      frame_scores = tf.sigmoid(self._an.video_logits(frames, count))
    shape = tf.shape(frame_scores)
    num_frames = features.get(NUM_FRAMES, tf.fill(shape[:1], shape[1]))
    frame_fps = features.get(FRAME_FPS, tf.ones(shape[:1]))
    feature_fps = features.get(FEATURE_FPS, frame_fps)
    return frame_step_pooling.pool_frames_to_steps(frame_scores, num_frames, frame_fps,
                                                   feature_fps, num_steps, tf.shape(x)[1])

  def _an_proposals(self, features, x, num_steps):
    scores = tf.stop_gradient(self.step_actionness(features, x, num_steps))
    segments, proposal_scores, num = actionness_grouping.actionness_proposals(
        scores, num_steps, max_proposals=self._max_proposals, **self._grouping)
    return segments, proposal_scores, num

  def _refine(self, x, num_steps, proposals, training):
    """RN over proposals [B, P, 2] -> (codes [B, P, 2], fitted [B, P, 2], refined [B, P, 2])."""
    fitted, counts = unit_ops.fit_to_grid(proposals, self._unit_length, self._unit_stride)
    units, valid = unit_ops.cut_units(fitted, counts, self._unit_length, self._unit_stride,
                                      self._max_units)
    b, p = tf.shape(units)[0], tf.shape(units)[1]
    flat_units = tf.reshape(units, [b, p * self._max_units, 2])
    # The unit with context d/2 each side = the pyramid's stages with context fraction 1/2.
    pooled = pyramid_pooling.structured_pyramid_pooling(
        x, flat_units, num_steps, context_fraction=0.5,
        start_levels=self._pyramid["start_levels"],
        course_levels=self._pyramid["course_levels"], end_levels=self._pyramid["end_levels"])
    parts_dim = pooled.shape[-2] * x.shape[-1]
    unit_features = tf.reshape(pooled, [b * p, self._max_units, parts_dim])
    codes = self._rn(unit_features, tf.reshape(valid, [b * p, self._max_units]),
                     training=training)
    codes = tf.reshape(codes, [b, p, 2])
    refined = self._clip(self._coder.decode(codes, fitted), num_steps)
    return codes, fitted, refined

  @staticmethod
  def _clip(segments, num_steps):
    batch = tf.shape(segments)[0]
    return segment_ops.clip_to_window(segments, tf.zeros([batch]),
                                      tf.cast(num_steps, tf.float32))

  def _cached_or(self, features, compute):
    """The batch's cached proposals when preprocess added them, else compute().

    Training graphs then hold no copy of the earlier networks (their tracing is the costly
    part); a video missing from the cache (impossible when the cache was generated from the
    training records) contributes no proposals.
    """
    if CACHED_PROPOSALS not in features:
      return compute()
    cached = tf.convert_to_tensor(features[CACHED_PROPOSALS], tf.float32)
    num = tf.maximum(tf.cast(features[CACHED_NUM_PROPOSALS], tf.int32), 0)
    return cached, tf.zeros(tf.shape(cached)[:2]), num

  def _phase_inputs(self, features, num_steps, phase):
    """Input proposals of `phase` ([B, P, 2], scores [B, P], num [B]) from earlier networks."""
    x, num_steps = self._inputs(features, num_steps)
    segments, scores, num = self._an_proposals(features, x, num_steps)
    if phase == LOCALIZATION and self._use_refinement:
      _, _, refined = self._refine(x, num_steps, segments, training=False)
      segments = self._mask(refined, num)
    return segments, scores, num

  @staticmethod
  def _mask(segments, num):
    valid = tf.sequence_mask(num, tf.shape(segments)[1])
    return tf.where(valid[..., None], segments, 0.0)

  def predict(self, features, num_steps, training=False, phase=None):
    """Runs the chain up to the networks of `phase` (all three when phase is None).

    Returns (as far as computed): actionness_logits [B, T, K], num_steps [B];
    an_proposals [B, P, 2] (steps), an_scores [B, P], num_proposals [B]; rn_codes [B, P, 2],
    rn_fitted [B, P, 2], refined_proposals [B, P, 2]; ln_proposals [B, P, 2], class_logits
    [B, P, K + 1], completeness [B, P], ln_codes [B, P, 2].
    """
    if phase is not None and phase not in self.training_phases:
      raise ValueError(f"etp: unknown phase {phase!r}; expected one of "
                       f"{self.training_phases} or None")
    if phase == ACTIONNESS and self._frames_stream:
      # Trimmed clips: one step = one frame; logits per frame.
      frames = features[self._frames_stream]
      num_frames = tf.clip_by_value(tf.cast(num_steps, tf.int32), 0, tf.shape(frames)[1])
      return {"num_steps": num_frames,
              "actionness_logits": self._an.video_logits(frames, num_frames, training)}
    x, num_steps = self._inputs(features, num_steps)
    out = {"num_steps": num_steps}
    if phase == ACTIONNESS:
      out["actionness_logits"] = self._actionness(x, num_steps, training)
      return out

    if phase == REFINEMENT:
      segments, scores, num = self._cached_or(
          features, lambda: self._an_proposals(features, x, num_steps))
      codes, fitted, refined = self._refine(x, num_steps, segments, training)
      out.update(an_proposals=segments, an_scores=scores, num_proposals=num, rn_codes=codes,
                 rn_fitted=fitted, refined_proposals=self._mask(refined, num))
      return out

    def chain():
      segments, scores, num = self._an_proposals(features, x, num_steps)
      if self._use_refinement:
        _, _, refined = self._refine(x, num_steps, segments, training=False)
        segments = self._mask(refined, num)
      return segments, scores, num

    if phase == LOCALIZATION:
      proposals, scores, num = self._cached_or(features, chain)
    else:
      proposals, scores, num = chain()
    proposals = tf.stop_gradient(proposals)
    pooled = pyramid_pooling.structured_pyramid_pooling(x, proposals, num_steps,
                                                        **self._pyramid)
    logits, completeness, codes = self._ln(pooled, training=training)
    out.update(ln_proposals=proposals, proposal_scores=scores, num_proposals=num,
               class_logits=logits, completeness=completeness, ln_codes=codes)
    return out

  # ------------------------------------------------------------------ losses
  def loss(self, predictions, groundtruth, phase=None):
    """Loss of `phase` (None: localization), a dict with 'total_loss'."""
    phase = phase or LOCALIZATION
    gt_segments = tf.cast(groundtruth[InputFields.segments], tf.float32)
    gt_labels = tf.cast(groundtruth[InputFields.labels], tf.int32)
    num_gt = tf.cast(groundtruth[InputFields.num_segments], tf.int32)
    if phase == ACTIONNESS:
      value = self.actionness_loss(predictions["actionness_logits"], predictions["num_steps"],
                                   gt_segments, gt_labels, num_gt)
      return {"actionness_loss": value, "total_loss": value}
    seed = None  # fresh random mini-batches every step
    if phase == REFINEMENT:
      value = self.refinement_loss(predictions, gt_segments, num_gt, seed)
      return {"refinement_loss": value, "total_loss": value}
    cls, comp, loc = self.localization_losses(predictions, gt_segments, gt_labels, num_gt,
                                              seed)
    out = {"classification_loss": cls,
           "completeness_loss": self._completeness_weight * comp,
           "localization_loss": self._localization_weight * loc}
    out["total_loss"] = tf.add_n(list(out.values()))
    return out

  def step_targets(self, num_steps_padded, gt_segments, gt_labels, num_gt):
    """Per-step multi-hot class targets [B, T, K]: step t is in a segment of class k when its
    center t + 0.5 lies in [start, end)."""
    centers = tf.range(num_steps_padded, dtype=tf.float32)[None, :, None] + 0.5
    inside = ((centers >= gt_segments[:, None, :, 0]) & (centers < gt_segments[:, None, :, 1])
              & tf.sequence_mask(num_gt, tf.shape(gt_segments)[1])[:, None, :])
    one_hot = tf.one_hot(tf.maximum(gt_labels - 1, 0), self._num_classes)  # [B, G, K]
    return tf.minimum(tf.einsum("btg,bgk->btk", tf.cast(inside, tf.float32), one_hot), 1.0)

  def actionness_loss(self, logits, num_steps, gt_segments, gt_labels, num_gt):
    """Per-step sigmoid cross-entropy summed over classes, averaged over valid steps."""
    targets = self.step_targets(tf.shape(logits)[1], gt_segments, gt_labels, num_gt)
    valid = tf.sequence_mask(num_steps, tf.shape(logits)[1], dtype=tf.float32)
    per_step = tf.reduce_sum(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=-1)
    return losses_lib.weighted_mean(per_step * valid, valid)

  def _match(self, proposals, num, gt_segments, num_gt):
    """Three-way labels of proposals [B, P, 2]: (positive, incomplete, background [B, P] bool,
    matched ground-truth column [B, P] of positives and incompletes)."""
    valid = tf.sequence_mask(num, tf.shape(proposals)[1])
    tiou = segment_ops.pairwise_tiou(proposals, gt_segments)
    match = self._matcher.match(tiou, num_gt)
    positive = valid & match.matched_column_indicator()
    incomplete = valid & match.incomplete_indicator()
    background = valid & match.unmatched_indicator()
    column = tf.where(positive, match.match_results,
                      tf.maximum(match.incomplete_match_results, 0))
    return positive, incomplete, background, tf.maximum(column, 0)

  def refinement_targets(self, fitted, matched_gt):
    """Eq. 4 targets of the RN: ground truth snapped to the unit grid, relative to the
    fitted proposal: c = (c_gt - c_unit) / l_unit, s = log(l_gt / l_unit) -> [B, P, 2]."""
    return self._coder.encode(unit_ops.snap_to_grid(matched_gt, self._unit_stride), fitted)

  def refinement_loss(self, predictions, gt_segments, num_gt, seed=None):
    """Eq. 4 smooth L1 over sampled positive + incomplete proposals (N = N_pos + N_inc)."""
    positive, incomplete, _, column = self._match(
        predictions["an_proposals"], predictions["num_proposals"], gt_segments, num_gt)
    used = _sample(positive | incomplete, tf.fill([tf.shape(column)[0]], self._rn_batch), seed)
    matched = tf.gather(gt_segments, column, batch_dims=1)
    targets = self.refinement_targets(predictions["rn_fitted"], matched)
    weights = tf.cast(used, tf.float32)
    per = losses_lib.weighted_smooth_l1(predictions["rn_codes"], targets, weights)
    return losses_lib.weighted_mean(per, weights)

  def sample_localization(self, positive, incomplete, background, seed=None):
    """LN mini-batch per video: up to max_positives positives, backgrounds ~ background_ratio
    x positives (classifier), incompletes ~ incomplete_ratio x positives (completeness).
    Returns (positive, incomplete, background) sampled masks [B, P]."""
    seeds = ([None] * 3 if seed is None
             else tf.unstack(tf.random.experimental.stateless_split(seed, 3)))
    count = lambda m: tf.reduce_sum(tf.cast(m, tf.int32), axis=1)
    pos = _sample(positive, tf.fill([tf.shape(positive)[0]], self._max_positives), seeds[0])
    base = tf.cast(tf.maximum(count(pos), 1), tf.float32)
    num_bg = tf.cast(tf.math.ceil(self._background_ratio * base - 1e-6), tf.int32)
    num_inc = tf.cast(tf.math.ceil(self._incomplete_ratio * base - 1e-6), tf.int32)
    return pos, _sample(incomplete, num_inc, seeds[1]), _sample(background, num_bg, seeds[2])

  def localization_losses(self, predictions, gt_segments, gt_labels, num_gt, seed=None):
    """(L_cls, L_comp, L_loc) of the LN (Eq. 6, 8 and 4 with N = N_pos), unweighted."""
    proposals = predictions["ln_proposals"]
    positive, incomplete, background, column = self._match(
        proposals, predictions["num_proposals"], gt_segments, num_gt)
    pos, inc, bg = self.sample_localization(positive, incomplete, background, seed)
    labels = tf.where(pos, tf.gather(gt_labels, column, batch_dims=1), 0)
    cls_weights = tf.cast(pos | bg, tf.float32)
    cls = losses_lib.weighted_mean(
        losses_lib.weighted_softmax_cross_entropy(predictions["class_logits"], labels,
                                                  cls_weights), cls_weights)
    comp = losses_lib.completeness_hinge_loss(
        predictions["completeness"], tf.where(pos, 1.0, -1.0), tf.cast(pos | inc, tf.float32),
        hard_negative_fraction=self._hard_fraction)
    matched = tf.gather(gt_segments, column, batch_dims=1)
    targets = self._coder.encode(matched, proposals)
    pos_weights = tf.cast(pos, tf.float32)
    loc = losses_lib.weighted_mean(
        losses_lib.weighted_smooth_l1(predictions["ln_codes"], targets, pos_weights),
        pos_weights)
    return cls, comp, loc

  # ------------------------------------------------------------------ outputs
  def detection_scores(self, class_logits, completeness):
    """Ranking scores s_k = p_k exp(s_comp) [B, P, K] (no background column)."""
    probs = tf.nn.softmax(class_logits)[..., 1:]
    return probs * tf.exp(completeness)[..., None]

  def postprocess(self, predictions, num_steps, feature_fps):
    """Decoded LN segments, scored p_k exp(s_comp), NMS at tIoU 0.36 (per class or across
    classes), in seconds; proposals = RN's refined proposals (AN's without the RN)."""
    num_steps = tf.cast(num_steps, tf.int32)
    proposals = predictions["ln_proposals"]
    num = predictions["num_proposals"]
    segments = self._clip(self._coder.decode(predictions["ln_codes"], proposals), num_steps)
    scores = self.detection_scores(predictions["class_logits"], predictions["completeness"])
    if self._per_class_nms:
      dets = post_processing.batch_multiclass_nms(
          segments, scores, num, score_threshold=self._score_threshold,
          iou_threshold=self._nms_iou, max_per_class=self._max_per_class,
          max_total=self._max_detections)
      det_segments, det_scores = dets["detection_segments"], dets["detection_scores"]
      det_classes, count = dets["detection_classes"], dets["num_detections"]
    else:
      # Across classes: each proposal keeps its best class, then one class-agnostic NMS.
      best = tf.argmax(scores, axis=-1, output_type=tf.int32)
      det_segments, det_scores, index, count = post_processing.batch_class_agnostic_nms(
          segments, tf.reduce_max(scores, axis=-1), num, iou_threshold=self._nms_iou,
          max_output=self._max_detections, score_threshold=self._score_threshold)
      det_classes = tf.gather(best, index, batch_dims=1)
    valid = tf.sequence_mask(count, self._max_detections)
    classes = tf.where(valid, tf.cast(det_classes, tf.int32) + 1, 0)
    fps = tf.cast(feature_fps, tf.float32)
    return {
        DetectionFields.detection_segments: segment_ops.steps_to_seconds(det_segments, fps),
        DetectionFields.detection_scores: det_scores,
        DetectionFields.detection_classes: classes,
        DetectionFields.num_detections: count,
        DetectionFields.proposal_segments: segment_ops.steps_to_seconds(proposals, fps),
        DetectionFields.proposal_scores: predictions["proposal_scores"],
        DetectionFields.num_proposals: num,
    }


class _CacheHolder:
  """Plain (untracked) holder of the active proposal table."""

  def __init__(self):
    self.active = None


def _atomic_savez(path, **arrays):
  """np.savez to `path` atomically (temporary file beside it, fsync, rename)."""
  with atomic_files.atomic_output(path) as temp:
    with open(temp, "wb") as f:
      np.savez(f, **{k: (np.asarray(v, dtype=np.bytes_) if k == "ids" else v)
                     for k, v in arrays.items()})
      f.flush()
      os.fsync(f.fileno())
