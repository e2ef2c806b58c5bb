"""TAL-Net (Chao et al., CVPR 2018) as a two-stage temporal detection meta-architecture.

Stage 1, the Segment Proposal Network (SPN), classifies and regresses multi-scale anchors
with one receptive-field-aligned tower per scale; decoded anchors go through NMS (tIoU 0.7,
top 300) to become proposals. Stage 2 SoI-pools each proposal (extended by s/2 on each side
for context), applies one FC layer and a final FC for (C+1)-way classification and
class-specific boundary regression. Both stages are trained jointly with equal weight
(supplementary Sec. 1).

Fusion of several streams:
  * LATE (the paper's): each stream has its own reducer, SPN and classifier; SPN logits and
    box encodings are averaged to make one set of proposals; classifier logits and box
    encodings are averaged likewise.
  * EARLY: streams are concatenated along channels and go through one network.

Proposals only (`number_of_stages=1`, as the Object Detection API's Faster R-CNN offers): no
classifier is built or trained; `postprocess` returns the proposals themselves as detections,
class-agnostic, every one with class id 1 (standing for "an action", whatever the label map
calls id 1), so the detection fields keep their contract; the proposal fields are returned
too, and AR@AN (computed from them) is the metric to read -- per-class detection mAP of such
a model is not meaningful.

Training never needs ground truth in `predict`: the classifier runs on all (at most 300)
proposals and `loss` samples the 64-proposal mini-batch from them, so the graph has no hidden
ground-truth state and inference and training share one forward pass.
"""

import tensorflow as tf

from tal_tf.core import losses as losses_lib
from tal_tf.core import post_processing
from tal_tf.core import segment_ops
from tal_tf.core import soi_pooling
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.meta_architectures import meta_arch

FUSION_LATE = "late"
FUSION_EARLY = "early"
# Anchors that cross the video boundary (start < 0 or end > num_steps):
#   KEEP: they are trained and decoded like any other anchor (default: see `__init__`).
#   DROP_AND_CLIP: the Object Detection API's Faster R-CNN behaviour: left out of training
#     (no loss, no proposals), clipped to the video before decoding at inference.
CROSS_BOUNDARY_KEEP = "keep"
CROSS_BOUNDARY_DROP_AND_CLIP = "drop_and_clip"


