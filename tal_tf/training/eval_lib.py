"""Evaluation of a model on the eval input: detections -> results dicts -> metrics.

Runs the model over whole videos (batched, padded), turns detections into the exchange format
(`{video_id: [{"segment": [s, e], "label": name, "score": f}]}`), and scores them with the
host-side evaluator of `tal_tf.evaluation` (the same code the evaluation CLI uses). Metrics go
to TensorBoard (scalars and images) and to a metrics JSON.
"""

import functools
import os

from absl import logging
import numpy as np
import tensorflow as tf

from tal_tf.builders import input_reader_builder
from tal_tf.core.standard_fields import DetectionFields
from tal_tf.core.standard_fields import InputFields
from tal_tf.data import label_map_util
from tal_tf.evaluation import class_activation_plot
from tal_tf.evaluation import evaluator as evaluator_lib
from tal_tf.evaluation import io as eval_io


def class_names_from_config(config, num_classes):
  """{id: name} from the eval (or train) reader's label map; ids as names if none."""
  for reader in (config.eval_input_reader, config.train_input_reader):
    path = reader.label_map_path
    if path:
      names = {i: n for n, i in label_map_util.get_label_map_dict(path).items()}
      missing = [i for i in range(1, num_classes + 1) if i not in names]
      if missing:
        raise ValueError(f"label map {path} lacks ids {missing[:10]} for num_classes="
                         f"{num_classes}")
      return {i: names[i] for i in range(1, num_classes + 1)}
  return {i: f"class_{i}" for i in range(1, num_classes + 1)}


