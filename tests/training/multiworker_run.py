"""One training process for the multi-worker tests: a worker of a local cluster (with
--ports) or a single process, recording what it trains on.

  python tests/training/multiworker_run.py --config=C --model_dir=D --num_train_steps=N \
      [--ports=p0,p1 --task_index=i] [--dump_dir=W] [--ids_file=F]

--dump_dir: after every loop, this replica's trainable weights -> W/step-<global step>.npz.
--ids_file: the video ids of every per-replica batch, one line per step, appended to F by
the training graph itself (tf.print), so the lines of a SIGKILLed run are on disk.
"""
import argparse
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", required=True)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--num_train_steps", type=int, required=True)
  parser.add_argument("--ports", default="")
  parser.add_argument("--task_index", type=int, default=0)
  parser.add_argument("--dump_dir", default="")
  parser.add_argument("--ids_file", default="")
  args = parser.parse_args()
  if args.ports:
    from tal_tf.training import local_cluster  # pylint: disable=g-import-not-at-top
    os.environ["TF_CONFIG"] = local_cluster.tf_config(args.ports.split(","), args.task_index)

  from absl import logging  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tal_tf.core.standard_fields import InputFields  # pylint: disable=g-import-not-at-top
  from tal_tf.training import train_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.INFO)
  config = config_util.load_pipeline_config(args.config)
  trainer = train_lib.Trainer(config, args.model_dir, args.num_train_steps)
  if args.ids_file:
    preprocess = trainer.model.preprocess

    def recording_preprocess(batch):
      ids = tf.strings.reduce_join(batch[InputFields.video_id], separator=" ")
      with tf.control_dependencies([tf.print(ids, output_stream="file://" + args.ids_file)]):
        return preprocess({k: tf.nest.map_structure(tf.identity, v) for k, v in batch.items()})

    trainer.model.preprocess = recording_preprocess

  def dump(step):
    if args.dump_dir:
      weights = {f"{i:03d}": v.numpy() for i, v in enumerate(trainer.model.trainable_variables)}
      path = os.path.join(args.dump_dir, f"step-{step}.npz")
      np.savez(path + ".tmp.npz", **weights)
      os.replace(path + ".tmp.npz", path)  # A SIGKILL leaves no half-written file.

  trainer.train(after_loop_fn=dump)


if __name__ == "__main__":
  main()
