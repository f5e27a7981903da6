"""The registry commands as an administrator types them; no phone ever appears in any output."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from data_exhaust import uci
from tests.acceptance.conftest import EXHAUST, Deployment

PHONES = ("+919845012345", "9876543210", "+447700900461")
UCI_SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The CLI does not depend on the database kind: SQLite only (imports run on both)."""
    return sqlite_url


def no_phone(*outputs: subprocess.CompletedProcess[str]) -> None:
    for output in outputs:
        text = output.stdout + output.stderr
        for phone in PHONES:
            assert phone.lstrip("+") not in re.sub(r"[\s-]", "", text)


def test_put_list_import_rotate_without_printing_a_phone(
    deployment: Deployment, tmp_path: Path
) -> None:
    devices_help = deployment.run("devices", "import", "--help").stdout
    assert "Example: exhaust devices import" in devices_help
    assert "encrypted_device_id" in devices_help
    runs = [
        deployment.run("conversations", "put", "bot-1", "--name", "Quiz, one", "--channel", "s1"),
        deployment.run(
            "conversations",
            "put",
            "bot-2",
            "--name",
            "गणित",
            "--channel",
            "s2",
            "--start",
            "2024-06-01",
            "--end",
            "2024-06-30",
        ),
    ]
    assert "created conversation bot-1" in runs[0].stderr
    listing = deployment.run("conversations", "list")
    assert listing.stdout.splitlines() == [
        "id\tname\tchannel\tstart\tend",
        "bot-1\tQuiz, one\ts1\t\t",
        "bot-2\tगणित\ts2\t2024-06-01\t2024-06-30",
    ]

    typed = subprocess.run(
        [EXHAUST, "devices", "put", "dev-1", "--conversation", "bot-1", "--phone", "-"],
        input=PHONES[0] + "\n",
        env=deployment.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "dev-1: conversations bot-1; consent yes; phone stored encrypted" in typed.stderr
    given = deployment.run(
        "devices",
        "put",
        "dev-2",
        "--conversation",
        "bot-1",
        "--conversation",
        "bot-2",
        "--phone",
        PHONES[1],
        "--no-consent",
    )
    assert "consent no" in given.stderr
    wrong = deployment.run(
        "devices", "put", "dev-3", "--conversation", "bot-1", "--phone", "98-76", check=False
    )
    assert wrong.returncode == 2 and "phone must have 6 to 15 digits" in wrong.stderr

    conversations = tmp_path / "bots.csv"
    conversations.write_text(
        "conversation_id,name,channel,start_date,end_date\n"
        'bot-3,"Line one\nline two",s1,,\nbot 4,x,s1,,\n'
    )
    imported = deployment.run("conversations", "import", str(conversations))
    assert "2 row(s) read, 1 accepted, 1 rejected" in imported.stderr
    assert "line 4: conversation_id must be" in imported.stderr

    devices = tmp_path / "devices.csv"
    devices.write_text(
        "device_uuid,conversation_id,phone,consent\n"
        f"dev-4,bot-3,{PHONES[2]},no\ndev-4,bot-1,,\ndev-5,bot-9,{PHONES[1]},\n"
        f"dev-6,bot-1,{PHONES[1][:4]},\n"
    )
    loaded = deployment.run("devices", "import", str(devices), "--json")
    result = json.loads(loaded.stdout)
    assert (result["inserted"], result["linked"], result["rejected"]) == (1, 2, 2)
    assert [e["line"] for e in result["errors"]] == [4, 5]
    assert "line 5: phone must have 6 to 15 digits" in loaded.stderr
    strict = deployment.run("devices", "import", str(devices), "--strict", check=False)
    assert strict.returncode == 1 and "strict mode: nothing was imported" in strict.stderr
    undone = deployment.run("registry", "rollback", result["taskId"])
    assert "rolled back 3 row(s)" in undone.stderr

    env = {
        "EXHAUST_SECRET_KEY": "new-secret",
        "EXHAUST_PREVIOUS_SECRET_KEYS": '["acceptance-secret"]',
    }
    deployment.extra_env.update(env)
    rotated = deployment.run("registry", "rotate-key")
    assert "re-sealed 2 phone(s) and 0 job secret(s)" in rotated.stderr
    no_phone(*runs, listing, typed, given, wrong, imported, loaded, strict, rotated)


def test_uci_encrypted_device_ids(deployment: Deployment, tmp_path: Path) -> None:
    deployment.run("conversations", "put", "bot-1", "--name", "One", "--channel", "s1")
    source = tmp_path / "uci.csv"
    encrypted = uci.encrypt("phone:" + PHONES[1], UCI_SECRET.encode())
    source.write_text(
        f"device_uuid,conversation_id,encrypted_device_id,consent\nd1,bot-1,{encrypted},yes\n"
    )
    deployment.extra_env["EXHAUST_UCI_SECRET"] = "too-short"
    short = deployment.run("devices", "import", str(source), check=False)
    assert short.returncode == 2 and "must be 16, 24 or 32 bytes" in short.stderr
    deployment.extra_env["EXHAUST_UCI_SECRET"] = UCI_SECRET
    done = deployment.run("devices", "import", str(source))
    assert "1 accepted, 0 rejected; devices inserted 1" in done.stderr
    assert encrypted not in done.stderr + done.stdout
    no_phone(short, done)
