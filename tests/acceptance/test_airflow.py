"""The Airflow DAGs of ``data_exhaust.contrib.airflow`` under a real Airflow 3, installed by the
test run into its own virtualenv (cached between runs under ~/.cache/data-exhaust, keyed by the
Airflow version and this project's lock file): ``airflow dags test`` of both DAGs against a
running server loads rows into both states' databases."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from data_exhaust.sync.control import ControlDB, Schedule
from tests.acceptance.conftest import ROOT, Deployment, wait_until
from tests.acceptance.sync_world import FIRST_DAY, World, headers, rows, start_server, with_client
from tests.conftest import IN_CI

AIRFLOW = "3.3.2"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "data-exhaust"
INDEX = os.environ.get("UV_INDEX_URL", "https://pypi.org/simple")


def _index_reachable() -> bool:
    try:
        return httpx.get(f"{INDEX.rstrip('/')}/apache-airflow/", timeout=10).status_code < 500
    except httpx.TransportError:
        return False


def _uv() -> str:
    found = ROOT / ".tools" / "bin" / "uv"
    return str(found) if found.exists() else (shutil.which("uv") or "")


def _build(venv: Path) -> None:
    """Airflow and this project's dependencies in ``venv``, plus a migrated Airflow database."""
    uv, python = _uv(), venv / "bin" / "python"
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(python),
            f"apache-airflow=={AIRFLOW}",
            str(ROOT),
        ],
        check=True,
        timeout=900,
    )
    home = venv / "airflow-home"
    home.mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    subprocess.run([str(python), "-m", "airflow", "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip


@pytest.fixture(scope="session")
def airflow_venv() -> Path:
    locked = (ROOT / "uv.lock").read_bytes() + (ROOT / "pyproject.toml").read_bytes()
    key = hashlib.sha256(locked + AIRFLOW.encode()).hexdigest()[:12]
    venv = CACHE / f"airflow-{AIRFLOW}-{key}"
    if (venv / "airflow-home" / "airflow.db").exists():
        return venv
    if not _uv() or not _index_reachable():
        assert not IN_CI or _uv(), "uv is missing; `make install` puts it in .tools/"
        pytest.skip(f"the package index ({INDEX}) is unreachable: Airflow cannot be installed")
    building = venv.with_name(f"{venv.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    _build(building)
    for old in CACHE.glob(f"airflow-{AIRFLOW}-*"):
        if old.is_dir() and ".building-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)  # keyed by an older lock file
    building.rename(venv)
    return venv


@pytest.fixture
def world(tmp_path: Path, sqlite_url: str, empty_postgres_url: str) -> Iterator[World]:
    deployment = Deployment(tmp_path / "var", sqlite_url)
    made = with_client(start_server(deployment), tmp_path, empty_postgres_url)
    control = ControlDB(made.control_db)
    for state, bot, dataset, cron in [
        ("up", "bot-shared", "uci-response-exhaust", "0 0 * * *"),
        ("up", "bot-up-weekly", "uci-private-exhaust", "0 0 * * MON"),
        ("br", "bot-shared", "uci-response-exhaust", "0 0 * * *"),
    ]:
        control.add_schedule(Schedule(state, bot, dataset, cron, FIRST_DAY))
    control.close()
    yield made
    deployment.stop_all()


def dags_test(venv: Path, world: World, tmp_path: Path, dag_id: str, day: str) -> str:
    home = tmp_path / "airflow-home"
    if not home.exists():
        home.mkdir()
        shutil.copy(venv / "airflow-home" / "airflow.db", home / "airflow.db")
    env = {
        **world.deployment.env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT / "src"),  # this checkout's code, not the cached copy
        "EXHAUST_SERVER_URL": world.base,
        "EXHAUST_SYNC_STATES": str(world.states_file),
        "EXHAUST_SYNC_DB": world.control_db,
        "EXHAUST_SYNC_WORK_DIR": str(tmp_path / "downloads"),
    }
    result = subprocess.run(
        # `python -m airflow`: the venv was built under another name, which its scripts' #! keep
        [str(venv / "bin" / "python"), "-m", "airflow", "dags", "test", dag_id, day],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (tmp_path / f"{dag_id}.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def finished(world: World, state: str, tag: str, request_id: str) -> bool:
    channel = "state-up" if state == "up" else "state-br"
    answer = httpx.get(
        f"{world.base}/dataset/v1/request/read/{tag}",
        params={"requestId": request_id},
        headers=headers(world.keys[state], channel),
    )
    return bool(answer.json()["result"]["status"] in ("SUCCESS", "FAILED"))


def test_both_dags_run_under_airflow_and_load_rows(
    airflow_venv: Path, world: World, tmp_path: Path
) -> None:
    out = dags_test(airflow_venv, world, tmp_path, "exhaust_requester", "2026-10-13")
    assert "state=success" in out
    control = ControlDB(world.control_db)
    windows = control.requests()
    assert len(windows) == 8 + 1 + 8  # Oct 5..12 daily for each state, one week private
    assert all(w.request_id for w in windows)
    for w in windows:
        wait_until(lambda w=w: finished(world, w.state_id, w.tag, w.request_id), timeout=120)

    out = dags_test(airflow_venv, world, tmp_path, "exhaust_request_handler", "2026-10-13")
    assert "state=success" in out
    assert Counter(w.status for w in control.requests()) == {"LOADED": 15, "NO_DATA": 2}
    control.close()
    for state, url in (("up", world.up_db), ("br", world.br_db)):
        loaded = Counter(r["message_id"] for r in rows(url, "exhaust_report_response"))
        sent = [
            e["mid"]
            for e in world.sent[(state, "bot-shared")]
            if date.fromtimestamp(e["ets"] / 1000) < date(2026, 10, 13)
        ]
        assert loaded == Counter(sent)
    devices = {r["device_uuid"] for r in rows(world.up_db, "exhaust_report_private")}
    assert {"up-dev-1", "up-dev-4"} <= devices
