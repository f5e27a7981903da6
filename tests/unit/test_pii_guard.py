"""The PII guard itself: it finds a leaked test phone in any form, and ignores other numbers."""

from __future__ import annotations

from pathlib import Path

from tests.factories import PHONES
from tests.pii_guard import scan


def test_the_guard_finds_every_form_of_a_test_phone(tmp_path: Path) -> None:
    phone = PHONES[0]
    tmp_path = tmp_path / "inputs"  # the session-wide scan skips deliberate fixtures
    tmp_path.mkdir()
    (tmp_path / "server.log").write_text(f'{{"event": "x", "to": "{phone}"}}\n')
    (tmp_path / "answers.txt").write_text(f"ok\nGET / -> {phone.lstrip('+')}\n")
    (tmp_path / "cli.log").write_text(f"call {phone[-10:]} now\n")
    (tmp_path / "export.csv").write_text(f"phone:{phone}\n")  # a deliberate output: excluded
    hits = scan(tmp_path)
    assert sorted(Path(h.split(":")[0]).name for h in hits) == [
        "answers.txt",
        "cli.log",
        "server.log",
    ]


def test_the_guard_ignores_timestamps_and_other_numbers(tmp_path: Path) -> None:
    tmp_path = tmp_path / "inputs"
    tmp_path.mkdir()
    (tmp_path / "server.log").write_text('{"ets": 1655822756892, "rows": 9845, "id": 123456}\n')
    assert scan(tmp_path) == []
