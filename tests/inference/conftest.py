"""Session-wide tiny exported model for the inference tests."""
import pytest

from tests.export import tiny_model


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
  return tiny_model.get_export(tmp_path_factory)
