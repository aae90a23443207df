"""The line of a YAML path (`routers[0].servers[1].tls.certPath`) in a config file's text.

The loader reports its own problems with lines; checks made after loading (`meshd check`'s TLS
file checks) find the line here, by walking the composed YAML nodes along the path.
"""

from __future__ import annotations

import re

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def line_of(text: str, path: str) -> int | None:
    """The 1-based line of the value at `path` (of its key, for a mapping entry), or None."""
    try:
        node: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line: int | None = None
    for key, index in _STEP.findall(path):
        if node is None:
            return None
        if key:
            if not isinstance(node, MappingNode):
                return None
            found = None
            for key_node, value_node in node.value:
                if key_node.value == key:
                    found = value_node
                    line = int(key_node.start_mark.line) + 1
            node = found
        else:
            if not isinstance(node, SequenceNode) or int(index) >= len(node.value):
                return None
            node = node.value[int(index)]
            line = int(node.start_mark.line) + 1
    return line if node is not None else None
