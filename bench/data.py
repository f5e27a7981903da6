"""Realistic UCI ASSESS telemetry, generated once per scale and cached under ``bench/data/``.

The shape follows what the UCI chatbot sends (datasets.md §1, ``tests/factories.py``,
``data_exhaust.demo``): 50 conversations of one channel, multiple-choice questions with long
English/Hindi/Tamil titles and an options JSON, free-text answers with commas, quotes and line
breaks, about 1 KB of canonical JSON per event. Conversation 0 is the *large* one (40 % of all
events: 2 M at ``--scale 1``); the 49 others share the rest.

A generated data set is two things, both exactly what the service itself writes and reads:

* ``events.jsonl`` — the events as a client sends them (input of ``exhaust ingest FILE``, of the
  telemetry load generator and of the hand-written Python exporter baseline);
* ``lake/`` — the same events validated and flattened by ``data_exhaust.telemetry`` and
  appended by ``data_exhaust.lake.Lake`` (raw segments, in event-time order as a live system
  receives them), then compacted by ``Lake.compact`` into date-partitioned Parquet.

Events are built from per-question templates (a shallow dict copy per event), and the two
halves of the work run in two processes, each appending to its own lake segments (what the
lake is designed for), so 250 k events take a few seconds and 5 M about a minute and a half.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from data_exhaust.compaction import ROW_GROUP_ROWS, SORT_ORDER
from data_exhaust.lake import Lake
from data_exhaust.telemetry import check_event, flatten

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
CHANNEL = "01269878797503692810"
CONVERSATIONS = 50
LARGE_SHARE = 0.4
#: Events at ``--scale 1``: the issue's 5 M.
FULL_EVENTS = 5_000_000
FIRST_DAY = date(2024, 1, 1)
DAYS = 30
DAY_MS = 86_400_000
CHUNK = 20_000
#: The compacted files' layout is part of a cached lake's name: a lake made by an older
#: compaction is made again rather than measured as if it were today's.
LAYOUT = "l" + hashlib.sha256(f"{SORT_ORDER}|{ROW_GROUP_ROWS}|merged".encode()).hexdigest()[:8]

TITLES = [
    "Which subject do you like most, and why? / आपको कौन सा विषय सबसे ज़्यादा पसंद है और क्यों?",
    'How was today\'s "revision" class — too fast, okay, or slow? / आज की "दोहराई" कक्षा कैसी थी?',
    "क्या आपने आज की कक्षा का गृहकार्य पूरा किया? (Did you finish today's homework, fully?)",
    "இன்றைய வகுப்பு உங்களுக்கு புரிந்ததா? / Did you understand today's lesson, in your words?",
    "Rate the mid-day meal today: taste, quantity, cleanliness / आज के मध्याह्न भोजन को रेट करें",
    "What support do you need from your teacher this week?\n(write freely, any language)",
]
CHOICES = [
    ["गणित (Maths)", "विज्ञान (Science)", "हिंदी", "English, grammar & writing", "सामाजिक विज्ञान"],
    ["Good, clear", 'Okay, but "fast"', "Bad — I got lost", "मैं अनुपस्थित था (absent)"],
    ["हाँ, पूरा किया", "नहीं, आधा", "No, I didn't get it", "Not given"],
    ["ஆம், முழுமையாக", "கொஞ்சம்", "இல்லை", "Yes, mostly", "No, please repeat"],
    ["⭐ 1", "⭐⭐ 2", "⭐⭐⭐ 3", "⭐⭐⭐⭐ 4", "⭐⭐⭐⭐⭐ 5 — excellent"],
]
FREE_TEXT = [
    "More practice worksheets, please; the last ones were good",
    'The teacher said "well done", thank you! शिक्षक ने कहा "शाबाश"',
    "गणित थोड़ा कठिन है, लेकिन मज़ेदार — और विज्ञान भी",
    'Line one\nline two, with a comma, and "quotes"\r\nline three',
    "=SUM(A1:A3) is what we learnt in computer class",
    "எனக்கு கணிதம் பிடிக்கும், ஆனால் ஆங்கிலம் கடினம்",
]


@dataclass(frozen=True)
class Dataset:
    """A generated data set on disk."""

    root: Path
    events: int
    large_conversation: str
    small_conversation: str
    first_day: date
    last_day: date

    @property
    def jsonl(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    def info(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "conversations": CONVERSATIONS,
            "large_conversation": self.large_conversation,
            "small_conversation": self.small_conversation,
            "days": f"{self.first_day}..{self.last_day}",
            "jsonl_bytes": self.jsonl.stat().st_size if self.jsonl.exists() else None,
            "lake_parquet_bytes": sum(p.stat().st_size for p in self.lake.rglob("*.parquet")),
            "lake_parquet_files": sum(1 for _ in self.lake.rglob("*.parquet")),
        }


def conversation_ids(seed: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(CONVERSATIONS)]


def _questions(conversation: str, rng: random.Random) -> list[dict[str, Any]]:
    """Five question templates (``edata.item``) of one conversation."""
    items = []
    for n in range(5):
        title = TITLES[(n + int(conversation[:8], 16)) % len(TITLES)]
        if n == 4:
            item = {"id": f"q{n}", "type": "ftp", "title": title, "desc": title, "maxscore": 0}
        else:
            choices = CHOICES[rng.randrange(len(CHOICES))]
            params = [{str(i + 1): {"text": f"{i + 1} {c}"}} for i, c in enumerate(choices)]
            item = {"id": f"q{n}", "type": "mcq", "title": title, "desc": f"Choose one: {title}"}
            item.update({"maxscore": 1, "params": params, "exlength": 0})
        items.append(item)
    return items


class _Builder:
    """Builds events for a slice of the days, deterministically from (seed, day)."""

    def __init__(self, per_day: int, seed: int) -> None:
        self.per_day, self.seed = per_day, seed
        self.conversations = conversation_ids()
        rng = random.Random(seed)
        self.questions = {c: _questions(c, rng) for c in self.conversations}
        self.devices = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(5000)]

    def day(self, day_index: int, first_day: date) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed * 1000 + day_index)
        start = int(datetime.combine(first_day, datetime.min.time(), UTC).timestamp() * 1000)
        start += day_index * DAY_MS
        offsets = sorted(rng.randrange(DAY_MS) for _ in range(self.per_day))
        others = self.conversations[1:]
        for offset in offsets:
            if rng.random() < LARGE_SHARE:
                conversation = self.conversations[0]
            else:
                conversation = others[rng.randrange(len(others))]
            yield self._event(conversation, start + offset, rng)

    def _event(self, conversation: str, ets: int, rng: random.Random) -> dict[str, Any]:
        question = self.questions[conversation][rng.randrange(5)]
        device = self.devices[rng.randrange(len(self.devices))]
        if question["type"] == "mcq":
            answer: list[Any] = [question["params"][rng.randrange(len(question["params"]))]]
        else:
            answer = [{"ans1": FREE_TEXT[rng.randrange(len(FREE_TEXT))]}]
        session = f"{device[:18]}{ets // 3_600_000:018x}"
        return {
            "eid": "ASSESS",
            "ets": ets,
            "ver": "3.1",
            "mid": f"ASSESS:{uuid.UUID(int=rng.getrandbits(128))}",
            "actor": {"id": device, "type": "User"},
            "context": {
                "channel": CHANNEL,
                "env": "uci",
                "did": device,
                "sid": session,
                "pdata": {"id": "prod.uci.diksha", "pid": "uci-transformer", "ver": "1.0"},
                "cdata": [
                    {"type": "Conversation", "id": conversation},
                    {"type": "Device", "id": device},
                ],
                "rollup": {
                    "l1": CHANNEL,
                    "l2": conversation,
                    "l3": f"/data/group1/{question['id']}",
                    "l4": "true" if question["id"] == "q4" else "false",
                },
            },
            "object": {"id": conversation, "type": "Conversation", "ver": "1.0"},
            "tags": [CHANNEL],
            "edata": {
                "item": question,
                "index": int(question["id"][1:]) + 1,
                "pass": "Yes",
                "score": rng.randrange(2),
                "resvalues": answer,
                "duration": round(rng.uniform(1, 90), 2),
            },
        }


def _write_days(
    root: str, days: list[int], per_day: int, first_day: date, seed: int
) -> tuple[str, int]:
    """Worker: the events of ``days`` into its own JSON-lines part and its own lake segments."""
    builder = _Builder(per_day, seed)
    lake = Lake(Path(root) / "lake")
    part = Path(root) / f"events.part{days[0]:04d}.jsonl"
    count = 0
    with open(part, "wb") as out:
        for day_index in days:
            events = list(builder.day(day_index, first_day))
            for start in range(0, len(events), CHUNK):
                chunk = events[start : start + CHUNK]
                out.write(b"\n".join(orjson.dumps(e) for e in chunk) + b"\n")
                rows = [flatten(e, check_event(e)[1]) for e in chunk]
                lake.append(rows)
                count += len(chunk)
    lake.roll()
    return str(part), count


def generate(
    root: Path, events: int, *, days: int = DAYS, first_day: date = FIRST_DAY, seed: int = 6
) -> Dataset:
    """Generate ``events`` events over ``days`` days into ``root`` (replacing it), compacted."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    per_day = max(1, events // days)
    workers = max(1, min(os.cpu_count() or 1, 4, days))
    slices = [list(range(days))[w::workers] for w in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(_write_days, str(root), s, per_day, first_day, seed) for s in slices]
        parts = sorted(f.result()[0] for f in futures)
    _concatenate([Path(p) for p in parts], root / "events.jsonl")
    lake = Lake(root / "lake", grace_seconds=0)
    lake.compact()
    conversations = conversation_ids()
    made = Dataset(
        root, per_day * days, conversations[0], conversations[7],
        first_day, first_day + timedelta(days=days - 1),
    )  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(_to_json(made), indent=2))
    return made