def _decode_id(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class DetectionCollector:
  """Accumulates ground truth, detections and proposals per video (host side, numpy).

  Entries follow the evaluator's per-video format: {"segments": [N, 2] seconds, "labels":
  [N] class names, "scores": [N]} (ground truth has no scores, proposals no labels).
  """

  def __init__(self, class_names, max_detections_per_video=200):
    self.class_names = dict(class_names)
    self.max_detections = int(max_detections_per_video)
    self.groundtruth = {}
    self.results = {}
    self.proposals = {}
    self.durations = {}

  def _names(self, ids, where):
    try:
      return np.array([self.class_names[int(i)] for i in ids], dtype=object)
    except KeyError as e:
      raise ValueError(f"{where}: label id {e.args[0]} is not in the label map "
                       f"(ids 1..{len(self.class_names)})") from None

  def add_batch(self, batch, detections):
    """Adds one evaluated batch: input batch (numpy) + postprocessed detections (numpy)."""
    ids = batch[InputFields.video_id]
    for b in range(len(ids)):
      vid = _decode_id(ids[b])
      if vid in self.groundtruth:
        raise ValueError(
            f"video {vid!r} appears twice in the eval input (frame records of a long video "
            f"are split at create_frame_records --max_frames_per_record; evaluation needs "
            f"one record per video)")
      g = int(batch[InputFields.num_segments][b])
      self.durations[vid] = float(batch[InputFields.duration][b])
      self.groundtruth[vid] = {
          "segments": np.asarray(batch[InputFields.segments_seconds][b][:g], np.float64),
          "labels": self._names(batch[InputFields.labels][b][:g], f"video {vid} ground truth"),
      }
      n = min(int(detections[DetectionFields.num_detections][b]), self.max_detections)
      self.results[vid] = {
          "segments": np.asarray(detections[DetectionFields.detection_segments][b][:n],
                                 np.float64),
          "labels": self._names(detections[DetectionFields.detection_classes][b][:n],
                                f"video {vid} detections"),
          "scores": np.asarray(detections[DetectionFields.detection_scores][b][:n],
                               np.float64),
      }
      if DetectionFields.num_proposals not in detections:
        continue  # A model without proposals (AR@AN is then not computed).
      p = int(detections[DetectionFields.num_proposals][b])
      self.proposals[vid] = {
          "segments": np.asarray(detections[DetectionFields.proposal_segments][b][:p],
                                 np.float64),
          "scores": np.asarray(detections[DetectionFields.proposal_scores][b][:p], np.float64),
      }


def build_eval_dataset(config, num_classes):
  """Whole-video, read-once eval dataset from the eval input reader."""
  reader = config.eval_input_reader
  if not reader.input_path:
    raise ValueError("eval_input_reader.input_path is empty: evaluation needs records")
  return input_reader_builder.build(reader, num_classes=num_classes, is_training=False)


def _relaxed_spec(t):
  """TensorSpec of batch tensor `t` with its batch (and, from rank 2, time) size unknown: the
  layout of every input of the detection graph (features [B, T, ...], num_steps [B], a
  model's side inputs)."""
  return tf.TensorSpec([None] * min(t.shape.rank, 2) + t.shape[2:], t.dtype)


def _pretrace(fn, *args):
  """Traces tf.function `fn` once for `args` with unknown batch and length.

  Evaluation batches differ in batch size (the last one) and length; a plain tf.function
  would trace the first batch's exact shapes and trace again, relaxed, on the next batch.
  Calls of `fn` then dispatch to this trace (their shapes are special cases of it); an input
  whose other dimensions vary still gets a trace of its own, as without this.
  Returns the concrete function.
  """
  return fn.get_concrete_function(*tf.nest.map_structure(_relaxed_spec, args))


def make_detect_fn(model):
  """tf.function: batch (features, num_steps, feature_fps) -> postprocessed detections,
  traced on the first call for unknown batch size and length."""

  @tf.function(reduce_retracing=True)
  def detect(features, num_steps, feature_fps):
    inputs = model.preprocess({InputFields.features: features, InputFields.num_steps: num_steps,
                               InputFields.feature_fps: feature_fps})
    features, num_steps = inputs[InputFields.features], inputs[InputFields.num_steps]
    predictions = model.predict(features, num_steps, training=False)
    return model.postprocess(predictions, num_steps, inputs[InputFields.feature_fps])

  traced = []

  def call(features, num_steps, feature_fps):
    if not traced:
      traced.append(_pretrace(detect, features, num_steps, feature_fps))
    return detect(features, num_steps, feature_fps)

  return call


def make_multi_detect_fn(model, variants):
  """Python fn: batch -> (serving detections, [detections of each postprocess variant]).

  The network runs once per batch; `postprocess` runs once with no extra arguments (the
  serving detections) and once per keyword-argument dict of `variants` (the values are
  Python constants). On the first call the network is traced for unknown batch size and
  length, and each post-processing for the shapes that graph outputs.
  """

  @tf.function(reduce_retracing=True)
  def forward(features, num_steps, feature_fps):
    inputs = model.preprocess({InputFields.features: features, InputFields.num_steps: num_steps,
                               InputFields.feature_fps: feature_fps})
    num_steps = inputs[InputFields.num_steps]
    predictions = model.predict(inputs[InputFields.features], num_steps, training=False)
    return predictions, num_steps, inputs[InputFields.feature_fps]

  def post_fn(kwargs):
    # A closure, not functools.partial: the kwargs are constants of the traced graph.
    return tf.function(lambda p, n, f: model.postprocess(p, n, f, **kwargs),
                       reduce_retracing=True)

  posts = [post_fn(kwargs) for kwargs in [{}] + list(variants)]
  traced = []

  def detect(features, num_steps, feature_fps):
    if not traced:
      network = _pretrace(forward, features, num_steps, feature_fps)
      specs = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                                    network.structured_outputs)
      traced.extend(post.get_concrete_function(*specs) for post in posts)
    predictions, steps, fps = forward(features, num_steps, feature_fps)
    outs = [post(predictions, steps, fps) for post in posts]
    return outs[0], outs[1:]

  return detect


