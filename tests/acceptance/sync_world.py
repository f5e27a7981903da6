"""A small world for the client-sync tests: a running server, two states (one with a Postgres
database, one with a SQLite file), their bots, devices and three weeks of telemetry.

States: ``up`` (channel ``state-up``, Postgres) and ``br`` (channel ``state-br``, SQLite). Both
have a bot called ``bot-shared`` (same conversation id, different tenants: neither may see the
other's events); ``up`` also has ``bot-up-weekly``, whose private exhaust is synced too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from tests.acceptance.conftest import Deployment
from tests.factories import PHONES, assess_event

FIRST_DAY = date(2026, 10, 5)  # a Monday; telemetry runs for three weeks from it
DAYS = 21
PASSWORD = "zip password of state up"
TITLES = [
    "Which subject, of all, do you like?",
    'Did the teacher say "well done"?',
    "Line one\nline two",
    "आपका पसंदीदा विषय कौन सा है?",
]


@dataclass
class Bot:
    state: str
    channel: str
    bot_id: str
    #: days (0-based from FIRST_DAY) without any event: their daily windows are NO_DATA
    quiet_days: frozenset[int] = frozenset()
    devices: tuple[str, ...] = ()
    per_day: int = 3  # answers a day
    days: int = DAYS


BOTS = [
    Bot("up", "state-up", "bot-shared", frozenset({2, 9}), ("up-dev-1", "up-dev-2", "up-dev-3")),
    Bot("up", "state-up", "bot-up-weekly", frozenset(), ("up-dev-1", "up-dev-4")),
    Bot("br", "state-br", "bot-shared", frozenset({6}), ("br-dev-1", "br-dev-2")),
]
#: registered devices of bot-up-weekly: (consent, phone); up-dev-4 only sends events
REGISTERED = {"up-dev-1": (True, PHONES[0]), "up-dev-3": (False, PHONES[1])}
SCHEDULES = [
    ("up", "bot-shared", "0 0 * * *", "uci-response-exhaust"),
    ("up", "bot-up-weekly", "0 0 * * MON", "uci-response-exhaust"),
    ("up", "bot-up-weekly", "0 0 * * MON", "uci-private-exhaust"),
    ("br", "bot-shared", "30 2 * * *", "uci-response-exhaust"),
]


def offsets(per_day: int) -> list[int]:
    """Times of day (ms): 09:00, 13:00 and the day's last millisecond, then every 5 s."""
    first = [9 * 3600_000, 13 * 3600_000, 86_400_000 - 1]
    return (first + [n * 5000 for n in range(max(0, per_day - 3))])[:per_day]


def events_of(bot: Bot) -> Iterator[dict[str, Any]]:
    """``per_day`` answers a day, the devices in turn, on every day but the quiet ones."""
    for day in range(bot.days):
        if day in bot.quiet_days:
            continue
        midnight = datetime.combine(FIRST_DAY + timedelta(days=day), datetime.min.time(), UTC)
        for n, offset in enumerate(offsets(bot.per_day)):
            device = bot.devices[(day + n) % len(bot.devices)]
            title = TITLES[(day + n) % len(TITLES)]
            yield assess_event(
                conversation_id=bot.bot_id,
                device_id=device,
                mid=f"{bot.channel}-{bot.bot_id}-{day:02}-{n:05}",
                ets=int(midnight.timestamp() * 1000) + offset,
                **{"context.channel": bot.channel, "edata.item.title": title},
            )


@dataclass
class World:
    deployment: Deployment
    base: str
    keys: dict[str, str]
    up_db: str
    br_db: str
    control_db: str
    states_file: Path
    work_dir: Path = Path()
    sent: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    def sync(self, *args: str, check: bool = True) -> Any:
        return self.deployment.run(
            "sync",
            *args,
            "--states",
            str(self.states_file),
            "--control-db",
            self.control_db,
            "--server",
            self.base,
            check=check,
            env={"EXHAUST_SYNC_WORK_DIR": str(self.work_dir)},
        )

    def schedule(self) -> None:
        for state, bot, frequency, dataset in SCHEDULES:
            self.deployment.run(
                "sync", "schedule", "add", "--state", state, "--bot", bot,
                "--frequency", frequency, "--dataset", dataset,
                "--since", FIRST_DAY.isoformat(), "--control-db", self.control_db,
            )  # fmt: skip


