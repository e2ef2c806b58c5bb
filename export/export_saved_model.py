r"""Exports a trained tal_tf detector as a TensorFlow Serving SavedModel.

  python export/export_saved_model.py \
      --pipeline_config=configs/tal_net_thumos14_i3d.config \
      --trained_checkpoint_dir=runs/thumos14 \
      --output_directory=serving/tal_net

writes serving/tal_net/<version>/{saved_model.pb, variables/, pipeline.config,
label_map.pbtxt, checkpoint/}, where <version> is one more than the newest version already
there (1 for a new directory). `--model_version=N` picks the version; an existing version is
never replaced unless `--overwrite` is given. Point TF Serving's --model_base_path at
--output_directory (see export/README.md for the serving command and request formats).

Flags:
  --pipeline_config         text-format TrainEvalPipelineConfig the model was trained with
  --trained_checkpoint_dir  training model_dir (its latest checkpoint is used) or a
                            checkpoint prefix such as runs/thumos14/ckpt-20000
  --output_directory        TF Serving model base path
  --config_override         text proto merged over the config (e.g. export_config { ... })
  --model_version / --overwrite / --max_detections / --label_map
"""

import os
import sys

# Run as a script from a fresh clone: make the repository's package importable.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=wrong-import-position


def define_flags(flag_values=flags.FLAGS):
  """Defines the exporter's flags on `flag_values` (the global FLAGS by default)."""
  fv = flag_values
  flags.DEFINE_string("pipeline_config", None, "Pipeline config (text proto) of the model.",
                      flag_values=fv)
  flags.DEFINE_string("trained_checkpoint_dir", None, "Training model_dir (latest checkpoint) "
                      "or a checkpoint prefix (model_dir/ckpt-N).", flag_values=fv)
  flags.DEFINE_string("output_directory", None, "TF Serving model base directory; the model "
                      "is written to <output_directory>/<version>/.", flag_values=fv)
  flags.DEFINE_string("config_override", None, "Text proto merged over the pipeline config.",
                      flag_values=fv)
  flags.DEFINE_integer("model_version", None, "Version subdirectory to write (default: one "
                       "more than the newest existing version, 1 if none).", flag_values=fv)
  flags.DEFINE_boolean("overwrite", False, "Replace --model_version if it already exists.",
                       flag_values=fv)
  flags.DEFINE_integer("max_detections", None, "Detections per video returned by the "
                       "signatures (default export_config.max_detections).", flag_values=fv)
  flags.DEFINE_string("label_map", None, "Label map copied beside the model (default: the "
                      "input reader's label_map_path).", flag_values=fv)


def run(fv):
  """Runs the export described by parsed flags `fv`; returns the version directory."""
  from tal_tf.export import exporter_lib  # pylint: disable=g-import-not-at-top
  from tal_tf.utils import config_util  # pylint: disable=g-import-not-at-top
  for required in ("pipeline_config", "trained_checkpoint_dir", "output_directory"):
    if not getattr(fv, required):
      raise app.UsageError(f"--{required} is required")
  config = config_util.load_pipeline_config(fv.pipeline_config, fv.config_override)
  return exporter_lib.export_saved_model(
      config, fv.trained_checkpoint_dir, fv.output_directory,
      model_version=fv.model_version, overwrite=fv.overwrite,
      max_detections=fv.max_detections, label_map_path=fv.label_map)


def main(argv):
  """absl entry point: exports, prints the version directory; exit code 1 on failure."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  path = run(flags.FLAGS)  # Errors become one line in tal_tf.utils.cli.
  print(f"Exported SavedModel: {path}")
  return 0


if __name__ == "__main__":
  from tal_tf.utils import cli  # pylint: disable=g-import-not-at-top
  define_flags()
  cli.run(main)
