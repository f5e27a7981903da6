"""The states file: which states to sync, with their API key and their own database.

Either a Python file defining ``STATES`` (the seed's ``exhaust_config.py``) or a TOML file with
``[[states]]`` tables; each entry::

    {"state_id": "1", "state_token": "env:STATE1_TOKEN",
     "db_credentials": {"uri": "postgresql+psycopg://loader@db/state1"},
     "channel": "state-1", "encryption_key": "env:STATE1_ZIP_PASSWORD"}

``channel`` defaults to ``state_id``. A secret written ``env:NAME`` is read from the environment
variable ``NAME`` when the file is loaded, so the file itself can be committed without secrets.
"""

from __future__ import annotations

import os
import runpy
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator


class StatesFileError(ValueError):
    """The states file is missing or wrong; the message says where and how to fix it."""


class DbCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: SecretStr = Field(description="SQLAlchemy URL of the state's database.")


class State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    state_id: str = Field(min_length=1)
    state_token: SecretStr
    db_credentials: DbCredentials
    channel: str | None = None
    encryption_key: SecretStr | None = None

    @field_validator("state_id", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @property
    def x_channel_id(self) -> str:
        return self.channel or self.state_id


def _resolve(value: Any, where: str) -> Any:
    """``value`` with every ``env:NAME`` string replaced by that variable's value."""
    if isinstance(value, dict):
        return {k: _resolve(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise StatesFileError(f"{where} is {value!r} but the variable {name} is not set")
        return os.environ[name]
    return value


def _raw_entries(path: Path) -> list[Any]:
    if not path.is_file():
        raise StatesFileError(
            f"states file {path} not found; create it (docs/howto/client-sync.md) "
            "or pass --states FILE"
        )
    if path.suffix == ".toml":
        try:
            entries = tomllib.loads(path.read_text(encoding="utf-8")).get("states")
        except tomllib.TOMLDecodeError as exc:
            raise StatesFileError(f"{path}: {exc}") from None
        name = "[[states]]"
    else:
        entries = runpy.run_path(str(path)).get("STATES")
        name = "STATES"
    if not isinstance(entries, list) or not entries:
        raise StatesFileError(f"{path} must define {name} as a non-empty list of states")
    return entries


def state_ids(path: Path) -> list[str]:
    """The state ids of ``path``, without resolving any secret (to name things by state)."""
    return [str(e.get("state_id")) for e in _raw_entries(path) if isinstance(e, dict)]


def load_states(path: Path) -> dict[str, State]:
    """The states of ``path`` by state_id, secrets resolved; StatesFileError if anything is off."""
    states: dict[str, State] = {}
    for index, entry in enumerate(_raw_entries(path)):
        where = f"{path.name}: state #{index + 1}"
        if not isinstance(entry, dict):
            raise StatesFileError(f"{where} is not a table/dict")
        try:
            state = State.model_validate(_resolve(entry, where))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise StatesFileError(f"{where}: {problems}") from None
        if state.state_id in states:
            raise StatesFileError(f"{where}: state_id {state.state_id!r} appears twice")
        states[state.state_id] = state
    return states
