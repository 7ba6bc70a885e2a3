"""JSON records of runs: settings made JSON-safe, and files replaced atomically so a crash never leaves half a file.

Example:
    >>> jsonable({"steps": (1, 2), 3: {"dtype": float}})
    {'steps': [1, 2], '3': {'dtype': "<class 'float'>"}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def jsonable(value: Any) -> Any:
    """`value` with tuples as lists, keys as strings and anything JSON cannot hold as its `repr`."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return repr(value)


def write_json_atomic(
    path: str | os.PathLike, payload: Any, indent: int | None = 1, sort_keys: bool = True
) -> None:
    """Writes `payload` as JSON to `path` via a temporary file and `os.replace`: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")  # one per process: concurrent writers never share
    tmp.write_text(json.dumps(payload, indent=indent, sort_keys=sort_keys), encoding="utf-8")
    os.replace(tmp, path)