def _concatenate(parts: list[Path], target: Path) -> None:
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, out, 16 * 1024 * 1024)
            part.unlink()


def _to_json(made: Dataset) -> dict[str, Any]:
    return {
        "events": made.events,
        "large_conversation": made.large_conversation,
        "small_conversation": made.small_conversation,
        "first_day": made.first_day.isoformat(),
        "last_day": made.last_day.isoformat(),
    }


def _from_json(root: Path) -> Dataset | None:
    path = root / "dataset.json"
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    return Dataset(
        root, raw["events"], raw["large_conversation"], raw["small_conversation"],
        date.fromisoformat(raw["first_day"]), date.fromisoformat(raw["last_day"]),
    )  # fmt: skip


def dataset(scale: float, *, days: int = DAYS, first_day: date = FIRST_DAY) -> Dataset:
    """The cached data set of ``scale`` × 5 M events (generated on first use)."""
    events = int(FULL_EVENTS * scale)
    root = DATA / f"lake-{events}-{days}d-{first_day:%Y%m%d}-{LAYOUT}"
    cached = _from_json(root)
    if cached is not None:
        return cached
    started = time.monotonic()
    made = generate(root, events, days=days, first_day=first_day)
    print(f"  generated {made.events:,} events in {time.monotonic() - started:.1f} s -> {root}")
    return made
