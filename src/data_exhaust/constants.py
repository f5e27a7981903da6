"""Constants that light modules (the ``exhaust`` command line's option help) share with heavy
ones. Only the standard library may be imported here: ``exhaust --help`` imports this module."""

from __future__ import annotations

SCOPES = ("exhaust", "pii", "ingest", "admin")
"""The scopes an API key can grant (:mod:`data_exhaust.keys`)."""

SYNC_DATASETS = ("uci-response-exhaust", "uci-private-exhaust")
"""The datasets ``exhaust sync`` can schedule (:mod:`data_exhaust.sync.control`)."""
