"""Dataset plugins, discovered through the ``data_exhaust.datasets`` entry-point group."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from importlib.metadata import entry_points

from data_exhaust.datasets.base import (
    ConfigError,
    Dataset,
    NoDataFound,
    PermanentError,
    RunContext,
    StopRequested,
    SubmitContext,
)

GROUP = "data_exhaust.datasets"

__all__ = [
    "GROUP",
    "ConfigError",
    "Dataset",
    "NoDataFound",
    "PermanentError",
    "RunContext",
    "StopRequested",
    "SubmitContext",
    "load_datasets",
]


def load_datasets(extra: Iterable[str] = ()) -> dict[str, Dataset]:
    """Every installed dataset plugin by id, plus ``extra`` "module:Class" references
    (``EXHAUST_PLUGINS``). A plugin that fails to load is an error, not a silent gap."""
    found: dict[str, Dataset] = {}
    references: list[tuple[str | None, str]] = [
        (e.name, e.value) for e in entry_points(group=GROUP)
    ]
    references += [(None, ref) for ref in extra]
    for name, ref in references:
        cls = _load(ref)
        if name is not None and cls.id != name:
            raise ValueError(f"entry point {name!r} names a dataset whose id is {cls.id!r}")
        found[cls.id] = cls()
    return dict(sorted(found.items()))


def _load(reference: str) -> type[Dataset]:
    module_name, _, attribute = reference.partition(":")
    if not attribute:
        raise ValueError(f"plugin {reference!r} must be given as 'module:Class'")
    cls = getattr(import_module(module_name), attribute)
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise TypeError(f"plugin {reference!r} is not a Dataset subclass")
    return cls
