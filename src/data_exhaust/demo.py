"""Realistic demo conversations and telemetry, so a newcomer can try every route.

Three UCI bots of the channel ``demo-channel`` with multiple-choice and free-text questions
(English and Hindi, with commas, quotes and line breaks in the text), answered by 40 devices
over the last 7 days: about 600 ASSESS events.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

DEMO_CHANNEL = "demo-channel"


@dataclass(frozen=True)
class Question:
    id: str
    type: str  # "mcq" or "ftp"
    title: str
    options: list[dict[str, Any]] | None


@dataclass(frozen=True)
class Bot:
    id: str
    name: str
    questions: list[Question]


def _mcq(qid: str, title: str, choices: list[str]) -> Question:
    options = [{str(i + 1): {"text": f"{i + 1} {text}"}} for i, text in enumerate(choices)]
    return Question(qid, "mcq", title, options)


BOTS = [
    Bot(
        "c63b6faa-11a9-4259-b941-11cd2f8446c6",
        "Student feedback, Class 8",
        [
            _mcq("q1", "Which subject do you like most?", ["Maths", "Science", "हिंदी", "English"]),
            _mcq("q2", 'How was today\'s "revision" class?', ["Good", "Okay, but fast", "Bad"]),
            Question("q3", "ftp", "Anything else you want to tell us?\n(write freely)", None),
        ],
    ),
    Bot(
        "d655cf03-1f6f-4510-acf6-d3f51b488a5e",
        "शिक्षक सर्वेक्षण (Teacher survey)",
        [
            _mcq("t1", "क्या आपने आज की कक्षा पूरी की?", ["हाँ", "नहीं"]),
            Question("t2", "ftp", "What support do you need, if any?", None),
        ],
    ),
    Bot(
        "5e2a0d4b-7c1f-4b8e-9a53-2f6d1c0b9e77",
        "Attendance check-in",
        [
            _mcq("a1", "Are you in school today?", ["Yes", "No, I'm sick", "No, other reason"]),
        ],
    ),
]

FREE_TEXT = [
    "More practice worksheets, please",
    'The teacher said "well done", thank you!',
    "गणित थोड़ा कठिन है, लेकिन मज़ेदार",
    "Line one\nline two, with a comma",
    "=SUM(A1:A3) is what we learnt in computer class",
    "",
]


def assess_event(
    bot: Bot,
    question: Question,
    device: str,
    session: str,
    ets: int,
    rng: random.Random,
    last: bool,
) -> dict[str, Any]:
    """One ASSESS event as the UCI chatbot sends it for one answered question."""
    if question.options:
        answer: list[dict[str, Any]] = [rng.choice(question.options)]
    else:
        answer = [{"ans1": rng.choice(FREE_TEXT)}]
    return {
        "eid": "ASSESS",
        "ets": ets,
        "ver": "3.1",
        "mid": f"ASSESS:{uuid.UUID(int=rng.getrandbits(128))}",
        "actor": {"id": device, "type": "User"},
        "context": {
            "channel": DEMO_CHANNEL,
            "env": "uci",
            "did": device,
            "sid": session,
            "pdata": {"id": "prod.uci.diksha", "pid": "uci-transformer", "ver": "1.0"},
            "cdata": [{"type": "Conversation", "id": bot.id}, {"type": "Device", "id": device}],
            "rollup": {
                "l1": DEMO_CHANNEL,
                "l2": bot.id,
                "l3": f"/data/{question.id}",
                "l4": "true" if last else "false",
            },
        },
        "object": {"id": bot.id, "type": "Conversation"},
        "edata": {
            "item": {
                "id": question.id,
                "type": question.type,
                "title": question.title,
                "desc": question.title,
                "maxscore": 1,
                "params": question.options or [],
            },
            "resvalues": answer,
            "duration": round(rng.uniform(1, 90), 2),
            "score": rng.choice([0, 1]),
            "pass": "Yes",
        },
        "tags": [],
    }


def demo_events(
    days: int = 7, devices: int = 40, seed: int = 8, now: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Every device answers each bot on a few random days in the last ``days`` days."""
    rng = random.Random(seed)
    end = now or datetime.now(UTC)
    people = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(devices)]
    for bot in BOTS:
        for device in people:
            for _ in range(rng.randint(1, 4)):
                moment = end - timedelta(days=rng.uniform(0.05, days))
                session = str(uuid.UUID(int=rng.getrandbits(128)))
                ets = int(moment.timestamp() * 1000)
                for index, question in enumerate(bot.questions):
                    ets += rng.randint(2_000, 60_000)
                    last = index == len(bot.questions) - 1
                    yield assess_event(bot, question, device, session, ets, rng, last)
