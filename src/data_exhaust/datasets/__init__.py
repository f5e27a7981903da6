"""Dataset plugins, discovered through the ``data_exhaust.datasets`` entry-point group."""

from __future__ import annotations

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


def load_datasets() -> dict[str, Dataset]:
    """Every installed dataset plugin, by id. A plugin that fails to load is an error."""
    found: dict[str, Dataset] = {}
    for entry in entry_points(group=GROUP):
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, Dataset)):
            raise TypeError(f"entry point {entry.name!r} ({entry.value}) is not a Dataset class")
        if cls.id != entry.name:
            raise ValueError(f"entry point {entry.name!r} names a dataset whose id is {cls.id!r}")
        found[cls.id] = cls()
    return dict(sorted(found.items()))
