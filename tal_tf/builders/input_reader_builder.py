"""Builds tf.data pipelines from `InputReader` protos."""

from tal_tf.data import input_pipeline
from tal_tf.utils import config_util


def build(reader_config, num_classes, is_training, input_context=None, seed=None,
          batch_size=None, fields=None, start_position=None, log_fn=None):
  """InputReader proto -> tf.data.Dataset of padded batches (InputFields keys).

  `fields`: the model's `input_fields` (InputFields keys it trains on; None = every known
  field); training batches carry those plus features, num_steps, video_id, duration,
  feature_fps and window_offset, evaluation batches also the segment ground truth
  (tal_tf/data/input_fields.py resolves this). `batch_size` overrides the reader's global
  batch size (e.g. eval on one video at a time); with an `input_context`, `build_dataset`
  derives the per-replica batch from the global one. `class_aware_batching` (training only)
  draws each batch by class (tal_tf/data/class_aware_sampler.py). `start_position`
  (training): read in the resumable order (tal_tf/data/deterministic_order.py) from that
  many records on; `log_fn` hears how it shards.
  """
  batch = int(batch_size or reader_config.batch_size)
  class_aware = None
  if is_training and reader_config.HasField("class_aware_batching"):
    options = reader_config.class_aware_batching
    class_aware = (options.num_classes_per_batch, options.min_videos_per_class)
  return input_pipeline.build_dataset(
      file_pattern=list(reader_config.input_path),
      stream_dims=config_util.stream_dims(reader_config),
      num_classes=num_classes,
      batch_size=batch,
      is_training=is_training,
      max_steps=(reader_config.max_steps or None) if is_training else None,
      min_kept_fraction=reader_config.min_kept_fraction,
      shuffle_buffer=(reader_config.shuffle_buffer_size
                      if is_training and reader_config.shuffle else 0),
      num_parallel_reads=reader_config.num_parallel_reads,
      skip_corrupt=reader_config.skip_corrupt_records,
      max_segments=reader_config.max_segments or None,
      input_context=input_context,
      repeat=reader_config.repeat if is_training else False,
      seed=seed,
      fields=fields,
      class_aware=class_aware,
      start_position=start_position,
      log_fn=log_fn)
