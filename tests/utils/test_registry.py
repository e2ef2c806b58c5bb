"""Registry: duplicates fail, misses list what exists."""
import pytest

from tal_tf.utils import registry


def test_register_and_get():
  r = registry.Registry("thing")

  @r.register("a")
  def make_a():
    return "A"

  assert r.get("a") is make_a
  assert r.get("a")() == "A"
  assert "a" in r and "b" not in r
  assert r.names() == ["a"]


def test_duplicate_name_is_rejected():
  r = registry.Registry("thing")
  r.register("a", lambda: 1)
  with pytest.raises(KeyError, match="already registered"):
    r.register("a", lambda: 2)


def test_miss_lists_registered_names():
  r = registry.Registry("anchor generator")
  r.register("multiscale", lambda: 1)
  r.register("sliding", lambda: 2)
  with pytest.raises(KeyError) as e:
    r.get("multiscal")
  assert "multiscal" in str(e.value)
  assert "multiscale, sliding" in str(e.value)
  assert "anchor generator" in str(e.value)


def test_empty_name_rejected():
  with pytest.raises(ValueError):
    registry.Registry("x").register("", lambda: 1)