def postprocess_variants(model, tiou_thresholds, per_threshold=True):
  """{theta: key} and {key: kwargs} of the model's per-threshold evaluation post-processing.

  key None = the serving post-processing (no extra arguments): every theta without
  per-threshold arguments, and every theta when `per_threshold` is False.
  """
  wanted = model.evaluation_postprocess_kwargs(tiou_thresholds) if per_threshold else {}
  by_theta, variants = {}, {}
  for t in tiou_thresholds:
    kwargs = dict(wanted.get(float(t), {}) or {})
    key = tuple(sorted(kwargs.items())) or None
    by_theta[float(t)] = key
    if key is not None:
      variants[key] = kwargs
  return by_theta, variants


def collect(model, dataset, class_names, max_detections_per_video, max_videos=0,
            num_activation_videos=0, variants=None):
  """Runs `model` over `dataset`; returns a filled DetectionCollector. For a model that
  outputs per-step class scores, the first `num_activation_videos` videos' curves are kept
  in `collector.activation_videos` (drawn to TensorBoard). `variants` ({key: postprocess
  kwargs}, from `postprocess_variants`) adds `collector.variants` {key: DetectionCollector}
  of the same network outputs post-processed with those arguments."""
  collector = DetectionCollector(class_names, max_detections_per_video)
  collector.activation_videos = []
  variants = dict(variants or {})
  collector.variants = {k: DetectionCollector(class_names, max_detections_per_video)
                        for k in variants}
  if variants:
    detect = make_multi_detect_fn(model, variants.values())
  else:
    single = make_detect_fn(model)
    detect = lambda *args: (single(*args), [])
  curves = class_activation_plot.STEP_CLASS_SCORES in model.output_fields
  for batch in dataset:
    dets, variant_dets = detect(batch[InputFields.features], batch[InputFields.num_steps],
                                batch[InputFields.feature_fps])
    batch_np = tf.nest.map_structure(lambda t: t.numpy(), batch)
    dets_np = {k: v.numpy() for k, v in dets.items()}
    collector.add_batch(batch_np, dets_np)
    for key, vdets in zip(variants, variant_dets):
      collector.variants[key].add_batch(batch_np, {k: v.numpy() for k, v in vdets.items()})
    wanted = num_activation_videos - len(collector.activation_videos)
    if curves and wanted > 0:
      collector.activation_videos.extend(class_activation_plot.activation_videos_from_batch(
          batch_np, dets_np, class_names, limit=wanted))
    if max_videos and len(collector.groundtruth) >= max_videos:
      break
  return collector


def evaluator_from_config(eval_config):
  """DetectionEvaluator with the config's thresholds (THUMOS14 defaults when unset)."""
  kwargs = {}
  if eval_config.tiou_thresholds:
    kwargs["tiou_thresholds"] = [float(t) for t in eval_config.tiou_thresholds]
  if eval_config.recall_tiou_thresholds:
    kwargs["recall_tiou_thresholds"] = [float(t) for t in eval_config.recall_tiou_thresholds]
  if eval_config.average_number_of_proposals:
    kwargs["average_number_of_proposals"] = list(eval_config.average_number_of_proposals)
  kwargs["protocol"] = eval_config.protocol or "activitynet"
  return evaluator_lib.DetectionEvaluator(**kwargs)


def groundtruth_for_evaluation(eval_config, record_groundtruth):
  """Ground truth of the evaluated videos: from the records, or from the annotation JSON.

  With `eval_config.annotations_path` the original annotations are used (segments as
  annotated, and THUMOS14's 'Ambiguous' segments, which the thumos14 protocol needs and the
  converter drops from the records); every evaluated video must be in that file.
  """
  if not eval_config.annotations_path:
    return record_groundtruth
  annotations = eval_io.load_annotations(eval_config.annotations_path,
                                         subset=eval_config.subset or None)
  missing = sorted(set(record_groundtruth) - set(annotations))
  if missing:
    raise ValueError(
        f"eval_config.annotations_path {eval_config.annotations_path} (subset "
        f"{eval_config.subset or 'any'!r}) lacks {len(missing)} evaluated videos, e.g. "
        f"{missing[:5]}")
  return {v: annotations[v] for v in record_groundtruth}


