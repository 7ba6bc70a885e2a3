"""Packages that hand on the names of their submodules without importing every submodule first.

`import diffusers_edge.training.config` runs `diffusers_edge/training/__init__.py` first; if that imported every
submodule, reading one dataclass would load diffusers, accelerate and datasets. With `lazy_exports` a package lists
which submodule defines each name it hands on, and a name's submodule is imported when the name is first used
(PEP 562 module `__getattr__`), as transformers' own lazy modules do. Type checkers read the `TYPE_CHECKING` imports
that such a package keeps beside the list.

Example:
    >>> import sys, types
    >>> package = types.ModuleType("pkg")
    >>> package.__getattr__, package.__dir__ = lazy_exports(vars(package), {"sqrt": "math"})
    >>> sys.modules["pkg"] = package
    >>> from pkg import sqrt
    >>> sqrt(9.0), "sqrt" in vars(package)
    (3.0, True)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module `__getattr__` and `__dir__` of a package whose names `exports` maps to their modules.

    Args:
        namespace: the package's `globals()`; a name, once imported, is stored there (later lookups are direct).
        exports: name -> the module that defines it, absolute (`"diffusers_edge.losses"`) or relative to the
            package (`".config"`).
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace.get("__all__", exports))

    return __getattr__, __dir__
