"""Tests of the label-map reader / writer."""

import os

import pytest
from hypothesis import given, settings, strategies as st

from tal_tf.data import label_map_util as lmu
from tal_tf.data.label_map_util import LabelMapError, LabelMapItem


def _write(tmp_path, text, name="map.pbtxt"):
  path = os.path.join(str(tmp_path), name)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


def test_parses_items_comments_separators_and_display_name(tmp_path):
  path = _write(tmp_path, """
# THUMOS-like map
item {
  id: 2
  name: "CliffDiving"   # trailing comment
}
item: { id: 1, name: 'BaseballPitch'; display_name: "Baseball \\"pitch\\"" }
""")
  items = lmu.load_label_map(path)
  assert items == [LabelMapItem(2, "CliffDiving", None),
                   LabelMapItem(1, "BaseballPitch", 'Baseball "pitch"')]
  assert lmu.get_label_map_dict(path) == {"CliffDiving": 2, "BaseballPitch": 1}
  assert lmu.get_id_to_name(path) == {2: "CliffDiving", 1: "BaseballPitch"}
  assert lmu.get_num_classes(path) == 2
  index = lmu.create_category_index(path)
  assert index[1] == {"id": 1, "name": "BaseballPitch", "display_name": 'Baseball "pitch"'}
  assert index[2] == {"id": 2, "name": "CliffDiving", "display_name": "CliffDiving"}


def test_octal_and_hex_escapes_decode_utf8():
  # "\303\251" is the UTF-8 encoding of e-acute, as protobuf's text writer emits it.
  items = lmu.parse_label_map_text('item { id: 1 name: "Caf\\303\\251" }\n'
                                   'item { id: 2 name: "A\\x42C" }')
  assert [it.name for it in items] == ["Caf\u00e9", "ABC"]


@pytest.mark.parametrize("text, line, fragment", [
    ('item { id: 1 name: "a" }\nitem { id: 1 name: "b" }', 2, "duplicate id 1"),
    ('item { id: 1 name: "a" }\n\nitem { id: 2 name: "a" }', 3, "duplicate name 'a'"),
    ('item { id: 0 name: "background" }', 1, "ids must be >= 1"),
    ('item { id: -3 name: "x" }', 1, "ids must be >= 1"),
    ('item {\n  id: 1\n  label: "x"\n}', 3, "unknown field 'label'"),
    ('item { name: "x" }', 1, "no 'id'"),
    ('item { id: 4 }', 1, "no 'name'"),
    ('item { id: "4" name: "x" }', 1, "'id' must be an integer"),
    ('item { id: 4 name: x }', 1, "must be a quoted string"),
    ('item { id: 4 name: "x" id: 5 }', 1, "given twice"),
    ('item { id: 4 name: "x"', 1, "not closed"),
    ('\n\nitems { id: 4 name: "x" }', 3, "expected 'item'"),
    ('item { id: 4 name: "x" } $', 1, "unexpected text"),
    ('item { id: 1 name: "bad \\q escape" }', 1, "unknown escape"),
])
def test_errors_name_file_and_line(tmp_path, text, line, fragment):
  path = _write(tmp_path, text)
  with pytest.raises(LabelMapError) as err:
    lmu.load_label_map(path)
  message = str(err.value)
  assert f"{path}:{line}:" in message
  assert fragment in message


def test_empty_and_missing_files_are_errors(tmp_path):
  with pytest.raises(LabelMapError, match="no items"):
    lmu.load_label_map(_write(tmp_path, "# nothing\n"))
  with pytest.raises(LabelMapError, match="does not exist"):
    lmu.load_label_map(os.path.join(str(tmp_path), "absent.pbtxt"))


def test_items_from_class_names_sorted_ids_from_one():
  items = lmu.items_from_class_names(["b", "a", "c", "a"])
  assert items == [LabelMapItem(1, "a", None), LabelMapItem(2, "b", None),
                   LabelMapItem(3, "c", None)]


def test_writer_sorts_by_id_and_rejects_invalid(tmp_path):
  path = os.path.join(str(tmp_path), "sub", "out.pbtxt")
  lmu.write_label_map(path, [(3, "c"), {"id": 1, "name": "a", "display_name": "A"}])
  with open(path, encoding="utf-8") as f:
    text = f.read()
  assert text == ('item {\n  id: 1\n  name: "a"\n  display_name: "A"\n}\n'
                  'item {\n  id: 3\n  name: "c"\n}\n')
  with pytest.raises(LabelMapError, match="duplicate id"):
    lmu.write_label_map(path, [(1, "a"), (1, "b")])
  with pytest.raises(LabelMapError, match=">= 1"):
    lmu.write_label_map(path, [(0, "background")])


names = st.text(min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(st.lists(names, min_size=1, max_size=6, unique=True),
       st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=6, max_size=6))
def test_write_then_read_round_trip(tmp_path_factory, name_list, displays):
  items = [LabelMapItem(i * 2 + 1, n, displays[i]) for i, n in enumerate(name_list)]
  path = os.path.join(str(tmp_path_factory.mktemp("rt")), "m.pbtxt")
  lmu.write_label_map(path, items)
  assert lmu.load_label_map(path) == items
