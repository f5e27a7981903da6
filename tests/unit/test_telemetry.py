"""Telemetry v3 validation rules and messages, and the flattening into lake rows."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

import orjson
import pytest

from data_exhaust.ingest import split_events
from data_exhaust.lake import RAW_COLUMNS
from data_exhaust.telemetry import compact_json, flatten, validate_event
from tests.factories import CONVERSATION_ID, DELETE, DEVICE_ID, assess_event, ftp_event


def test_a_realistic_assess_event_is_valid() -> None:
    assert validate_event(assess_event()) == []
    assert validate_event(ftp_event()) == []


def test_other_eids_need_no_assess_fields() -> None:
    event = assess_event(eid="INTERACT", edata={"type": "TOUCH"})
    assert validate_event(event) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eid": DELETE}, "eid is required"),
        ({"eid": ""}, "eid must be a non-empty string"),
        ({"eid": 7}, "eid must be a non-empty string"),
        ({"eid": "assess"}, "eid must be upper-case (got 'assess')"),
        ({"ets": DELETE}, "ets is required"),
        ({"ets": "1655822756892"}, "ets must be a number (epoch milliseconds)"),
        ({"ets": True}, "ets must be a number (epoch milliseconds)"),
        (
            {"ets": 1655822756},
            "ets must be epoch milliseconds (got 1655822756, which looks like seconds)",
        ),
        (
            {"ets": 1655822756892000},
            "ets must be epoch milliseconds (got 1655822756892000, which looks like microseconds)",
        ),
        ({"ver": DELETE}, "ver is required"),
        ({"ver": "2.0"}, "ver must be \"3.0\" or \"3.1\" (got '2.0')"),
        ({"ver": 3.0}, 'ver must be "3.0" or "3.1" (got 3.0)'),
        ({"mid": DELETE}, "mid is required"),
        ({"mid": ""}, "mid must be a non-empty string"),
        ({"actor": DELETE}, "actor is required"),
        ({"actor": "user"}, "actor must be an object"),
        ({"actor.id": DELETE}, "actor.id is required"),
        ({"actor.type": ""}, "actor.type must be a non-empty string"),
        ({"context": DELETE}, "context is required"),
        ({"context": []}, "context must be an object"),
        ({"context.channel": DELETE}, "context.channel is required"),
        ({"context.channel": ""}, "context.channel must be a non-empty string"),
        ({"context.env": DELETE}, "context.env is required"),
        ({"context.env": 1}, "context.env must be a string"),
        ({"context.pdata": DELETE}, "context.pdata is required"),
        ({"context.pdata": "uci"}, "context.pdata must be an object"),
        ({"context.pdata.id": DELETE}, "context.pdata.id is required"),
        ({"context.sid": 12}, "context.sid must be a string"),
        ({"context.did": ["d"]}, "context.did must be a string"),
        (
            {"context.cdata": {"type": "Conversation"}},
            "context.cdata must be an array of {type, id} objects",
        ),
        ({"context.cdata": ["x"]}, "context.cdata[0] must be an object with type and id"),
        ({"context.cdata": [{"type": "Conversation"}]}, "context.cdata[0].id is required"),
        (
            {"context.cdata": [{"type": "Conversation", "id": "c"}, {"type": "Device", "id": ""}]},
            "context.cdata[1].id must be a non-empty string",
        ),
        (
            {"context.cdata": [{"id": "c", "type": ""}]},
            "context.cdata[0].type must be a non-empty string",
        ),
        ({"context.rollup": "l1"}, "context.rollup must be an object"),
        ({"edata": DELETE}, "edata is required"),
        ({"edata": []}, "edata must be an object"),
        ({"object": "x"}, "object must be an object"),
        ({"object.id": DELETE}, "object.id is required"),
        ({"tags": "a,b"}, "tags must be an array of strings"),
        ({"tags": ["a", 1]}, "tags must be an array of strings"),
        ({"edata.item": DELETE}, "edata.item is required"),
        ({"edata.item": "q1"}, "edata.item must be an object"),
        ({"edata.item.id": DELETE}, "edata.item.id is required"),
        ({"edata.item.id": ""}, "edata.item.id must be a non-empty string"),
        ({"edata.resvalues": DELETE}, "edata.resvalues is required"),
        ({"edata.resvalues": {"1": "x"}}, "edata.resvalues must be an array"),
        ({"edata.duration": DELETE}, "edata.duration is required"),
        ({"edata.duration": "4"}, "edata.duration must be a number"),
        ({"edata.duration": False}, "edata.duration must be a number"),
        ({"edata.score": DELETE}, "edata.score is required"),
        ({"edata.score": True}, "edata.score must be a number"),
        ({"edata.pass": DELETE}, "edata.pass is required"),
    ],
)  # fmt: skip
def test_each_rule_names_the_field(overrides: dict[str, Any], message: str) -> None:
    assert validate_event(assess_event(**overrides)) == [message]


def test_optional_fields_may_be_absent_or_null() -> None:
    event = assess_event(
        **{"context.sid": None, "context.did": DELETE, "context.cdata": DELETE},
        **{"context.rollup": DELETE, "object": DELETE, "tags": DELETE},
    )
    assert validate_event(event) == []


def test_every_error_of_an_event_is_reported() -> None:
    errors = validate_event(assess_event(eid="", ets=1655822756, **{"context.channel": None}))
    assert errors == [
        "eid must be a non-empty string",
        "ets must be epoch milliseconds (got 1655822756, which looks like seconds)",
        "context.channel is required",
    ]


def test_numbers_ets_and_item_ids_that_are_valid_in_other_shapes() -> None:
    assert validate_event(assess_event(ets=1655822756892.5, **{"edata.item.id": 42})) == []
    assert validate_event(assess_event(ver="3.1")) == []


def test_non_objects_and_oversized_events_are_rejected() -> None:
    assert validate_event(["ASSESS"]) == ["event must be a JSON object"]
    assert validate_event(None) == ["event must be a JSON object"]
    big = assess_event(**{"edata.item.desc": "x" * (1024 * 1024)})
    (error,) = validate_event(big)
    assert re.fullmatch(
        r"event is 1,04\d,\d{3} bytes as JSON; the limit is 1 MB \(1,048,576\)", error
    )


def test_flatten_gives_exactly_the_raw_columns() -> None:
    row = flatten(assess_event())
    assert list(row) == list(RAW_COLUMNS)
    assert row["conversation_id"] == CONVERSATION_ID
    assert row["device_id"] == DEVICE_ID == row["actor_id"]
    assert row["session_id"] == f"session-{DEVICE_ID[:8]}"
    assert (row["item_id"], row["item_type"]) == ("subject", "mcq")
    assert (row["duration"], row["score"], row["max_score"]) == (4.2, 1.0, 1.0)
    assert isinstance(row["score"], float)
    assert isinstance(row["ets"], int)
    assert (
        row["options"]
        == '[{"1":{"text":"1 Maths"}},{"2":{"text":"2 Science"}},{"3":{"text":"3 English"}}]'
    )
    assert row["response"] == '[{"2":{"text":"2 Science"}}]'
    assert (row["xpath"], row["eof"], row["date"]) == (
        "/data/group1/subject",
        "false",
        "2022-06-21",
    )
    assert row["pdata_id"] == "prod.uci.bot"
    assert row["channel"] == "01269878797503692810"


def test_flatten_keeps_hard_text_intact() -> None:
    title = 'गणित, "विज्ञान"\nor English?'
    params = [{"1": {"text": '1 गणित, "math"'}}, {"2": {"text": "2 line\nbreak"}}]
    event = assess_event(**{"edata.item.title": title, "edata.item.params": params})
    row = flatten(event)
    assert row["item_title"] == title
    assert row["options"] == json.dumps(params, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(row["event"]) == event


def test_flatten_free_text_answer() -> None:
    row = flatten(ftp_event(**{"edata.resvalues": [{"ans1": "मेरा नाम राम है"}]}))
    assert row["item_type"] == "ftp"
    assert row["options"] is None
    assert row["response"] == '[{"ans1":"मेरा नाम राम है"}]'
    assert row["max_score"] == 0.0


@pytest.mark.parametrize(
    ("l4", "eof"),
    [(True, "true"), (False, "false"), ("true", "true"), ("FALSE", "false"), (None, None)],
)
def test_end_of_form_from_bool_or_string(l4: object, eof: str | None) -> None:
    assert flatten(assess_event(**{"context.rollup.l4": l4}))["eof"] == eof


def test_conversation_from_cdata_case_insensitively_else_rollup() -> None:
    cdata = [{"type": "ConversationOwner", "id": "o"}, {"type": "conversation", "id": "c-9"}]
    assert flatten(assess_event(**{"context.cdata": cdata}))["conversation_id"] == "c-9"
    no_cdata = assess_event(**{"context.cdata": DELETE, "context.rollup.l2": "c-2"})
    assert flatten(no_cdata)["conversation_id"] == "c-2"
    neither = assess_event(**{"context.cdata": [], "context.rollup": DELETE})
    assert flatten(neither)["conversation_id"] is None


def test_non_string_values_become_strings_and_device_falls_back_to_actor() -> None:
    event = assess_event(**{"edata.item.id": 42, "context.did": DELETE, "actor.id": "u-7"})
    event["edata"]["item"]["maxscore"] = "2"
    row = flatten(event)
    assert (row["item_id"], row["device_id"], row["max_score"]) == ("42", "u-7", 2.0)
    assert flatten(assess_event(**{"edata.item.maxscore": "n/a"}))["max_score"] is None


def test_event_hash_is_canonical_and_extra_fields_are_kept() -> None:
    event = assess_event(extra={"b": 1, "a": [1.5, "x"]})
    reordered = dict(reversed(list(event.items())))
    row = flatten(event)
    assert row["event_hash"] == flatten(reordered)["event_hash"]
    canonical = json.dumps(event, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert row["event_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert orjson.loads(row["event"])["extra"] == {"b": 1, "a": [1.5, "x"]}


def test_different_events_sharing_a_mid_hash_differently() -> None:
    first, second = assess_event(mid="m-1"), assess_event(mid="m-1")
    assert flatten(first)["event_hash"] != flatten(second)["event_hash"]


def test_date_is_the_utc_day_of_ets() -> None:
    assert flatten(assess_event(ets=1655855999999))["date"] == "2022-06-21"
    assert flatten(assess_event(ets=1655856000000))["date"] == "2022-06-22"


@pytest.mark.parametrize("value", [[{"x": 1e-7}], [{"x": 1e16}], [2**70], {"ß": "\u2028\x00"}])
def test_compact_json_matches_the_standard_library(value: object) -> None:
    assert compact_json(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def test_split_events_lists_rejections_with_index_and_mid() -> None:
    events: list[Any] = [assess_event(), assess_event(mid="bad-1", ets=1655822756), "junk"]
    sent = copy.deepcopy(events)
    split = split_events(events)
    assert split.accepted == 1
    row = flatten(sent[0])  # the raw segment's line: hash, keys, options, response, extra, event
    digest, keys, options, response, extra, event = split.encoded.rstrip(b"\n").split(b"\t")
    assert (digest.decode(), options.decode(), response.decode()) == (
        row["event_hash"], row["options"], row["response"],
    )  # fmt: skip
    names = ("eid", "ets", "mid", "channel", "conversation_id", "date")
    assert orjson.loads(keys) == {name: row[name] for name in names}
    assert (extra, event.decode()) == (b"", row["event"])
    assert [(r["index"], r["mid"]) for r in split.rejected] == [(1, "bad-1"), (2, None)]
    assert split.rejected[1]["errors"] == ["event must be a JSON object"]
    assert [q["event"] for q in split.bad] == sent[1:]
    assert events == [None, None, None]  # consumed as read: see split_events