class TalNetMetaArch(meta_arch.TemporalDetectionModel):
  """TAL-Net: SPN proposals + SoI-pooled classifier, late or early fusion."""

  def __init__(self,
               num_classes,
               stream_names,
               fusion,
               anchor_generator,
               segment_coder,
               branch_builder,
               first_stage_target_assigner,
               first_stage_sampler,
               second_stage_target_assigner,
               second_stage_sampler,
               first_stage_nms_iou_threshold=0.7,
               first_stage_max_proposals=300,
               soi_num_bins=7,
               soi_context_fraction=0.5,
               second_stage_score_threshold=0.0,
               second_stage_nms_iou_threshold=0.7,
               second_stage_max_per_class=100,
               second_stage_max_total=100,
               second_stage_soft_nms_sigma=0.0,
               first_stage_classification_weight=1.0,
               first_stage_localization_weight=1.0,
               second_stage_classification_weight=1.0,
               second_stage_localization_weight=1.0,
               cross_boundary_anchors=CROSS_BOUNDARY_KEEP,
               number_of_stages=2,
               name="tal_net"):
    """Builds TAL-Net.

    Args:
      num_classes: action classes C (label ids 1..C).
      stream_names: feature streams read, e.g. ("rgb", "flow").
      fusion: "late" or "early".
      anchor_generator: AnchorGenerator (anchors in feature steps, location-major).
      segment_coder: SegmentCoder used by both stages.
      branch_builder: callable(branch_name) -> (reducer, spn, classifier_head) Keras layers
        for one fusion branch (one per stream for late fusion, one for early fusion);
        classifier_head is None with number_of_stages=1.
      first_stage_target_assigner / second_stage_target_assigner: TargetAssigners.
      first_stage_sampler / second_stage_sampler: BalancedPositiveNegativeSamplers.
      cross_boundary_anchors: "keep" (default) or "drop_and_clip" (see the constants above).
        The paper does not say; "keep" is the default because a tower's receptive field is
        built to equal its anchor's span, so an anchor near the edge is still an aligned,
        well-defined example (its receptive field sees the zero padding, like the convs), and
        on short videos or windows "drop" would remove every long anchor of the edge steps
        (a 16-step anchor needs 8 steps of video on both sides). Proposals are clipped to the
        video after decoding in both modes.
      number_of_stages: 2 (proposals + classifier, the paper's) or 1 (proposals only: the
        second-stage arguments are unused; see the module docstring).
      The rest: NMS, SoI pooling and loss-weight settings (defaults are the paper's).
    """
    super().__init__(name=name)
    if num_classes < 1:
      raise ValueError(f"tal_net: num_classes must be >= 1, got {num_classes}")
    if not stream_names:
      raise ValueError("tal_net: at least one stream name is required")
    if fusion not in (FUSION_LATE, FUSION_EARLY):
      raise ValueError(f"tal_net: fusion must be 'late' or 'early', got {fusion!r}")
    if cross_boundary_anchors not in (CROSS_BOUNDARY_KEEP, CROSS_BOUNDARY_DROP_AND_CLIP):
      raise ValueError(f"tal_net: cross_boundary_anchors must be {CROSS_BOUNDARY_KEEP!r} or "
                       f"{CROSS_BOUNDARY_DROP_AND_CLIP!r}, got {cross_boundary_anchors!r}")
    self._cross_boundary = cross_boundary_anchors
    if number_of_stages not in (1, 2):
      raise ValueError(f"tal_net: number_of_stages must be 1 (proposals only) or 2, got "
                       f"{number_of_stages!r}")
    self._number_of_stages = int(number_of_stages)
    self._num_classes = int(num_classes)
    self._stream_names = tuple(stream_names)
    self._fusion = fusion
    self._anchor_generator = anchor_generator
    self._coder = segment_coder
    self._first_assigner = first_stage_target_assigner
    self._first_sampler = first_stage_sampler
    self._second_assigner = second_stage_target_assigner
    self._second_sampler = second_stage_sampler
    self._first_nms_iou = float(first_stage_nms_iou_threshold)
    self._max_proposals = int(first_stage_max_proposals)
    self._soi_num_bins = int(soi_num_bins)
    self._soi_context = float(soi_context_fraction)
    self._score_threshold = float(second_stage_score_threshold)
    self._second_nms_iou = float(second_stage_nms_iou_threshold)
    self._max_per_class = int(second_stage_max_per_class)
    self._max_total = int(second_stage_max_total)
    self._soft_nms_sigma = float(second_stage_soft_nms_sigma)
    self._weights = dict(
        first_cls=float(first_stage_classification_weight),
        first_loc=float(first_stage_localization_weight),
        second_cls=float(second_stage_classification_weight),
        second_loc=float(second_stage_localization_weight))
    self._branch_names = (self._stream_names if fusion == FUSION_LATE
                          else ("+".join(self._stream_names),))
    self._reducers, self._spns, self._heads = [], [], []
    for branch in self._branch_names:
      reducer, spn, head = branch_builder(branch)
      if (head is None) != (self._number_of_stages == 1):
        raise ValueError(f"tal_net: branch_builder must return a classifier head exactly when "
                         f"number_of_stages is 2; number_of_stages={self._number_of_stages}, "
                         f"head={head!r}")
      self._reducers.append(reducer)
      self._spns.append(spn)
      if head is not None:
        self._heads.append(head)

  @property
  def num_classes(self):
    return self._num_classes

  @property
  def stream_names(self):
    return self._stream_names

  @property
  def fusion(self):
    return self._fusion

  @property
  def number_of_stages(self):
    return self._number_of_stages

  @property
  def max_detections(self):
    return self._max_total if self._number_of_stages == 2 else self._max_proposals

  @property
  def optional_outputs(self):
    return meta_arch.PROPOSAL_OUTPUTS

  @property
  def window_merge(self):
    # Windows merge with the second stage's NMS threshold; proposals with the SPN's (and so
    # do the detections of a proposals-only model, which are its proposals).
    if self._number_of_stages == 1:
      return dict(nms_iou_threshold=self._first_nms_iou, max_detections=self._max_proposals,
                  proposal_nms_iou_threshold=self._first_nms_iou,
                  max_proposals=self._max_proposals)
    return dict(nms_iou_threshold=self._second_nms_iou, max_detections=self._max_total,
                proposal_nms_iou_threshold=self._first_nms_iou,
                max_proposals=self._max_proposals)

  def _branch_inputs(self, features):
    """Per-branch feature maps [B, T, D]: one per stream (late) or their concat (early)."""
    missing = [s for s in self._stream_names if s not in features]
    if missing:
      raise KeyError(f"tal_net: feature streams {missing} missing from the input; "
                     f"got {sorted(features)}")
    maps = [tf.convert_to_tensor(features[s], tf.float32) for s in self._stream_names]
    if self._fusion == FUSION_EARLY:
      return [tf.concat(maps, axis=-1)]
    return maps

  def anchors(self, num_steps_padded):
    """Anchors [T*K, 2] in feature steps for a padded length T."""
    return self._anchor_generator.generate(num_steps_padded)

  def predict(self, features, num_steps, training=False, phase=None):
    """Runs both stages.

    Returns a dict with: anchors [N,2]; objectness_logits [B,N,2]; anchor_box_encodings
    [B,N,2]; num_valid_anchors [B]; anchor_valid [B,N] (anchors on real steps that take part
    in training and proposals); proposal_segments [B,P,2] (steps); proposal_scores [B,P];
    num_proposals [B]; with two stages also class_logits [B,P,C+1] and refined_box_encodings
    [B,P,C,2].
    """
    num_steps = tf.cast(num_steps, tf.int32)
    maps = self._branch_inputs(features)
    # An empty input (T = 0) is padded to one masked step: TF's 'same' pooling misbehaves on
    # zero-length inputs, and a video without steps simply yields no proposals.
    pad = tf.maximum(1 - tf.shape(maps[0])[1], 0)
    maps = [tf.pad(m, [[0, 0], [0, pad], [0, 0]]) for m in maps]
    padded_t = tf.shape(maps[0])[1]
    anchors = self.anchors(padded_t)
    k = self._anchor_generator.num_anchors_per_location()
    # Location-major anchors: the first num_steps * K belong to real (unpadded) steps.
    num_valid_anchors = num_steps * k

    reduced = [reducer(m, training=training) for reducer, m in zip(self._reducers, maps)]
    # The SPN masks padded steps between layers, so a video's proposals do not depend on
    # what else is in its batch.
    spn_out = [spn(r, num_steps=num_steps, training=training)
               for spn, r in zip(self._spns, reduced)]
    objectness_logits = tf.add_n([o[0] for o in spn_out]) / float(len(spn_out))
    anchor_box_encodings = tf.add_n([o[1] for o in spn_out]) / float(len(spn_out))

    anchor_valid, decode_anchors = self._anchors_for_videos(
        anchors, num_steps, num_valid_anchors, training)
    proposals, proposal_scores, num_proposals = self._proposals(
        decode_anchors, objectness_logits, anchor_box_encodings, num_steps, anchor_valid)

    predictions = {
        "anchors": anchors,
        "objectness_logits": objectness_logits,
        "anchor_box_encodings": anchor_box_encodings,
        "num_valid_anchors": num_valid_anchors,
        "anchor_valid": anchor_valid,
        "proposal_segments": proposals,
        "proposal_scores": proposal_scores,
        "num_proposals": num_proposals,
    }
    if self._number_of_stages == 2:
      predictions["class_logits"], predictions["refined_box_encodings"] = self._classify(
          maps, proposals, num_steps, training, num_proposals)
    return predictions

  def _anchors_for_videos(self, anchors, num_steps, num_valid_anchors, training):
    """Per video: which anchors count (bool [B, N]) and the anchors to decode ([B, N, 2]).

    Anchors on padded steps never count. With DROP_AND_CLIP, anchors crossing the video's
    boundary do not count in training and are clipped to [0, num_steps] at inference.
    """
    batch = tf.shape(num_steps)[0]
    n = tf.shape(anchors)[0]
    valid = tf.sequence_mask(num_valid_anchors, n)
    tiled = tf.broadcast_to(anchors[tf.newaxis], tf.stack([batch, n, 2]))
    if self._cross_boundary == CROSS_BOUNDARY_DROP_AND_CLIP:
      zeros, length = tf.zeros([batch]), tf.cast(num_steps, tf.float32)
      if training:
        valid = tf.logical_and(valid, segment_ops.inside_window(tiled, zeros, length))
      else:
        tiled = segment_ops.clip_to_window(tiled, zeros, length)
    return valid, tiled

  def _proposals(self, anchors, objectness_logits, box_encodings, num_steps, anchor_valid):
    """Decodes anchors [B, N, 2], clips to the video, NMS at tIoU 0.7, keeps the top ones.

    Only anchors with `anchor_valid` [B, N] can become proposals.
    """
    batch = tf.shape(box_encodings)[0]
    decoded = self._coder.decode(box_encodings, anchors)
    length = tf.cast(num_steps, tf.float32)
    decoded = segment_ops.clip_to_window(decoded, tf.zeros([batch]), length)
    # Proposals are fixed inputs to stage 2 (as in Faster R-CNN's approximate joint
    # training): no gradient flows through their coordinates.
    decoded = tf.stop_gradient(decoded)
    scores = tf.stop_gradient(tf.nn.softmax(objectness_logits)[..., 1])
    # -inf scores are never NMS candidates (the kernel keeps scores > -inf only).
    scores = tf.where(anchor_valid, scores, -float("inf"))
    segments, scores, _, num = post_processing.batch_class_agnostic_nms(
        decoded, scores, tf.fill([batch], tf.shape(scores)[1]),
        iou_threshold=self._first_nms_iou,
        max_output=self._max_proposals)
    return segments, scores, num

  def _classify(self, maps, proposals, num_steps, training, num_proposals=None):
    """SoI pooling + classifier per branch, logits averaged across branches.

    With `num_proposals` [B], only the first max(num_proposals) proposal slots are pooled
    and classified (the rest are padding in every video of the batch) and the outputs are
    zero-padded back to P slots: each slot's outputs depend on its proposal alone.
    """
    if num_proposals is not None:
      p = tf.shape(proposals)[1]
      used = tf.reduce_max(tf.concat([num_proposals, [0]], axis=0))
      logits, encodings = self._classify(maps, proposals[:, :used], num_steps, training)
      logits = tf.pad(logits, [[0, 0], [0, p - used], [0, 0]])
      encodings = tf.pad(encodings, [[0, 0], [0, p - used], [0, 0], [0, 0]])
      logits.set_shape(proposals.shape[:2].concatenate(logits.shape[2:]))
      encodings.set_shape(proposals.shape[:2].concatenate(encodings.shape[2:]))
      return logits, encodings
    # Every branch pools the same proposals: one pooling over the streams concatenated along
    # channels computes the sample positions and weights once and gathers once (pooling
    # acts on each channel alone, so the values are those of pooling each stream apart).
    pooled = soi_pooling.soi_pooling(
        maps[0] if len(maps) == 1 else tf.concat(maps, axis=-1), proposals, num_steps,
        num_bins=self._soi_num_bins, context_fraction=self._soi_context)
    if len(maps) > 1:
      dims = [m.shape[-1] for m in maps]
      if None in dims:  # channels known only at run time (e.g. an unchecked serving input)
        dims = tf.stack([tf.shape(m)[-1] for m in maps])
      pooled = tf.split(pooled, dims, axis=-1, num=len(maps))
    else:
      pooled = [pooled]
    logits, encodings = [], []
    for head, branch_pooled in zip(self._heads, pooled):
      cls, enc = head(branch_pooled, training=training)
      logits.append(cls)
      encodings.append(enc)
    n = float(len(logits))
    return tf.add_n(logits) / n, tf.add_n(encodings) / n

  def loss(self, predictions, groundtruth, phase=None):
    """Joint two-stage loss (supplementary Eq. 1): CE + lambda * smooth L1, both stages.

    `groundtruth` holds InputFields.segments [B,G,2] (feature steps), labels [B,G] (ids) and
    num_segments [B]. Each term is normalized by the number of sampled examples of its video
    and averaged over the batch.
    """
    gt_segments = tf.cast(groundtruth[InputFields.segments], tf.float32)
    gt_labels = tf.cast(groundtruth[InputFields.labels], tf.int32)
    num_gt = tf.cast(groundtruth[InputFields.num_segments], tf.int32)
    first = self._first_stage_loss(predictions, gt_segments, num_gt)
    w = self._weights
    out = {
        "first_stage_classification_loss": w["first_cls"] * first[0],
        "first_stage_localization_loss": w["first_loc"] * first[1],
    }
    if self._number_of_stages == 2:
      second = self._second_stage_loss(predictions, gt_segments, gt_labels, num_gt)
      out["second_stage_classification_loss"] = w["second_cls"] * second[0]
      out["second_stage_localization_loss"] = w["second_loc"] * second[1]
    out["total_loss"] = tf.add_n(list(out.values()))
    return out

  @staticmethod
  def _valid_mask(count, size):
    return tf.sequence_mask(count, size)

  def _first_stage_loss(self, predictions, gt_segments, num_gt):
    logits = predictions["objectness_logits"]
    encodings = predictions["anchor_box_encodings"]
    valid = predictions["anchor_valid"]
    ones = tf.ones_like(gt_segments[..., 0], tf.int32)
    # Anchors on padded steps take no part in matching (nor in forced matches).
    targets = self._first_assigner.assign(predictions["anchors"], gt_segments, ones, num_gt,
                                          anchor_valid=valid)
    eligible = tf.logical_and(valid, targets["cls_weights"] > 0)
    positive = tf.logical_and(eligible, targets["cls_targets"] > 0)
    sampled = self._first_sampler.subsample(eligible, positive)
    return self._stage_losses(
        logits, targets["cls_targets"], sampled,
        encodings, targets["reg_targets"], tf.logical_and(sampled, positive))

  def _second_stage_loss(self, predictions, gt_segments, gt_labels, num_gt):
    proposals = predictions["proposal_segments"]
    p = tf.shape(proposals)[1]
    valid = self._valid_mask(predictions["num_proposals"], p)
    targets = self._second_assigner.assign(proposals, gt_segments, gt_labels, num_gt,
                                           anchor_valid=valid)
    eligible = tf.logical_and(valid, targets["cls_weights"] > 0)
    foreground = tf.logical_and(eligible, targets["cls_targets"] > 0)
    sampled = self._second_sampler.subsample(eligible, foreground)
    # Regress with the box encoding of the ground-truth class (class-specific regression).
    refined = predictions["refined_box_encodings"]  # [B, P, C, 2]
    class_index = tf.maximum(targets["cls_targets"] - 1, 0)
    chosen = tf.gather(refined, class_index, axis=2, batch_dims=2)
    return self._stage_losses(
        predictions["class_logits"], targets["cls_targets"], sampled,
        chosen, targets["reg_targets"], tf.logical_and(sampled, foreground))

  @staticmethod
  def _stage_losses(logits, cls_targets, sampled, encodings, reg_targets, regressed):
    sampled_f = tf.cast(sampled, tf.float32)
    count = tf.maximum(tf.reduce_sum(sampled_f, axis=1), 1.0)  # [B]
    cls = losses_lib.weighted_softmax_cross_entropy(logits, cls_targets, sampled_f)
    loc = losses_lib.weighted_smooth_l1(encodings, reg_targets, tf.cast(regressed, tf.float32))
    cls = tf.reduce_mean(tf.reduce_sum(cls, axis=1) / count)
    loc = tf.reduce_mean(tf.reduce_sum(loc, axis=1) / count)
    return cls, loc

  def postprocess(self, predictions, num_steps, feature_fps):
    """Class-specific decoding, per-class NMS, segments in seconds; ids are label-map ids.

    With number_of_stages=1 the detections are the proposals, class id 1 (module docstring).
    """
    if self._number_of_stages == 1:
      return self._proposals_as_detections(predictions, feature_fps)
    proposals = predictions["proposal_segments"]  # [B, P, 2]
    refined = predictions["refined_box_encodings"]  # [B, P, C, 2]
    probs = tf.nn.softmax(predictions["class_logits"])[..., 1:]  # [B, P, C]
    anchors = tf.broadcast_to(proposals[:, :, tf.newaxis, :], tf.shape(refined))
    segments = self._coder.decode(refined, anchors)
    batch = tf.shape(segments)[0]
    length = tf.cast(num_steps, tf.float32)
    segments = segment_ops.clip_to_window(
        tf.reshape(segments, [batch, -1, 2]), tf.zeros([batch]), length)
    segments = tf.reshape(segments, tf.shape(refined))
    dets = post_processing.batch_multiclass_nms(
        segments, probs, predictions["num_proposals"],
        score_threshold=self._score_threshold,
        iou_threshold=self._second_nms_iou,
        max_per_class=self._max_per_class,
        max_total=self._max_total,
        soft_nms_sigma=self._soft_nms_sigma)
    fps = tf.cast(feature_fps, tf.float32)
    num = dets["num_detections"]
    valid = tf.sequence_mask(num, tf.shape(dets["detection_scores"])[1])
    classes = tf.where(valid, tf.cast(dets["detection_classes"], tf.int32) + 1, 0)
    out = self._proposal_outputs(predictions, feature_fps)
    out.update({
        DetectionFields.detection_segments: segment_ops.steps_to_seconds(
            dets["detection_segments"], fps),
        DetectionFields.detection_scores: dets["detection_scores"],
        DetectionFields.detection_classes: classes,
        DetectionFields.num_detections: num,
    })
    return out

  def _proposal_outputs(self, predictions, feature_fps):
    """The optional proposal fields (segments in seconds)."""
    return {
        DetectionFields.proposal_segments: segment_ops.steps_to_seconds(
            predictions["proposal_segments"], tf.cast(feature_fps, tf.float32)),
        DetectionFields.proposal_scores: predictions["proposal_scores"],
        DetectionFields.num_proposals: predictions["num_proposals"],
    }

  def _proposals_as_detections(self, predictions, feature_fps):
    """Proposals-only outputs: detections = proposals (already NMSed, sorted), class id 1."""
    out = self._proposal_outputs(predictions, feature_fps)
    num = out[DetectionFields.num_proposals]
    valid = tf.sequence_mask(num, tf.shape(out[DetectionFields.proposal_scores])[1])
    out.update({
        DetectionFields.detection_segments: out[DetectionFields.proposal_segments],
        DetectionFields.detection_scores: out[DetectionFields.proposal_scores],
        DetectionFields.detection_classes: tf.cast(valid, tf.int32),
        DetectionFields.num_detections: num,
    })
    return out
