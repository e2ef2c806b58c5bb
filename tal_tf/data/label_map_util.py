"""Label maps: a strict reader and a writer for the text format `item { id: 1 name: "X" }`.

The format is the Object Detection API's `StringIntLabelMap` text proto restricted to what
tal_tf uses: a sequence of `item { ... }` blocks, each with an integer `id` (>= 1; id 0 is
background and never listed), a string `name` and an optional string `display_name`.
This module parses it by itself (no compiled protos needed), so data tools work before
and without the proto package; anything outside that subset is an error naming the file
and line, because a silently misread label map shifts every class id.
"""

import collections
import os
import re

from tal_tf.utils import atomic_files

LabelMapItem = collections.namedtuple("LabelMapItem", ["id", "name", "display_name"])
LabelMapItem.__doc__ = "One label-map entry: integer id (>= 1), name, display_name (or None)."

_ALLOWED_FIELDS = ("id", "name", "display_name")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\",
                   "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}
_TOKEN_RE = re.compile(r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<int>[-+]?[0-9]+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[{}:;,])
""", re.VERBOSE)


class LabelMapError(ValueError):
  """A label map that is not valid text, or not a valid map (duplicates, bad ids)."""


def _unescape(body, where):
  """Decodes a quoted text-proto string body (C escapes, octal/hex bytes) to str."""
  out = bytearray()
  i = 0
  while i < len(body):
    ch = body[i]
    if ch != "\\":
      out += ch.encode("utf-8")
      i += 1
      continue
    nxt = body[i + 1]
    if nxt in _SIMPLE_ESCAPES:
      out += _SIMPLE_ESCAPES[nxt].encode("utf-8")
      i += 2
    elif nxt in "01234567":
      m = re.match(r"[0-7]{1,3}", body[i + 1:])
      out.append(int(m.group(0), 8) & 0xFF)
      i += 1 + len(m.group(0))
    elif nxt == "x":
      m = re.match(r"[0-9A-Fa-f]{1,2}", body[i + 2:])
      if not m:
        raise LabelMapError(f"{where}: bad \\x escape in string {body!r}")
      out.append(int(m.group(0), 16))
      i += 2 + len(m.group(0))
    else:
      raise LabelMapError(f"{where}: unknown escape '\\{nxt}' in string {body!r}")
  try:
    return out.decode("utf-8")
  except UnicodeDecodeError as e:
    raise LabelMapError(f"{where}: string {body!r} is not valid UTF-8 ({e})") from None


def _tokenize(text, path):
  """Yields (kind, value, line) tokens; raises LabelMapError on anything unrecognized."""
  line = 1
  pos = 0
  while pos < len(text):
    m = _TOKEN_RE.match(text, pos)
    if not m:
      snippet = text[pos:pos + 20].split("\n")[0]
      raise LabelMapError(f"{path}:{line}: unexpected text {snippet!r}")
    kind = m.lastgroup
    value = m.group(kind)
    pos = m.end()
    if kind == "newline":
      line += 1
    elif kind in ("space", "comment"):
      continue
    else:
      yield kind, value, line


def parse_label_map_text(text, path="<string>"):
  """Parses label-map text into a list of LabelMapItem, in file order; strict."""
  tokens = list(_tokenize(text, path))
  items = []
  i = 0

  def expect(kind, value=None):
    nonlocal i
    if i >= len(tokens):
      last_line = tokens[-1][2] if tokens else 1
      raise LabelMapError(f"{path}:{last_line}: unexpected end of file, expected "
                          f"{value or kind}")
    tok = tokens[i]
    if tok[0] != kind or (value is not None and tok[1] != value):
      raise LabelMapError(f"{path}:{tok[2]}: expected {value or kind}, got {tok[1]!r}")
    i += 1
    return tok

  while i < len(tokens):
    kind, value, line = tokens[i]
    if kind != "ident" or value != "item":
      raise LabelMapError(f"{path}:{line}: expected 'item', got {value!r} (only "
                          f"'item {{ id: .. name: \"..\" }}' blocks are allowed)")
    item_line = line
    i += 1
    if i < len(tokens) and tokens[i][:2] == ("punct", ":"):
      i += 1  # `item: { ... }` is valid text-proto syntax too.
    expect("punct", "{")
    fields = {}
    while True:
      if i >= len(tokens):
        raise LabelMapError(f"{path}:{item_line}: item block is not closed with '}}'")
      kind, value, line = tokens[i]
      if (kind, value) == ("punct", "}"):
        i += 1
        break
      if kind != "ident":
        raise LabelMapError(f"{path}:{line}: expected a field name, got {value!r}")
      if value not in _ALLOWED_FIELDS:
        raise LabelMapError(f"{path}:{line}: unknown field {value!r} in item; allowed: "
                            f"{', '.join(_ALLOWED_FIELDS)}")
      if value in fields:
        raise LabelMapError(f"{path}:{line}: field {value!r} given twice in one item")
      name = value
      i += 1
      expect("punct", ":")
      if i >= len(tokens):
        raise LabelMapError(f"{path}:{line}: missing value for field {name!r}")
      vkind, vtext, vline = tokens[i]
      if name == "id":
        if vkind != "int":
          raise LabelMapError(f"{path}:{vline}: field 'id' must be an integer, got {vtext!r}")
        fields[name] = int(vtext)
      else:
        if vkind != "string":
          raise LabelMapError(f"{path}:{vline}: field {name!r} must be a quoted string, "
                              f"got {vtext!r}")
        fields[name] = _unescape(vtext[1:-1], f"{path}:{vline}")
      i += 1
      if i < len(tokens) and tokens[i][0] == "punct" and tokens[i][1] in ",;":
        i += 1  # Text proto allows an optional separator after a field.
    for required in ("id", "name"):
      if required not in fields:
        raise LabelMapError(f"{path}:{item_line}: item has no {required!r} field")
    if fields["id"] < 1:
      raise LabelMapError(f"{path}:{item_line}: item {fields['name']!r} has id "
                          f"{fields['id']}; ids must be >= 1 (0 is background)")
    if not fields["name"]:
      raise LabelMapError(f"{path}:{item_line}: item with id {fields['id']} has an empty name")
    items.append((LabelMapItem(fields["id"], fields["name"], fields.get("display_name")),
                  item_line))

  seen_ids, seen_names = {}, {}
  for item, line in items:
    if item.id in seen_ids:
      raise LabelMapError(f"{path}:{line}: duplicate id {item.id} (first at line "
                          f"{seen_ids[item.id]})")
    if item.name in seen_names:
      raise LabelMapError(f"{path}:{line}: duplicate name {item.name!r} (first at line "
                          f"{seen_names[item.name]})")
    seen_ids[item.id] = line
    seen_names[item.name] = line
  if not items:
    raise LabelMapError(f"{path}: label map has no items")
  return [item for item, _ in items]


def load_label_map(path):
  """Reads and validates a label-map file -> list of LabelMapItem in file order."""
  if not os.path.isfile(path):
    raise LabelMapError(f"label map file {path!r} does not exist")
  with open(path, "r", encoding="utf-8") as f:
    text = f.read()
  return parse_label_map_text(text, path)


def _quote(s):
  """Quotes a str for text proto (escapes backslash, quotes and control characters)."""
  out = []
  for ch in s:
    if ch == "\\":
      out.append("\\\\")
    elif ch == '"':
      out.append('\\"')
    elif ch == "\n":
      out.append("\\n")
    elif ch == "\t":
      out.append("\\t")
    elif ch == "\r":
      out.append("\\r")
    elif ord(ch) < 0x20 or ord(ch) == 0x7F:
      out.append("\\%03o" % ord(ch))
    else:
      out.append(ch)
  return '"' + "".join(out) + '"'


def _as_items(items):
  """Accepts LabelMapItem / (id, name) / dicts with id+name; returns validated items."""
  result = []
  for it in items:
    if isinstance(it, LabelMapItem):
      result.append(it)
    elif isinstance(it, dict):
      result.append(LabelMapItem(int(it["id"]), str(it["name"]), it.get("display_name")))
    else:
      ident, name = it
      result.append(LabelMapItem(int(ident), str(name), None))
  # Re-validate through the parser so a written file always reads back.
  parse_label_map_text(_format_items(result), "<label map being written>")
  return result


def _format_items(items):
  lines = []
  for it in items:
    lines.append("item {")
    lines.append(f"  id: {it.id}")
    lines.append(f"  name: {_quote(it.name)}")
    if it.display_name is not None:
      lines.append(f"  display_name: {_quote(it.display_name)}")
    lines.append("}")
  return "\n".join(lines) + "\n"


def label_map_to_text(items):
  """Formats items (LabelMapItem, (id, name) pairs or dicts) as label-map text, by id."""
  items = sorted(_as_items(items), key=lambda it: it.id)
  return _format_items(items)


def write_label_map(path, items):
  """Writes items as a label-map text file (sorted by id), atomically; creates parent dirs."""
  atomic_files.write_text(path, label_map_to_text(items))


def items_from_class_names(names):
  """Builds items from class names: sorted by name, ids 1..N (the converter's rule)."""
  unique = sorted(set(names))  # A repeated name denotes one class.
  return [LabelMapItem(i + 1, name, None) for i, name in enumerate(unique)]


def get_label_map_dict(path_or_items):
  """Returns {name: id} for a label-map file path or a list of items."""
  items = _load(path_or_items)
  return {it.name: it.id for it in items}


def get_id_to_name(path_or_items):
  """Returns {id: name} for a label-map file path or a list of items."""
  return {it.id: it.name for it in _load(path_or_items)}


def id_to_name_if_exists(path, num_classes=None, flag=None):
  """{id: name} of the label map at `path`, or {} (with a warning) when there is none, so
  results name classes `class_<id>`.

  The map names detections in results files, where a wrong or partial map is a silent wrong
  answer, so: `flag` says the user named `path` with that flag (a missing file is then a
  LabelMapError, not a fallback), and with `num_classes` (the model's) the map must name
  exactly the ids 1..num_classes."""
  if path and os.path.isfile(path):
    id_to_name = get_id_to_name(path)
    if num_classes is not None:
      missing = sorted(set(range(1, int(num_classes) + 1)) - set(id_to_name))
      extra = sorted(set(id_to_name) - set(range(1, int(num_classes) + 1)))
      if missing or extra:
        what = (f"names no class for ids {_first(missing)}" if missing
                else f"has ids {_first(extra)} beyond")
        raise LabelMapError(
            f"{flag + ' ' if flag else ''}{path}: label map {what} the model's classes "
            f"1..{int(num_classes)}; it is not the label map of this model")
    return id_to_name
  if path and flag:
    raise LabelMapError(f"{flag}: label map {path!r} does not exist")
  import logging  # pylint: disable=g-import-not-at-top
  logging.getLogger("tal_tf").warning("no label map found (%s): classes are written as "
                                      "class_<id>", path)
  return {}


def _first(ids, limit=8):
  return str(ids[:limit])[:-1] + (", ...]" if len(ids) > limit else "]")


def get_num_classes(path_or_items):
  """Number of foreground classes = the largest id (ids index columns id-1 of multi-hot)."""
  return max(it.id for it in _load(path_or_items))


def create_category_index(path_or_items):
  """Returns {id: {'id', 'name', 'display_name'}} like the OD API (display_name or name)."""
  index = {}
  for it in _load(path_or_items):
    index[it.id] = {"id": it.id, "name": it.name,
                    "display_name": it.display_name if it.display_name is not None
                    else it.name}
  return index


def _load(path_or_items):
  if isinstance(path_or_items, (str, os.PathLike)):
    return load_label_map(os.fspath(path_or_items))
  return _as_items(path_or_items)