def headers(key: str, channel: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-Channel-ID": channel}


def envelope(request: dict[str, Any]) -> dict[str, Any]:
    return {"id": "api", "ver": "1.0", "params": {"msgid": "m"}, "request": request}


def register(base: str, key: str) -> None:
    auth = headers(key, "state-up")
    body = envelope({"name": "Weekly quiz", "channel": "state-up"})
    answer = httpx.put(f"{base}/v1/conversations/bot-up-weekly", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    for device, (consent, phone) in REGISTERED.items():
        body = envelope({"conversations": ["bot-up-weekly"], "phone": phone, "consent": consent})
        answer = httpx.put(f"{base}/v1/devices/{device}", json=body, headers=auth)
        assert answer.status_code == 200, answer.text


def ingest(
    base: str, keys: dict[str, str], bots: list[Bot]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    sent: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for n, bot in enumerate(bots):
        events = list(events_of(bot))
        sent[(bot.state, bot.bot_id)] = events
        for start in range(0, len(events), 1000):
            body = {"id": "api", "ver": "3.0", "params": {"msgid": f"b{n}-{start}"}}
            answer = httpx.post(
                f"{base}/v1/telemetry",
                json={**body, "events": events[start : start + 1000]},
                headers=headers(keys[bot.state], bot.channel),
                timeout=60,
            )
            accepted = len(events[start : start + 1000])
            assert answer.json()["result"] == {"accepted": accepted, "rejected": []}
    return sent


def write_states(path: Path, up_db: str, br_db: str) -> None:
    """A Python states file, as in the seed; secrets come from the environment (env:…)."""
    states = [
        {
            "state_id": "up",
            "state_token": "env:SYNC_TEST_UP_TOKEN",
            "db_credentials": {"uri": up_db},
            "channel": "state-up",
            "encryption_key": "env:SYNC_TEST_UP_ZIP",
        },
        {
            "state_id": "br",
            "state_token": "env:SYNC_TEST_BR_TOKEN",
            "db_credentials": {"uri": br_db},
            "channel": "state-br",
        },
    ]
    path.write_text(f"STATES = {json.dumps(states, indent=4)}\n", encoding="utf-8")


def start_server(deployment: Deployment, extra_bots: tuple[Bot, ...] = ()) -> World:
    """The server side: a running server, the two states' keys, the registry, the telemetry."""
    base = deployment.serve()
    keys = {
        "up": deployment.create_key("state-up", "exhaust,pii,ingest"),
        "br": deployment.create_key("state-br", "exhaust,ingest"),
    }
    deployment.extra_env.update(
        {
            "SYNC_TEST_UP_TOKEN": keys["up"],
            "SYNC_TEST_BR_TOKEN": keys["br"],
            "SYNC_TEST_UP_ZIP": PASSWORD,
        }
    )
    register(base, keys["up"])
    world = World(deployment, base, keys, "", "", "", Path())
    world.sent = ingest(base, keys, [*BOTS, *extra_bots])
    return world


def with_client(server: World, tmp_path: Path, up_db: str) -> World:
    """The client side on ``server``: a states file, the two state databases, a control DB."""
    world = replace(
        server,
        up_db=up_db,
        br_db=f"sqlite:///{tmp_path / 'state-br.db'}",
        control_db=f"sqlite:///{tmp_path / 'control.db'}",
        states_file=tmp_path / "exhaust_config.py",
        work_dir=tmp_path / "downloads",
    )
    write_states(world.states_file, world.up_db, world.br_db)
    return world


def make_world(deployment: Deployment, tmp_path: Path, up_db: str) -> World:
    world = with_client(start_server(deployment), tmp_path, up_db)
    world.schedule()
    return world


def rows(url: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` in the database at ``url`` ([] while the table does not exist)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                return []
            return [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]
    finally:
        engine.dispose()
