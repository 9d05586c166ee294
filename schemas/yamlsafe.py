"""The one YAML reader of the project: safe tags only, with bounded size, nesting and alias
expansion, so a ten-line file of nested aliases ("billion laughs") cannot exhaust the machine.

PyYAML shares the object an alias points to, but everything downstream (validation, dumps,
hashes) walks the expanded tree, so the bound is on the expanded node count: it is computed on
the composed node graph (each distinct node once, memoised) before anything is constructed.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_BYTES = 1 << 20
"""Largest YAML document read, bytes (configs and registries are a few KiB)."""
MAX_YAML_NODES = 100_000
"""Most nodes the document may hold once every alias is expanded."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings and sequences."""


def _expanded_size(root: yaml.Node, source: str, max_nodes: int, max_depth: int) -> int:
    """Nodes of the tree under `root` with aliases expanded; ValueError past the bounds or on
    a recursive alias. Each distinct node is sized once (memoised by identity)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > max_depth:
            raise ValueError(f"{source}: YAML nested deeper than {max_depth} levels")
        if key in active:
            raise ValueError(f"{source}: YAML alias refers to itself (a recursive structure)")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
                if total > max_nodes:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total > max_nodes:
                    break
        active.discard(key)
        if total > max_nodes:
            raise ValueError(
                f"{source}: YAML expands to more than {max_nodes} nodes (nested aliases?); "
                "write the values out instead"
            )
        sizes[key] = total
        return total

    return size(root, 0)


def load_yaml(
    text: str | bytes,
    source: str,
    max_bytes: int = MAX_YAML_BYTES,
    max_nodes: int = MAX_YAML_NODES,
    max_depth: int = MAX_YAML_DEPTH,
) -> Any:
    """Parse one YAML document like `yaml.safe_load`, within the bounds above.

    `source` names the input (a path, `--set key`) in the one-line ValueError raised for text
    that is too long, too deep, expands too far, or is not valid YAML.
    """
    if len(text) > max_bytes:
        raise ValueError(f"{source}: YAML is {len(text)} bytes, over the {max_bytes}-byte limit")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source, max_nodes, max_depth)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())[:300]
        raise ValueError(f"{source}: not valid YAML ({first})") from None
    except RecursionError:
        raise ValueError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()
