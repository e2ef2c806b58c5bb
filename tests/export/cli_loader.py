"""Imports the script CLIs in export/ (not a package) as modules for in-process tests."""
import importlib.util
import os

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name, filename):
  spec = importlib.util.spec_from_file_location(name, os.path.join(_ROOT, "export", filename))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_exporter_cli():
  """export/export_saved_model.py as a module."""
  return _load("export_saved_model_cli", "export_saved_model.py")


def load_serving_client():
  """export/serving_client.py as a module."""
  return _load("serving_client", "serving_client.py")
