"""Client sync: scheduled exhausts of a state's bots, loaded into the state's own database.

See ``shared/spec/client-sync.md`` and ``docs/howto/client-sync.md``. The entry points are
:class:`~data_exhaust.sync.steps.Sync` (the request and handle steps), used alike by
``exhaust sync …`` and by the Airflow DAGs of :mod:`data_exhaust.contrib.airflow`.
"""

from __future__ import annotations

from data_exhaust.sync.control import ControlDB, RequestStatus, Schedule
from data_exhaust.sync.report import Summary
from data_exhaust.sync.settings import SyncSettings
from data_exhaust.sync.states import State, StatesFileError, load_states
from data_exhaust.sync.steps import Sync

__all__ = [
    "ControlDB",
    "RequestStatus",
    "Schedule",
    "State",
    "StatesFileError",
    "Summary",
    "Sync",
    "SyncSettings",
    "load_states",
]
