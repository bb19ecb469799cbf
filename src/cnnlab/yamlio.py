"""Reading YAML that a user hands us, with limits: size, nesting depth and alias expansion.

``yaml.safe_load`` never runs code, but it trusts the document's shape: a 400-byte "billion
laughs" (aliases of aliases, each doubling the expanded size) takes forever and all memory, a
recursive alias (``&a [*a]``) makes a self-containing list that breaks whatever reads it next, and
a deeply nested document ends in a ``RecursionError``. ``load_yaml`` composes the document first
(linear in its size, aliases left as references to shared nodes), walks that graph counting the
nodes the loaded value would hold, and refuses, in one sentence, a document that is

- larger than ``max_bytes``, or not UTF-8 text;
- nested deeper than ``max_depth``;
- recursive (an alias inside the node it names);
- one that would expand to more than ``max_nodes`` values through its aliases.

    >>> load_yaml_text("epochs: 3\\nmodel_args: {hidden: [256]}\\n", "recipe.yaml")
    {'epochs': 3, 'model_args': {'hidden': [256]}}
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, clip

MAX_BYTES = 1 << 20  # 1 MiB: a recipe is a few hundred bytes
MAX_DEPTH = 32
MAX_NODES = 100_000


def load_yaml(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
              max_nodes: int = MAX_NODES) -> Any:
    """Read and parse the YAML file ``path`` within the limits (see the module docstring)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CnnlabError(f"the config file {clip(path)} is a directory, not a YAML file")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise CnnlabError(f"cannot read the config file {clip(path)}: {e.strerror or type(e).__name__}") from None
    if len(raw) > max_bytes:
        raise CnnlabError(f"the config file {clip(path)} is larger than {max_bytes:,} bytes; a recipe is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CnnlabError(f"the config file {clip(path)} is not UTF-8 text (byte {e.start} cannot be decoded)") from None
    return load_yaml_text(text, str(path), max_depth=max_depth, max_nodes=max_nodes)


def load_yaml_text(text: str, source: str = "<text>", *, max_depth: int = MAX_DEPTH,
                   max_nodes: int = MAX_NODES) -> Any:
    """Parse YAML ``text`` (named ``source`` in messages) within the limits."""
    import yaml

    if len(text) > MAX_BYTES:
        raise CnnlabError(f"{clip(source)} is larger than {MAX_BYTES:,} characters; a recipe is a few lines")
    if "\x00" in text:
        raise CnnlabError(f"{clip(source)} is not YAML text (it contains a NUL character)")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise CnnlabError(f"{clip(source)} is not valid YAML: {clip(str(e).splitlines()[0] if str(e) else e)}") from None
    except RecursionError:
        raise CnnlabError(f"{clip(source)} is nested too deeply (at most {max_depth} levels)") from None
    if node is None:
        return None
    _check_graph(node, source, max_depth=max_depth, max_nodes=max_nodes)
    try:
        return yaml.SafeLoader(text).get_single_data()
    except yaml.YAMLError as e:
        raise CnnlabError(f"{clip(source)} is not valid YAML: {clip(str(e).splitlines()[0] if str(e) else e)}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as e:
        raise CnnlabError(f"{clip(source)} holds a value that cannot be read ({type(e).__name__}: {clip(e, 120)})") \
            from None


def _check_graph(root, source: str, *, max_depth: int, max_nodes: int) -> None:
    """Walk the composed node graph iteratively: depth, recursion and expanded size."""
    import yaml

    count = 0
    # (node, depth, exiting); ``on_path`` holds the ids of the collections being expanded
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    on_path: set[int] = set()
    while stack:
        node, depth, exiting = stack.pop()
        if exiting:
            on_path.discard(id(node))
            continue
        count += 1
        if count > max_nodes:
            raise CnnlabError(f"{clip(source)} expands to more than {max_nodes:,} values through its aliases "
                              f"(&anchor / *alias); write the values out instead")
        if depth > max_depth:
            raise CnnlabError(f"{clip(source)} is nested too deeply (more than {max_depth} levels)")
        if isinstance(node, yaml.ScalarNode):
            continue
        if id(node) in on_path:
            raise CnnlabError(f"{clip(source)} is recursive: an alias (*name) refers to a collection that contains it")
        on_path.add(id(node))
        stack.append((node, depth, True))
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        else:  # MappingNode: (key, value) pairs
            children = [n for pair in node.value for n in pair]
        for child in reversed(children):
            stack.append((child, depth + 1, False))
