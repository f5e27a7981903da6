"""What a sync run did, per state, bot and dataset (the CLI's summary table, the DAGs' XCom)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class Tally:
    windows: int = 0  # windows created
    submitted: int = 0  # submits (and resubmits) accepted by the server
    loaded: int = 0  # windows loaded (or found empty: NO_DATA)
    rows: int = 0  # rows in the loaded files
    new_rows: int = 0  # rows the state's table did not have yet
    failures: int = 0  # errors met (each is logged and kept in last_error)
    waiting: int = 0  # still being built by the server when the step ended


@dataclass
class Summary:
    tallies: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __getitem__(self, key: tuple[str, str, str]) -> Tally:
        return self.tallies.setdefault(key, Tally())

    def fail(self, key: tuple[str, str, str], error: str) -> None:
        self[key].failures += 1
        self.errors.append(f"{'/'.join(key)}: {error}")

    @property
    def failures(self) -> int:
        return sum(t.failures for t in self.tallies.values())

    def as_dict(self) -> dict[str, Any]:
        rows = [
            {"state_id": s, "bot_id": b, "dataset": d, **asdict(t)}
            for (s, b, d), t in sorted(self.tallies.items())
        ]
        return {"rows": rows, "errors": self.errors}


class Observer(Protocol):
    """Told about progress as it happens (the CLI draws bars; the default does nothing)."""

    def begin(self, step: str, total: int) -> None: ...

    def advance(self, step: str) -> None: ...

    def transferred(self, size: int) -> None: ...


class Quiet:
    def begin(self, step: str, total: int) -> None:
        pass

    def advance(self, step: str) -> None:
        pass

    def transferred(self, size: int) -> None:
        pass
