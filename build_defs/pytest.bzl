"""pytest_test: one Bazel py_test per pytest file, run by //build_defs:pytest_main.py."""

def pytest_test(name, src, deps = [], data = [], shard_count = None, size = "medium",
                tags = [], **kwargs):
  """A py_test running pytest on `src` (Bazel sharding maps onto pytest's collected items).

  Args:
    name: target name.
    src: the pytest file, relative to this package.
    deps: py_library dependencies (tal_tf, test helpers).
    data: runtime files.
    shard_count: Bazel shards; each runs every shard_count-th collected test.
    size: Bazel test size (sets the default timeout).
    tags: e.g. "slow" (excluded by --test_tag_filters=-slow).
    **kwargs: passed to py_test.
  """
  native.py_test(
      name = name,
      srcs = ["//build_defs:pytest_main.py", src],
      main = "//build_defs:pytest_main.py",
      args = ["$(rootpath %s)" % src],
      deps = deps,
      data = data,
      python_version = "PY3",
      srcs_version = "PY3",
      shard_count = shard_count,
      size = size,
      tags = tags,
      **kwargs
  )
