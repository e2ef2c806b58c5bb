"""atomic_files: a failed rename names the output, not the hidden temporary, and leaves no
temporary behind (every atomic writer, e.g. results and metrics JSON, goes through it)."""

import os

import pytest

from tal_tf.evaluation import metrics_table
from tal_tf.utils import atomic_files
from tal_tf.utils import cli


def test_output_that_is_a_directory_is_named_in_the_error(tmp_path):
  target = tmp_path / "out.json"
  target.mkdir()
  with pytest.raises(IsADirectoryError) as info:
    atomic_files.write_text(str(target), "{}")
  assert info.value.filename == str(target)
  assert cli.one_line(info.value) == f"{target}: is a directory"
  assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_metrics_json_goes_through_atomic_files(tmp_path):
  target = tmp_path / "metrics.json"
  target.mkdir()
  metrics = {"tiou_thresholds": [0.5], "mAP": [0.25], "average_mAP": 0.25}
  with pytest.raises(IsADirectoryError) as info:
    metrics_table.write_metrics_json(metrics, str(target))
  assert cli.one_line(info.value) == f"{target}: is a directory"
  assert sorted(os.listdir(tmp_path)) == ["metrics.json"]
  path = metrics_table.write_metrics_json(metrics, str(tmp_path / "sub" / "m.json"))
  text = open(path).read()
  assert text.endswith("}\n") and '"average_mAP": 0.25' in text
  assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask
