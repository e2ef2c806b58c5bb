"""Trains and/or evaluates a tal_tf pipeline.

  python train_main.py --pipeline_config=configs/tal_net_embedded.config --model_dir=/tmp/run \
      [--mode=train|eval|train_and_eval|continuous_eval] [--num_train_steps=N] \
      [--config_override='train_input_reader { input_path: "x-*.tfrecord" }']

Re-running with the same --model_dir resumes from the newest checkpoint. TensorBoard:
`tensorboard --logdir=<model_dir> --host=127.0.0.1`.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("pipeline_config", None, "Path to a text-format pipeline config.")
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, summaries and metrics.")
flags.DEFINE_enum("mode", "train_and_eval",
                  ["train", "eval", "train_and_eval", "continuous_eval"], "What to run.")
flags.DEFINE_integer("num_train_steps", None, "Overrides train_config.num_steps.",
                     lower_bound=1)
flags.DEFINE_string("config_override", None,
                    "Text proto merged over the pipeline config (repeated fields replace).")
flags.DEFINE_string("checkpoint", None, "eval mode: a checkpoint path (default: newest).")
flags.mark_flags_as_required(["pipeline_config", "model_dir"])


def main(argv):
  del argv
  from tal_tf.training import run_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  # A bad config, data or disk ends in one line naming the file or field (tal_tf.utils.cli).
  config = config_util.load_pipeline_config(FLAGS.pipeline_config, FLAGS.config_override)
  metrics = run_lib.run(config, FLAGS.model_dir, FLAGS.mode,
                        num_train_steps=FLAGS.num_train_steps, checkpoint=FLAGS.checkpoint)
  if metrics:
    from tal_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
    print(evaluator.format_table(metrics))
    print(f"metrics: {FLAGS.model_dir}/metrics.json; TensorBoard: tensorboard "
          f"--logdir={FLAGS.model_dir} --host=127.0.0.1")
  return 0


if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
