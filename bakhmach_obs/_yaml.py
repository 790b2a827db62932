"""YAML output for the generated files (rules, the stack): readable, and exact on load.

Two things PyYAML's ``safe_dump`` gets wrong for generated configuration:

- a list or mapping used twice is written once with an ``&id001`` anchor and then as ``*id001``;
  correct YAML, but not what a person expects to read in ``prometheus.yml``;
- a string holding one of YAML's non-ASCII line breaks (U+0085, U+2028, U+2029), say a label
  value, is written single-quoted and reads back with a space instead: the generated rule would
  then select another value. Such strings are written double-quoted, where they are escaped.

Example:
    >>> import yaml
    >>> from bakhmach_obs._yaml import dump
    >>> text = dump({"team": "a\\u2028b", "targets": ["x"]})
    >>> yaml.safe_load(text) == {"team": "a\\u2028b", "targets": ["x"]}
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

__all__ = ["Dumper", "dump", "dump_all"]

_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


class Dumper(yaml.SafeDumper):
    """``SafeDumper`` without anchors and aliases, with exact strings (see the module docstring)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if any(mark in data for mark in _LINE_BREAKS):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return dumper.represent_str(data)


Dumper.add_representer(str, _represent_str)

_OPTIONS: dict[str, Any] = {
    "Dumper": Dumper,
    "sort_keys": False,
    "default_flow_style": False,
    "width": 1 << 20,
    "allow_unicode": True,
}


def dump(data: Any) -> str:
    """``data`` as one YAML document."""
    return str(yaml.dump(data, **_OPTIONS))


def dump_all(documents: Iterable[Any]) -> str:
    """``documents`` as a YAML stream (``---`` between documents)."""
    return str(yaml.dump_all(documents, **_OPTIONS))
