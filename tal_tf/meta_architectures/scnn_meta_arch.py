"""S-CNN (Shou et al., CVPR 2016): multi-scale sliding windows scored by three window networks.

Windows: every sliding window of the configured lengths (frames, 75% overlap by default) that
fits inside the video, plus one whole-video window used only for trimmed training clips (see
`tal_tf.core.window_labeling`). Each window is classified by window networks (C3D, or fc6-fc8
on features resampled to 16 steps):
  proposal network       fc8: 2 (background / action)
  classification network fc8: K + 1, trained with softmax; only initializes the next
  localization network   fc8: K + 1, initialized from the classification network, trained
                         with softmax + lambda x overlap loss (Eq. 1-3)
Training runs them as three phases "proposal", "classification", "localization" (ablations
drop phases). Mini-batches (Sec. 3.2): all positive windows plus about as many random
backgrounds (proposal) or about #positives / K backgrounds (classification, localization).

Inference (Sec. 3.3): keep windows with P_pro >= 0.7, score them with the localization network,
drop windows whose predicted class (argmax over K + 1) is background, multiply P_loc of the
predicted class by the class-specific frequency of the window's length among the training
positives (computed in `begin_phase` from the training data and stored in a variable, so it
is checkpointed and exported), then NMS on that score.

Window subsets (the C3D backbone): running C3D on every window of a video (hundreds) to
train on a few dozen would cost most of a training step for nothing, so with
`max_training_windows_per_video` > 0 training's `predict` defers the network and `loss`
labels the windows, samples them with the phase's sampler (Sec. 3.2) and runs the phase's
network on the sampled windows only (at most that many per video, a random subset when more
are sampled). Inference runs the proposal network on every valid window and the scoring
network only on the windows with P_pro >= the threshold (as the paper), in chunks of
`inference_chunk` windows so memory stays bounded. The network must then offer
`window_clips(frames, video_index, windows, num_steps)` and `classify(clips, training)`
(tal_tf/models/c3d.py: C3dWindowClassifier).

NMS: the paper only says NMS on P_loc with overlap threshold theta - 0.1 when evaluating at
theta. Per class (default) or across classes is a switch. Per class is the default because
the evaluation's "no redundant detections" rule is per class (a second detection of one
ground truth in the same class is a false positive), while windows of different predicted
classes are distinct hypotheses the per-class AP judges separately. `postprocess` takes an
optional `nms_iou_threshold` override and `evaluation_nms_iou_thresholds` maps evaluation
tIoUs to the paper's theta - 0.1; the contract hook `evaluation_postprocess_kwargs` hands
that map to the shared evaluator, which post-processes once per threshold (switch:
`eval_config.per_threshold_postprocessing`; off = the serving threshold for every theta).
"""

import tensorflow as tf

from tal_tf.core import background_sampler
from tal_tf.core import losses as losses_lib
from tal_tf.core import post_processing
from tal_tf.core import segment_ops
from tal_tf.core import stream_spec
from tal_tf.core import window_labeling
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch

PROPOSAL = "proposal"
CLASSIFICATION = "classification"
LOCALIZATION = "localization"
NETWORKS = (PROPOSAL, CLASSIFICATION, LOCALIZATION)


