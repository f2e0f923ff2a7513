"""Reading YAML that a user or a stranger wrote: configs, sweep files, a run folder's config.yaml.

PyYAML's `safe_load` builds no objects but plain data, yet it accepts two things a config must not have:
a key given twice (the second `training:` section silently replaces the first) and aliases that expand to
more than any config holds (a 1.5 KB "billion laughs" file becomes billions of nodes once a reader walks
it). `load_yaml` refuses both, and files larger than any config, with a `YamlError` naming the file, the
line and the fix. Written here: PyYAML offers neither check and no other YAML library in the dependencies
does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from badit.errors import BaditError

MAX_BYTES = 1 << 20
"""The largest YAML file read (1 MiB): the largest config in configs/ is under 4 KB; a sweep's under 2 KB."""

MAX_NODES = 100_000
"""The most nodes a document may hold once its aliases are expanded: a config has a few hundred; the
expansion is what a reader (compare, report, the config checks) would walk."""


class YamlError(BaditError, ValueError):
    """A YAML file that cannot be read as a config (malformed, duplicate keys, alias bomb, too large)."""


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys in a mapping and documents whose aliases expand
    beyond `MAX_NODES` nodes."""

    def compose_document(self):
        node = super().compose_document()
        if node is not None and _expanded_size(node) > MAX_NODES:
            raise yaml.YAMLError(
                f"its aliases (*name) expand to more than {MAX_NODES:,} values, far more than any config holds"
            )
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults`: later keys override merged ones, as YAML defines
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key; PyYAML reports it itself
                    continue
                if first != key_node.start_mark.line + 1:
                    raise yaml.YAMLError(
                        f"key {key!r} appears twice (lines {first} and {key_node.start_mark.line + 1}); "
                        "the second would silently replace the first: keep one"
                    )
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """The number of nodes of the document with every alias expanded, counted without expanding it: an
    alias is the same node object as its anchor, so each node's size is computed once (iteratively: a
    deeply nested document cannot exhaust Python's stack)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes.get(id(c), 0) for c in children))
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse_yaml(text: str, source: str) -> Any:
    """The data of the YAML ``text`` (from ``source``, named in errors); a `YamlError` naming the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error) or "not YAML"
        raise YamlError(f"{source}: invalid YAML{where}: {problem}; fix the file") from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply to be a config; fix the file") from None


def load_yaml(path: str | Path) -> Any:
    """The data of the YAML file ``path``; a `YamlError` (one line, the file named) for a file that is
    missing, not a regular file, larger than `MAX_BYTES`, not UTF-8 or not acceptable YAML."""
    path = Path(path)
    try:
        if not path.is_file():
            raise YamlError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
        if path.stat().st_size > MAX_BYTES:
            raise YamlError(
                f"{path}: {path.stat().st_size:,} bytes, larger than any config ({MAX_BYTES:,} at most); "
                "give the right file"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise YamlError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise YamlError(f"{path}: cannot be read ({error.strerror or error})") from None
    return parse_yaml(text, str(path))