def evaluate_dataset(model, eval_config, dataset, class_names):
  """Runs and scores `model` on `dataset` -> (metrics, collector, groundtruth, evaluator).

  mAP@theta is scored on the detections post-processed for theta when the model asks for it
  (`evaluation_postprocess_kwargs`) and `eval_config.per_threshold_postprocessing` is on;
  `collector.results` (written, drawn, and used for AR@AN) is always the serving
  post-processing, and `collector.results_per_threshold` {theta: results} holds the others.
  """
  evaluator = evaluator_from_config(eval_config)
  # Config thresholds are float32 (0.3 -> 0.30000001): the model sees them rounded.
  thetas = [round(float(t), 6) for t in evaluator.tiou_thresholds]
  by_theta, variants = postprocess_variants(model, thetas,
                                            eval_config.per_threshold_postprocessing)
  # The model may add to the reader's batches (ETP's frame AN: scores from frame records).
  collector = collect(model, model.evaluation_batches(dataset), class_names,
                      eval_config.max_detections_per_video or 200,
                      eval_config.max_videos,
                      num_activation_videos=eval_config.num_visualizations,
                      variants=variants)
  if not collector.groundtruth:
    raise ValueError("the eval input produced no videos; check eval_input_reader.input_path")
  collector.results_per_threshold = {t: collector.variants[k].results
                                     for t, k in by_theta.items() if k is not None}
  groundtruth = groundtruth_for_evaluation(eval_config, collector.groundtruth)
  metrics = evaluator.evaluate(groundtruth, collector.results,
                               collector.proposals if model.has_proposals else None,
                               class_names=[class_names[i] for i in sorted(class_names)],
                               results_per_threshold=collector.results_per_threshold)
  return metrics, collector, groundtruth, evaluator


def evaluate_model(model, config, step, output_dir):
  """Full evaluation: metrics dict, TensorBoard summaries in output_dir, metrics JSON."""
  eval_config = config.eval_config
  num_classes = model.num_classes
  class_names = class_names_from_config(config, num_classes)
  dataset = build_eval_dataset(config, num_classes)
  metrics, collector, groundtruth, evaluator = evaluate_dataset(model, eval_config, dataset,
                                                                class_names)
  eval_io.write_results(os.path.join(output_dir, f"detections_step_{int(step)}.json"),
                        collector.results)
  for theta, results in collector.results_per_threshold.items():
    # Replayable with evaluate_main --threshold_results=theta=<this file>.
    eval_io.write_results(os.path.join(output_dir, f"detections_step_{int(step)}_tiou{theta:g}"
                                       ".json"), results)
  writer = tf.summary.create_file_writer(output_dir)
  with writer.as_default(step=step):
    for name, value in evaluator_lib.scalar_metrics(metrics).items():
      tf.summary.scalar(name, value)
    for name, image in evaluator.summary_images(
        metrics, groundtruth, collector.results,
        num_videos=eval_config.num_visualizations).items():
      tf.summary.image(name, image[np.newaxis], max_outputs=1)
    if collector.activation_videos:
      # Weakly supervised models: per-step class activation curves, ground truth shaded.
      image = class_activation_plot.plot_class_activation_curves(
          collector.activation_videos, [class_names[i] for i in sorted(class_names)])
      tf.summary.image("class_activations", image[np.newaxis], max_outputs=1)
  writer.flush()
  writer.close()
  scalars = evaluator_lib.scalar_metrics(metrics)
  logging.info("evaluation at step %d: average mAP %.4f, %s", step,
               scalars.get("average_mAP", float("nan")),
               ", ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.startswith("AR@")))
  return metrics, collector