class ScnnMetaArch(meta_arch.TemporalDetectionModel):
  """S-CNN: proposal, classification and localization window networks."""

  def __init__(self,
               num_classes,
               stream_names,
               anchor_generator,
               target_assigner,
               network_builder,
               use_proposal_network=True,
               initialize_localization_from_classification=True,
               scoring_network=LOCALIZATION,
               proposal_score_threshold=0.7,
               nms_iou_threshold=0.4,
               per_class_nms=True,
               evaluation_nms_offset=0.1,
               max_detections=100,
               max_proposals=300,
               overlap_alpha=0.25,
               overlap_weight=1.0,
               proposal_background_ratio=1.0,
               classification_background_ratio=None,
               use_length_prior=True,
               length_prior_smoothing=0.0,
               trimmed_tolerance=1.0,
               pretrained_initializer=None,
               max_training_windows_per_video=0,
               inference_chunk=0,
               seed=None,
               name="scnn"):
    """Builds S-CNN.

    Args:
      num_classes: K (label ids 1..K).
      stream_names: feature streams, concatenated along channels into one window input.
      anchor_generator: SlidingWindowAnchorGenerator (windows in feature steps).
      target_assigner: TargetAssigner with the S-CNN matcher (labels and overlaps v).
      network_builder: callable(network_name, num_outputs) -> Keras layer mapping
        (features [B, T, D], windows [B, W, 2], num_steps [B], training) to [B, W, outputs].
      use_proposal_network: False = the "w/o proposal" ablation (every window is scored).
      initialize_localization_from_classification: False = "w/o classification".
      scoring_network: "localization", or "classification" for "w/o localization".
      proposal_score_threshold: windows need P_pro >= this (paper: 0.7).
      nms_iou_threshold: NMS threshold for serving / plain evaluation.
      per_class_nms: NMS per predicted class (True) or across classes.
      evaluation_nms_offset: NMS at theta - offset when evaluating at tIoU theta (0.1).
      max_detections / max_proposals: output sizes per video.
      overlap_alpha / overlap_weight: alpha and lambda of Eq. 1-3 (0.25, 1).
      proposal_background_ratio: backgrounds per positive for the proposal net (1).
      classification_background_ratio: the same for classification / localization (None:
        1 / K).
      use_length_prior / length_prior_smoothing: the window-length frequency prior and an
        additive count smoothing (0 = the paper's plain frequencies).
      trimmed_tolerance: steps of slack when recognizing a trimmed clip.
      pretrained_initializer: optional callable(network) loading pre-trained weights (C3D
        Sports-1M) into the proposal / classification networks when their phase starts.
      max_training_windows_per_video: > 0: the window-subset mode of the module doc (the
        network must offer window_clips / classify); 0: networks run on every window.
      inference_chunk: window-subset mode: windows per network call at inference (0 = all
        at once).
      seed: optional int making background sampling deterministic.
    """
    super().__init__(name=name)
    if num_classes < 1:
      raise ValueError(f"scnn: num_classes must be >= 1, got {num_classes}")
    if not stream_names:
      raise ValueError("scnn: at least one stream name is required")
    if scoring_network not in (LOCALIZATION, CLASSIFICATION):
      raise ValueError(f"scnn: scoring_network must be 'localization' or 'classification', "
                       f"got {scoring_network!r}")
    if not 0.0 <= nms_iou_threshold <= 1.0:
      raise ValueError(f"scnn: nms_iou_threshold must be in [0, 1], got {nms_iou_threshold}")
    self._num_classes = int(num_classes)
    self._stream_names = tuple(stream_names)
    self._anchor_generator = anchor_generator
    self._assigner = target_assigner
    self._use_proposal = bool(use_proposal_network)
    self._init_loc_from_cls = bool(initialize_localization_from_classification)
    self._scoring = scoring_network
    self._proposal_threshold = float(proposal_score_threshold)
    self._nms_iou = float(nms_iou_threshold)
    self._per_class_nms = bool(per_class_nms)
    self._eval_nms_offset = float(evaluation_nms_offset)
    self._max_detections = int(max_detections)
    self._max_proposals = int(max_proposals)
    self._alpha = float(overlap_alpha)
    self._lambda = float(overlap_weight)
    if classification_background_ratio is None:
      classification_background_ratio = 1.0 / self._num_classes
    self._samplers = {
        PROPOSAL: background_sampler.ProportionalBackgroundSampler(proposal_background_ratio),
        CLASSIFICATION: background_sampler.ProportionalBackgroundSampler(
            classification_background_ratio),
    }
    self._samplers[LOCALIZATION] = self._samplers[CLASSIFICATION]
    self._use_length_prior = bool(use_length_prior)
    self._prior_smoothing = float(length_prior_smoothing)
    if self._prior_smoothing < 0:
      raise ValueError(f"scnn: length_prior_smoothing must be >= 0, got {length_prior_smoothing}")
    self._trimmed_tolerance = float(trimmed_tolerance)
    self._pretrained_initializer = pretrained_initializer
    self._max_training_windows = int(max_training_windows_per_video)
    self._inference_chunk = int(inference_chunk)
    if self._max_training_windows < 0 or self._inference_chunk < 0:
      raise ValueError(f"scnn: max_training_windows_per_video and inference_chunk must be "
                       f">= 0, got {max_training_windows_per_video}, {inference_chunk}")
    self._seed = seed
    num_lengths = len(anchor_generator.window_lengths)
    self._window_lengths_steps = tf.constant(
        [l / anchor_generator.frames_per_step for l in anchor_generator.window_lengths],
        tf.float32)
    outputs = {PROPOSAL: 2, CLASSIFICATION: self._num_classes + 1,
               LOCALIZATION: self._num_classes + 1}
    self._networks = {n: network_builder(n, outputs[n]) for n in self._network_names()}
    # Class-specific window-length frequencies [K, L] (ones = no prior until computed).
    self.length_prior = tf.Variable(tf.ones([self._num_classes, num_lengths]),
                                    trainable=False, name="length_prior")
    self.length_prior_computed = tf.Variable(False, trainable=False,
                                             name="length_prior_computed")

  # ------------------------------------------------------------------ what it is
  @property
  def num_classes(self):
    return self._num_classes

  @property
  def stream_names(self):
    return self._stream_names

  @property
  def max_detections(self):
    return self._max_detections

  @property
  def optional_outputs(self):
    return meta_arch.PROPOSAL_OUTPUTS

  @property
  def window_merge(self):
    # Proposals are unsuppressed windows: identical windows of overlapping crops (tIoU 1)
    # merge, distinct sliding windows stay.
    return dict(nms_iou_threshold=self._nms_iou, max_detections=self._max_detections,
                proposal_nms_iou_threshold=0.99, max_proposals=self._max_proposals)

  @property
  def networks(self):
    """{name: Keras layer} of the networks this configuration uses."""
    return dict(self._networks)

  @property
  def nms_iou_threshold(self):
    return self._nms_iou

  def evaluation_nms_iou_thresholds(self, tiou_thresholds):
    """{theta: NMS threshold theta - 0.1} for evaluating at each tIoU theta (paper Sec. 3.3).

    An evaluator that follows the paper post-processes once per theta with
    `postprocess(..., nms_iou_threshold=thresholds[theta])` and computes mAP@theta from those
    detections only.
    """
    return {float(t): min(max(float(t) - self._eval_nms_offset, 0.0), 1.0)
            for t in tiou_thresholds}

  def evaluation_postprocess_kwargs(self, tiou_thresholds):
    """The contract's per-threshold evaluation hook: NMS at theta - 0.1 for mAP@theta."""
    return {t: {"nms_iou_threshold": iou}
            for t, iou in self.evaluation_nms_iou_thresholds(tiou_thresholds).items()}

  # ------------------------------------------------------------------ how it trains
  def _network_names(self):
    names = []
    if self._use_proposal:
      names.append(PROPOSAL)
    if self._init_loc_from_cls or self._scoring == CLASSIFICATION:
      names.append(CLASSIFICATION)
    if self._scoring == LOCALIZATION:
      names.append(LOCALIZATION)
    return tuple(names)

  @property
  def training_phases(self):
    return self._network_names()

  def _inference_networks(self):
    return ((PROPOSAL,) if self._use_proposal else ()) + (self._scoring,)

  def phase_variables(self, phase):
    if phase not in self._networks:
      raise ValueError(f"scnn: unknown phase {phase!r}; expected one of {self.training_phases}")
    return list(self._networks[phase].trainable_variables)

  def begin_phase(self, phase, context):
    """Creates weights, computes the length prior once, initializes networks for the phase."""
    if phase not in self._networks:
      raise ValueError(f"scnn: unknown phase {phase!r}; expected one of {self.training_phases}")
    if not all(n.built for n in self._networks.values()):
      if not context.stream_dims:
        raise ValueError("scnn.begin_phase: networks are unbuilt and the context has no "
                         "stream_dims to build them")
      self.create_variables(context.stream_dims)
    if self._use_length_prior and not bool(self.length_prior_computed.numpy()):
      # Whole training videos, read once (not the random training crops).
      self.compute_length_prior(context.dataset_fn(False, False))
    if not context.fresh:
      return  # Resuming inside the phase: the checkpoint holds the weights.
    if phase == LOCALIZATION and self._init_loc_from_cls:
      self.initialize_localization_from_classification()
    elif self._pretrained_initializer is not None:
      # C3D Sports-1M initializes the proposal and classification networks (Sec. 3.1), and
      # the localization network when it does not start from the classification network.
      self._pretrained_initializer(self._networks[phase])

  def initialize_localization_from_classification(self):
    """Copies every classification-network weight into the localization network."""
    source = self._networks[CLASSIFICATION].weights
    target = self._networks[LOCALIZATION].weights
    if len(source) != len(target):
      raise ValueError(f"scnn: classification ({len(source)}) and localization "
                       f"({len(target)}) networks have different weights")
    for s, t in zip(source, target):
      t.assign(s)

  @property
  def window_subsets(self):
    """True when networks run on window subsets (the module doc's C3D mode)."""
    return self._max_training_windows > 0

  def create_variables(self, stream_dims):
    features = {s: stream_spec.dummy_input(stream_dims[s]) for s in self.stream_names}
    if self.window_subsets:
      # One clip of the stream's frame size builds each network.
      x = self._window_input(features)
      for network in self._networks.values():
        clips = network.window_clips(x, tf.zeros([1], tf.int32), tf.constant([[0.0, 1.0]]),
                                     tf.ones([1], tf.int32))
        network.classify(clips, training=False)
      return
    for phase in self._networks:
      self.predict(features, tf.ones([1], tf.int32), training=False, phase=phase)

  # ------------------------------------------------------------------ windows
  def _window_input(self, features):
    missing = [s for s in self._stream_names if s not in features]
    if missing:
      raise KeyError(f"scnn: feature streams {missing} missing from the input; "
                     f"got {sorted(features)}")
    maps = [tf.convert_to_tensor(features[s]) for s in self._stream_names]
    if len(maps) == 1 and maps[0].dtype == tf.uint8:
      return maps[0]  # Frames: cast per clip, after gathering (a video's frames stay uint8).
    maps = [tf.cast(m, tf.float32) for m in maps]
    return maps[0] if len(maps) == 1 else tf.concat(maps, axis=-1)

  def length_index(self, windows):
    """Index of each window's length among the configured lengths, [..., W] int32."""
    length = windows[..., 1] - windows[..., 0]
    diff = tf.abs(length[..., tf.newaxis] - self._window_lengths_steps)
    return tf.argmin(diff, axis=-1, output_type=tf.int32)

  def predict(self, features, num_steps, training=False, phase=None):
    """Window logits of the phase's network (all inference networks when phase is None).

    Returns windows [B, W, 2] (steps; the last is the whole video), sliding_valid [B, W],
    and <network>_logits [B, W, outputs] for each network run. In window-subset mode (module
    doc) a phase's predictions hold window_input and num_steps instead of logits: `loss`
    samples the windows and runs the network on them; at inference the scoring network's
    logits are zeros on the windows the proposal network drops.
    """
    num_steps = tf.cast(num_steps, tf.int32)
    x = self._window_input(features)
    sliding = self._anchor_generator.generate(tf.shape(x)[1])
    windows, sliding_valid = window_labeling.batch_windows(sliding, num_steps)
    names = self._inference_networks() if phase is None else (phase,)
    out = {"windows": windows, "sliding_valid": sliding_valid}
    for name in names:
      if name not in self._networks:
        raise ValueError(f"scnn: unknown phase {name!r}; expected one of "
                         f"{self.training_phases}")
    if self.window_subsets:
      if phase is not None:
        # Deferred: `loss` samples the windows and runs the network on them.
        out.update(window_input=x, num_steps=num_steps)
        return out
      return self._predict_kept_windows(out, x, num_steps)
    for name in names:
      if name not in self._networks:
        raise ValueError(f"scnn: unknown phase {name!r}; expected one of "
                         f"{self.training_phases}")
      out[f"{name}_logits"] = self._networks[name](x, windows, num_steps, training=training)
    return out

  def _subset_logits(self, name, x, windows, num_steps, mask, training, chunk=0):
    """Logits [B, W, outputs] of network `name` on the windows where mask [B, W] holds
    (zeros elsewhere), computed for those windows only (in chunks of `chunk` when > 0)."""
    network = self._networks[name]
    where = tf.where(mask)                                                  # [M, 2] int64
    count = tf.shape(where)[0]
    # One dummy window more (its logits are sliced off below): a batch with no sampled
    # window would otherwise run convolutions on an empty batch, which oneDNN's CPU kernels
    # reject ("input and filter must have the same depth").
    video = tf.concat([tf.cast(where[:, 0], tf.int32), [0]], 0)
    selected = tf.concat([tf.gather_nd(windows, where), [[0.0, 1.0]]], 0)  # [M + 1, 2]

    def run(video_part, window_part):
      clips = network.window_clips(x, video_part, window_part, num_steps)
      return network.classify(clips, training=training)

    if chunk > 0:
      padded = (count + chunk) // chunk * chunk  # >= count + 1
      video_chunks = tf.reshape(tf.pad(video, [[0, padded - count - 1]]), [-1, chunk])
      window_chunks = tf.reshape(tf.pad(selected, [[0, padded - count - 1], [0, 0]]),
                                 [-1, chunk, 2])
      logits = tf.map_fn(lambda c: run(c[0], c[1]), (video_chunks, window_chunks),
                         fn_output_signature=tf.TensorSpec([chunk, network.num_outputs],
                                                           tf.float32))
      logits = tf.reshape(logits, [-1, network.num_outputs])[:count]
    else:
      logits = run(video, selected)[:count]
    shape = tf.concat([tf.shape(mask, out_type=tf.int64),
                       [network.num_outputs]], 0)
    return tf.scatter_nd(where, logits, shape)

  def _predict_kept_windows(self, out, x, num_steps):
    """Inference in window-subset mode: the proposal network on every valid window, the
    scoring network on the windows it keeps (P_pro >= threshold)."""
    valid = out["sliding_valid"]
    windows = out["windows"]
    kept = valid
    if self._use_proposal:
      logits = self._subset_logits(PROPOSAL, x, windows, num_steps, valid, False,
                                   self._inference_chunk)
      out[f"{PROPOSAL}_logits"] = logits
      kept = tf.logical_and(valid, tf.nn.softmax(logits)[..., 1] >= self._proposal_threshold)
    out[f"{self._scoring}_logits"] = self._subset_logits(
        self._scoring, x, windows, num_steps, kept, False, self._inference_chunk)
    return out

  def _cap_per_video(self, sampled, seed):
    """Keeps at most max_training_windows_per_video of the sampled windows [B, W] of each
    video (a uniformly random subset where more were sampled)."""
    if seed is None:
      priority = tf.random.uniform(tf.shape(sampled))
    else:
      priority = tf.random.stateless_uniform(tf.shape(sampled),
                                             seed=tf.constant([int(seed), 3], tf.int64))
    priority = tf.where(sampled, priority, -1.0)
    k = tf.minimum(self._max_training_windows, tf.shape(sampled)[1])
    top, index = tf.math.top_k(priority, k=k)
    batch = tf.shape(sampled)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], tf.shape(index))
    chosen = tf.scatter_nd(tf.stack([rows, index], -1), tf.cast(top >= 0.0, tf.int32),
                           tf.shape(sampled))
    return tf.logical_and(sampled, chosen > 0)

  # ------------------------------------------------------------------ losses
  def label_windows(self, windows, sliding_valid, groundtruth, num_steps):
    """S-CNN labels / overlaps of the windows (see `window_labeling.label_windows`)."""
    return window_labeling.label_windows(
        windows, sliding_valid, tf.cast(groundtruth[InputFields.segments], tf.float32),
        groundtruth[InputFields.labels], groundtruth[InputFields.num_segments], num_steps,
        self._assigner, self._trimmed_tolerance)

  def loss(self, predictions, groundtruth, phase=None):
    """Loss of `phase`'s network on its mini-batch (Sec. 3.2); phase None sums all present."""
    windows = predictions["windows"]
    # The whole-video window is [0, num_steps]: the valid length comes back from it.
    num_steps = tf.cast(tf.round(windows[:, -1, 1]), tf.int32)
    labels = self.label_windows(windows, predictions["sliding_valid"], groundtruth, num_steps)
    names = ([phase] if phase is not None
             else [n for n in NETWORKS if f"{n}_logits" in predictions])
    out = {}
    for name in names:
      if f"{name}_logits" in predictions:
        out.update(self._network_loss(name, predictions[f"{name}_logits"], labels))
      elif "window_input" in predictions:
        # Window-subset mode: sample first, then run the network on the sample only.
        sampled = self._cap_per_video(self._sample(name, labels), self._sample_seed(name))
        logits = self._subset_logits(name, predictions["window_input"], windows,
                                     predictions["num_steps"], sampled, training=True)
        out.update(self._network_loss(name, logits, labels, sampled))
      else:
        raise ValueError(f"scnn.loss: predictions lack {name}_logits (predict with "
                         f"phase={name!r})")
    out["total_loss"] = tf.add_n([out[f"{n}_loss"] for n in names])
    return out

  def _sample_seed(self, name):
    return None if self._seed is None else self._seed + NETWORKS.index(name)

  def _sample(self, name, labels):
    """The phase's mini-batch (Sec. 3.2): bool [B, W]."""
    window_labels = labels["labels"]
    return self._samplers[name].subsample(window_labels > 0, tf.equal(window_labels, 0),
                                          seed=self._sample_seed(name))

  def _network_loss(self, name, logits, labels, sampled=None):
    window_labels = labels["labels"]
    positive = window_labels > 0
    if sampled is None:
      sampled = self._sample(name, labels)
    sampled = tf.cast(sampled, tf.float32)
    targets = tf.maximum(window_labels, 0)
    if name == PROPOSAL:
      targets = tf.cast(positive, tf.int32)
    softmax = losses_lib.weighted_softmax_cross_entropy(logits, targets, sampled)
    out = {}
    if name == LOCALIZATION:
      overlap = losses_lib.scnn_overlap_loss(logits, targets, labels["overlaps"], sampled,
                                             alpha=self._alpha)
      out[f"{name}_softmax"] = losses_lib.weighted_mean(softmax, sampled)
      out[f"{name}_overlap"] = losses_lib.weighted_mean(overlap, sampled)
      total = losses_lib.weighted_mean(softmax + self._lambda * overlap, sampled)
    else:
      total = losses_lib.weighted_mean(softmax, sampled)
    out[f"{name}_loss"] = total
    out[f"{name}_num_windows"] = tf.reduce_sum(sampled)
    return out

  # ------------------------------------------------------------------ length prior
  def length_counts(self, windows, sliding_valid, groundtruth, num_steps):
    """Positive sliding windows per (class, length): [K, L] float32 for one batch."""
    labels = self.label_windows(windows, sliding_valid, groundtruth, num_steps)["labels"]
    positive = tf.logical_and(labels > 0, sliding_valid)    # trimmed clips' whole windows out
    index = (tf.maximum(labels - 1, 0) * self.length_prior.shape[1]
             + self.length_index(windows))
    counts = tf.math.unsorted_segment_sum(
        tf.cast(tf.reshape(positive, [-1]), tf.float32), tf.reshape(index, [-1]),
        self._num_classes * int(self.length_prior.shape[1]))
    return tf.reshape(counts, self.length_prior.shape)

  def compute_length_prior(self, dataset):
    """Sets `length_prior` [K, L] from a dataset of padded training batches (read once).

    prior[k, l] = (n[k, l] + s) / (sum_l n[k, l] + s L): the frequency of length l among the
    positive training windows of class k (Sec. 3.3), n counted with the Sec. 3.2 labels;
    s = length_prior_smoothing. A class without positive windows gets a uniform prior.
    """

    @tf.function(reduce_retracing=True)
    def batch_counts(batch):
      num_steps = tf.cast(batch[InputFields.num_steps], tf.int32)
      x = self._window_input(batch[InputFields.features])
      sliding = self._anchor_generator.generate(tf.shape(x)[1])
      windows, valid = window_labeling.batch_windows(sliding, num_steps)
      return self.length_counts(windows, valid, batch, num_steps)

    counts = tf.zeros(self.length_prior.shape)
    for batch in dataset:
      counts += batch_counts(batch)
    self.length_prior.assign(self.prior_from_counts(counts))
    self.length_prior_computed.assign(True)
    return counts

  def prior_from_counts(self, counts):
    """[K, L] counts -> per-class frequencies (uniform for classes without counts)."""
    counts = tf.convert_to_tensor(counts, tf.float32) + self._prior_smoothing
    total = tf.reduce_sum(counts, axis=1, keepdims=True)
    uniform = tf.fill(tf.shape(counts), 1.0 / float(counts.shape[1]))
    return tf.where(total > 0, counts / tf.maximum(total, 1e-12), uniform)

  # ------------------------------------------------------------------ inference
  def postprocess(self, predictions, num_steps, feature_fps, nms_iou_threshold=None):
    """Detections (Sec. 3.3) and proposals in seconds.

    nms_iou_threshold: overrides the configured NMS threshold (e.g. theta - 0.1 from
    `evaluation_nms_iou_thresholds`).
    """
    iou = self._nms_iou if nms_iou_threshold is None else float(nms_iou_threshold)
    windows = predictions["windows"]
    valid = predictions["sliding_valid"]
    fps = tf.cast(feature_fps, tf.float32)
    if self._use_proposal:
      p_pro = tf.nn.softmax(predictions[f"{PROPOSAL}_logits"])[..., 1]
      kept = tf.logical_and(valid, p_pro >= self._proposal_threshold)
    else:
      p_pro = tf.ones_like(windows[..., 0])
      kept = valid
    probs = tf.nn.softmax(predictions[f"{self._scoring}_logits"])          # [B, W, K + 1]
    predicted = tf.argmax(probs, axis=-1, output_type=tf.int32)            # 0 = background
    score = tf.gather(probs, predicted, batch_dims=2)
    detected = tf.logical_and(kept, predicted > 0)
    if self._use_length_prior:
      prior = tf.gather_nd(self.length_prior, tf.stack(
          [tf.maximum(predicted - 1, 0), self.length_index(windows)], axis=-1))
      score = score * prior
    # Scores stay > 0 for detected windows unless their prior is 0; the NMS threshold 0
    # (strict) leaves everything else out.
    score = tf.where(detected, score, tf.zeros_like(score))
    width = tf.shape(windows)[1]
    batch = tf.shape(windows)[0]
    all_valid = tf.fill([batch], width)
    if self._per_class_nms:
      per_class = tf.one_hot(predicted - 1, self._num_classes) * score[..., tf.newaxis]
      dets = post_processing.batch_multiclass_nms(
          windows, per_class, all_valid, score_threshold=0.0, iou_threshold=iou,
          max_per_class=self._max_detections, max_total=self._max_detections)
      num = dets["num_detections"]
      segments, scores = dets["detection_segments"], dets["detection_scores"]
      present = tf.sequence_mask(num, self._max_detections)
      classes = tf.where(present, tf.cast(dets["detection_classes"], tf.int32) + 1, 0)
    else:
      segments, scores, indices, num = post_processing.batch_class_agnostic_nms(
          windows, score, all_valid, iou_threshold=iou, max_output=self._max_detections,
          score_threshold=0.0)
      present = tf.sequence_mask(num, self._max_detections)
      classes = tf.where(present, tf.gather(predicted, indices, batch_dims=1), 0)
    proposals, proposal_scores, num_proposals = self._proposals(windows, p_pro, kept)
    return {
        DetectionFields.detection_segments: segment_ops.steps_to_seconds(segments, fps),
        DetectionFields.detection_scores: scores,
        DetectionFields.detection_classes: classes,
        DetectionFields.num_detections: num,
        DetectionFields.proposal_segments: segment_ops.steps_to_seconds(proposals, fps),
        DetectionFields.proposal_scores: proposal_scores,
        DetectionFields.num_proposals: num_proposals,
    }

  def _proposals(self, windows, p_pro, kept):
    """Kept windows by decreasing P_pro: [B, P, 2], [B, P], count [B] (P = max_proposals)."""
    k = self._max_proposals
    batch = tf.shape(windows)[0]
    # Padding with k dropped entries gives top_k a static size even when W < k.
    scores = tf.concat([tf.where(kept, p_pro, -1.0), -tf.ones([batch, k])], axis=1)
    padded = tf.concat([windows, tf.zeros([batch, k, 2])], axis=1)
    top_scores, top = tf.math.top_k(scores, k=k)
    num = tf.minimum(tf.reduce_sum(tf.cast(kept, tf.int32), axis=1), k)
    present = tf.sequence_mask(num, k)
    segments = tf.where(present[..., tf.newaxis], tf.gather(padded, top, batch_dims=1), 0.0)
    return segments, tf.where(present, top_scores, 0.0), num
