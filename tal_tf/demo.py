r"""End-to-end demo on the embedded dataset: generate, convert, train, evaluate.

  python -m tal_tf.demo --output_dir=demo_output [--num_videos=60] [--num_train_steps=1500]

1. Writes synthetic two-stream features over the real THUMOS14 annotation structure in the
   exchange format (annotations JSON + label map + one .npy per video per stream).
2. Converts the validation subset (training) and the test subset (evaluation) to TFRecords
   with the same converter CLI users run on their own data.
3. Trains TAL-Net (configs/tal_net_embedded.config) with evaluation at the end, prints the
   mAP table, and says where the TensorBoard logs are.
Re-running resumes: generated data and records are reused, training continues from the
newest checkpoint.
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags
from absl import logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO_ROOT, "configs", "tal_net_embedded.config")

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "demo_output", "Where data, records and the model go.")
flags.DEFINE_string("pipeline_config", DEFAULT_CONFIG, "Pipeline config to train.")
flags.DEFINE_integer("num_videos", 60,
                     "Videos per subset of THUMOS14 validation and test (N ids spread evenly over the "
                     "sorted list, so every class appears); 0 = all.")
flags.DEFINE_integer("num_train_steps", None, "Overrides train_config.num_steps.")
flags.DEFINE_float("feature_fps", 2.0, "Feature steps per second of the synthetic features.")
flags.DEFINE_integer("dim", 32, "Feature dim of each synthetic stream.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic features.")


def _run(cmd):
  logging.info("$ %s", " ".join(cmd))
  subprocess.run(cmd, check=True)


def prepare_data(output_dir, num_videos, feature_fps, dim, seed):
  """Generates and converts the embedded dataset; returns paths (reuses existing output)."""
  from tal_tf.dataset_tools import synthetic_thumos  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(output_dir, "data")
  records_dir = os.path.join(output_dir, "records")
  annotations = os.path.join(data_dir, "annotations.json")
  label_map = os.path.join(data_dir, "label_map.pbtxt")
  features = {s: os.path.join(data_dir, "features", s) for s in ("rgb", "flow")}
  if not os.path.exists(annotations):
    print(f"[1/3] generating the embedded dataset in {data_dir} ...", flush=True)
    synthetic_thumos.generate_dataset(
        data_dir, subsets=("validation", "test"), num_videos=num_videos or None,
        stream_dims={"rgb": dim, "flow": dim}, feature_fps=feature_fps, seed=seed)
  else:
    print(f"[1/3] reusing the embedded dataset in {data_dir}", flush=True)
  os.makedirs(records_dir, exist_ok=True)
  features_flag = ",".join(f"{s}:{d}" for s, d in features.items())
  for subset, name in (("validation", "train"), ("test", "test")):
    prefix = os.path.join(records_dir, name)
    if any(f.startswith(name + "-") and f.endswith(".tfrecord")
           for f in os.listdir(records_dir)):
      print(f"[2/3] reusing {prefix}-*.tfrecord", flush=True)
      continue
    print(f"[2/3] converting subset {subset} -> {prefix}-*.tfrecord", flush=True)
    _run([sys.executable, "-m", "tal_tf.dataset_tools.create_tfrecord",
          f"--annotations={annotations}", f"--subset={subset}",
          f"--label_map={label_map}", f"--features={features_flag}",
          f"--feature_fps={feature_fps}", "--ignore_classes=Ambiguous",
          f"--output={prefix}", "--num_shards=2"])
  return dict(records_dir=records_dir, label_map=label_map, annotations=annotations)


def demo_override(paths, dim):
  """Text proto pointing the embedded config at the generated data."""
  train = os.path.join(paths["records_dir"], "train-*.tfrecord")
  test = os.path.join(paths["records_dir"], "test-*.tfrecord")
  streams = "".join(f' streams {{ name: "{s}" dim: {dim} }}' for s in ("rgb", "flow"))
  return (f'train_input_reader {{ input_path: "{train}" label_map_path: '
          f'"{paths["label_map"]}"{streams} }} '
          f'eval_input_reader {{ input_path: "{test}" label_map_path: '
          f'"{paths["label_map"]}"{streams} }}')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  from tal_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
  from tal_tf.training import run_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top

  output_dir = os.path.abspath(FLAGS.output_dir)
  paths = prepare_data(output_dir, FLAGS.num_videos, FLAGS.feature_fps, FLAGS.dim, FLAGS.seed)
  config = config_util.load_pipeline_config(FLAGS.pipeline_config,
                                            demo_override(paths, FLAGS.dim))
  model_dir = os.path.join(output_dir, "model")
  print(f"[3/3] training + evaluating TAL-Net in {model_dir} ...", flush=True)
  metrics = run_lib.run(config, model_dir, "train_and_eval",
                        num_train_steps=FLAGS.num_train_steps)
  print()
  print(evaluator.format_table(metrics))
  print()
  print(f"Metrics JSON:     {os.path.join(model_dir, 'metrics.json')}")
  print(f"TensorBoard logs: {model_dir}  (train/ and eval/)")
  print(f"Open them with:   tensorboard --logdir={model_dir} --host=127.0.0.1 --port=6006")
  print("                  then browse http://127.0.0.1:6006")
  return 0


if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
