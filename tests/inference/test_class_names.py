"""What a results file says: a --label_map that is missing or belongs to another model is an
error before any inference, not results labelled 'class_<id>' (or half of them) without a
word; videos with no feature steps are counted."""

import os

import numpy as np
import pytest

from tal_tf.data import label_map_util
from tal_tf.evaluation import io as eval_io
from tal_tf.inference import infer_main
from tests import cli_util
from tests.export import tiny_model

FPS = 2.0


@pytest.fixture(scope="module")
def npy_features(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("class_names"))
  dirs = {}
  for stream, values in tiny_model.random_features(30, seed=3).items():
    dirs[stream] = os.path.join(root, stream)
    os.makedirs(dirs[stream])
    np.save(os.path.join(dirs[stream], "video_a.npy"), values)
  return ",".join(f"{s}:{d}" for s, d in dirs.items())


def _run(exported, npy_features, output, *extra):
  return infer_main.run(cli_util.parse_flags(
      infer_main, f"--saved_model_dir={exported['export_dir']}", f"--features={npy_features}",
      f"--feature_fps={FPS}", f"--output={output}", *extra))


def test_missing_label_map_flag_is_an_error(exported, npy_features, tmp_path):
  output = tmp_path / "results.json"
  with pytest.raises(label_map_util.LabelMapError,
                     match=r"^--label_map: label map '.*nope\.pbtxt' does not exist$"):
    _run(exported, npy_features, str(output), f"--label_map={tmp_path / 'nope.pbtxt'}")
  assert not output.exists()


@pytest.mark.parametrize("items,expected", [
    ([(1, "Jump"), (2, "Run")], r"names no class for ids \[3\] the model's classes 1\.\.3"),
    ([(1, "Jump"), (2, "Run"), (3, "Throw"), (4, "Swim")],
     r"has ids \[4\] beyond the model's classes 1\.\.3")])
def test_label_map_of_another_model_is_an_error(exported, npy_features, tmp_path, items,
                                                 expected):
  other = str(tmp_path / "other.pbtxt")
  label_map_util.write_label_map(other, items)
  with pytest.raises(label_map_util.LabelMapError,
                     match=rf"^--label_map .*other\.pbtxt: label map {expected}; it is not "
                           r"the label map of this model$"):
    _run(exported, npy_features, str(tmp_path / "results.json"), f"--label_map={other}")


def test_matching_label_map_names_every_detection(exported, npy_features, tmp_path):
  own = os.path.join(exported["export_dir"], "label_map.pbtxt")
  output = str(tmp_path / "results.json")
  _run(exported, npy_features, output, f"--label_map={own}")
  labels = set(eval_io.load_results(output)["video_a"]["labels"])
  assert labels and labels <= set(tiny_model.CLASS_NAMES)


def test_no_label_map_at_all_still_falls_back_to_ids(tmp_path):
  assert label_map_util.id_to_name_if_exists(None, num_classes=3) == {}
  assert label_map_util.id_to_name_if_exists(str(tmp_path / "absent.pbtxt")) == {}


def test_videos_without_feature_steps_are_counted(exported, tmp_path):
  # An empty feature file gives an empty result (documented: T = 0), counted for the
  # summary rather than indistinguishable from a video where nothing was detected.
  dirs = {}
  for stream, values in tiny_model.random_features(30, seed=4).items():
    dirs[stream] = str(tmp_path / stream)
    os.makedirs(dirs[stream])
    np.save(os.path.join(dirs[stream], "video_full.npy"), values)
    np.save(os.path.join(dirs[stream], "video_empty.npy"), values[:0])
  output = str(tmp_path / "results.json")
  result = _run(exported, ",".join(f"{s}:{d}" for s, d in dirs.items()), output)
  assert result.stats["empty_videos"] == 1
  results = eval_io.load_results(output)
  assert len(results["video_empty"]["scores"]) == 0
  assert len(results["video_full"]["scores"]) > 0
