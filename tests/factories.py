"""Realistic test data shared by every test suite (build events here, not by hand in tests).

``assess_event`` builds what the UCI chatbot sends for one answered question (datasets.md §1):
an ASSESS v3 event whose conversation is named in ``context.cdata`` and ``context.rollup.l2``,
the form xpath and end-of-form flag in ``rollup.l3``/``l4``, the device in ``did`` and
``actor.id``. Overrides use dotted paths for nested fields::

    assess_event(mid="m-1", **{"context.did": "dev-2", "edata.item.type": "ftp"})

A dotted path whose value is :data:`DELETE` removes the field (to build invalid events).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

CHANNEL = "01269878797503692810"
CONVERSATION_ID = "d5ab5a8a-3f2a-4a5e-9f4e-9a3c1d3b0a11"
DEVICE_ID = "8b1f0f3e-6a47-4c52-9a6a-2b8c0a4c8d51"
ETS = 1655822756892  # 2022-06-21T14:45:56.892Z
DELETE = object()
#: Every phone number the test suite uses. The PII guard (tests/pii_guard.py) fails the run
#: if any of them shows up in a log line, an API answer or a CLI output.
PHONES = ("+919845012345", "+917760098123", "+14155550123", "+447700900461", "+919000012345")

_counter = itertools.count(1)

MCQ_PARAMS = [
    {"1": {"text": "1 Maths"}},
    {"2": {"text": "2 Science"}},
    {"3": {"text": "3 English"}},
]


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        target = target.setdefault(key, {})
    if value is DELETE:
        target.pop(leaf, None)
    else:
        target[leaf] = value


def assess_event(**overrides: Any) -> dict[str, Any]:
    """One realistic UCI ASSESS event (an answered multiple-choice question by default)."""
    n = next(_counter)
    conversation = overrides.pop("conversation_id", CONVERSATION_ID)
    device = overrides.pop("device_id", DEVICE_ID)
    event: dict[str, Any] = {
        "eid": "ASSESS",
        "ets": ETS + n,
        "ver": "3.0",
        "mid": f"4f7c1d2e-{n:04d}-4b0a-8c5e-{ETS // 1000:012d}",
        "actor": {"id": device, "type": "User"},
        "context": {
            "channel": CHANNEL,
            "env": "uci",
            "pdata": {"id": "prod.uci.bot", "pid": "uci-transformer", "ver": "1.0"},
            "sid": f"session-{device[:8]}",
            "did": device,
            "cdata": [
                {"type": "Conversation", "id": conversation},
                {"type": "ConversationOwner", "id": "owner-1"},
            ],
            "rollup": {
                "l1": CHANNEL,
                "l2": conversation,
                "l3": "/data/group1/subject",
                "l4": "false",
            },
        },
        "object": {"id": conversation, "type": "Conversation", "ver": "1.0"},
        "tags": [CHANNEL],
        "edata": {
            "item": {
                "id": "subject",
                "type": "mcq",
                "title": "Which subject do you like, most?",
                "desc": "Choose one option",
                "maxscore": 1,
                "params": copy.deepcopy(MCQ_PARAMS),
                "exlength": 0,
            },
            "index": 1,
            "pass": "Yes",
            "score": 1,
            "resvalues": [{"2": {"text": "2 Science"}}],
            "duration": 4.2,
        },
    }
    for dotted, value in overrides.items():
        _set(event, dotted, value)
    return event


def ftp_event(**overrides: Any) -> dict[str, Any]:
    """A free-text answer: no options, the reply in ``resvalues[0].ans1``."""
    defaults: dict[str, Any] = {
        "edata.item.type": "ftp",
        "edata.item.id": "name",
        "edata.item.title": "What is your name?",
        "edata.item.params": DELETE,
        "edata.item.maxscore": 0,
        "edata.resvalues": [{"ans1": "Ramesh Kumar"}],
        "edata.score": 0,
        "context.rollup.l3": "/data/group1/name",
    }
    return assess_event(**{**defaults, **overrides})


def batch(events: list[dict[str, Any]], msgid: str | None = "batch-1") -> dict[str, Any]:
    """A telemetry API request body carrying ``events``."""
    params = {"msgid": msgid} if msgid is not None else {}
    return {
        "id": "api.sunbird.telemetry",
        "ver": "3.0",
        "params": params,
        "ets": ETS,
        "events": events,
    }
