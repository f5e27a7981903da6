"""``exhaust serve --processes 2``: two server processes on one port, each with its own
services (lake segments, embedded workers), behind uvicorn's supervisor."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.acceptance.conftest import EXHAUST, Deployment, wait_until
from tests.conftest import free_port
from tests.factories import assess_event

CHANNEL = "state-a"
BOT = "bot-processes"
JUNE_21 = 1655769600000  # 2022-06-21T00:00:00Z


def server_processes(parent: int) -> list[int]:
    """The serving children of ``parent`` (not multiprocessing's resource tracker); a child
    that is gone by the time its command line is read is not one."""
    found = []
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except FileNotFoundError:
            continue
    return found


def segment_writers(lake: Path) -> set[int]:
    """The pids in the names of the lake's segments, raw or compacted
    (``<time>-<pid>-<uuid>``; hidden names are segments being created)."""
    names = [p.name for p in (lake / "raw").glob("[!.]*.events")]
    names += [p.name for p in (lake / "compacted").glob("[!.]*")]
    return {int(name.split("-")[1]) for name in names}


LISTEN, ESTABLISHED = "0A", "01"  # the states of /proc/net/tcp


def sockets_on(port: int, state: str) -> set[str]:
    """The inodes of the sockets on local ``port`` (IPv4 or IPv6) in ``state``."""
    found = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():  # no IPv6 in this kernel
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def held_by(pid: int, inodes: set[str]) -> int:
    """How many of the sockets ``inodes`` process ``pid`` has open."""
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def all_listening(parent: int, port: int, processes: int = 2) -> bool:
    """Whether ``parent`` has ``processes`` serving children and each listens on ``port``
    (a child exists before its app has started and its socket listens)."""
    children = server_processes(parent)
    listening = sockets_on(port, LISTEN)
    return len(children) == processes and all(held_by(pid, listening) for pid in children)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def batch(number: int) -> dict[str, object]:
    events = [
        assess_event(
            conversation_id=BOT, mid=f"mid-{number}-{i}", ets=JUNE_21 + number * 60_000 + i,
            **{"context.channel": CHANNEL},
        )
        for i in range(10)
    ]  # fmt: skip
    return {"params": {"msgid": f"batch-{number}"}, "events": events}


def test_two_processes_share_the_port_the_lake_and_the_jobs(deployment: Deployment) -> None:
    base = deployment.serve("--processes", "2")
    parent = deployment.processes[-1].pid
    wait_until(lambda: len(server_processes(parent)) == 2)
    key = deployment.create_key(CHANNEL, "exhaust,ingest")
    auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}

    def send(number: int) -> int:
        with httpx.Client(timeout=30) as client:  # a connection of its own each
            answer = client.post(f"{base}/v1/telemetry", json=batch(number), headers=auth)
            return int(answer.json()["result"]["accepted"])

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(send, range(40))) == 400
    writers = segment_writers(deployment.data_dir / "lake")
    assert writers and writers <= set(server_processes(parent))  # the servers', not the parent's

    request = {"tag": "both", "dataset": "uci-response-exhaust", "datasetConfig": {
        "conversationId": BOT, "startDate": "2022-06-21", "endDate": "2022-06-21"}}  # fmt: skip
    job = httpx.post(f"{base}/dataset/v1/request/submit", json={"request": request}, headers=auth)
    read_url = f"{base}/dataset/v1/request/read/both?requestId={job.json()['result']['requestId']}"
    wait_until(lambda: httpx.get(read_url, headers=auth).json()["result"]["status"] == "SUCCESS")
    (url,) = httpx.get(read_url, headers=auth).json()["result"]["downloadUrls"]
    rows = list(csv.reader(io.StringIO(httpx.get(url).text)))
    assert sorted(row[0] for row in rows[1:]) == sorted(
        f"mid-{n}-{i}" for n in range(40) for i in range(10)
    )  # every event, whichever process stored it, in one export
    assert_logged_as_configured(deployment)


def assert_logged_as_configured(deployment: Deployment) -> None:
    """The processes log as the command was told (EXHAUST_LOG_JSON=1, level INFO), not with
    structlog's defaults: JSON lines only, no debug event, one line per ingested batch."""
    (log,) = deployment.data_dir.parent.glob("serve-*.log")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert {r["level"] for r in records} <= {"info", "warning", "error"}
    ingested = [r for r in records if r["event"] == "telemetry.ingested"]
    assert len(ingested) == 40


def test_a_dead_process_is_replaced_and_a_stop_ends_them_all(deployment: Deployment) -> None:
    """While one process is replaced, the other keeps answering."""
    base = deployment.serve("--processes", "2")
    parent = deployment.processes[-1].pid
    wait_until(lambda: all_listening(parent, int(base.rsplit(":", 1)[1])))
    victim, survivor = server_processes(parent)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        children = server_processes(parent)
        return victim not in children and len(children) == 2

    wait_until(replaced)
    assert httpx.get(f"{base}/health", timeout=10).json()["result"]["healthy"] is True
    children = server_processes(parent)
    assert survivor in children
    deployment.stop_all()  # SIGTERM to the parent, as a service manager sends it
    assert deployment.processes[-1].returncode is not None
    wait_until(lambda: not any(alive(pid) for pid in children))


SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
def test_connections_opened_together_are_spread_over_the_processes(
    deployment: Deployment,
) -> None:
    """Each process listens on a socket of its own (SO_REUSEPORT), so a burst of keep-alive
    connections (a proxy's pool) does not all go to the process that wakes first, which left
    the other idle while they lasted (the shared socket of uvicorn's workers did that)."""
    base = deployment.serve("--processes", "2")
    parent = deployment.processes[-1].pid
    port = int(base.rsplit(":", 1)[1])
    wait_until(lambda: all_listening(parent, port) and len(sockets_on(port, LISTEN)) == 2)
    children = server_processes(parent)
    opened = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(16)]
    try:
        for sock in opened:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        for sock in opened:
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
        established = sockets_on(port, ESTABLISHED)
        counts = {pid: held_by(pid, established) for pid in children}
    finally:
        for sock in opened:
            sock.close()
    assert sum(counts.values()) == 16
    # By the kernel's hash of the addresses: all 16 on one of two sockets is a 1 in 32,768 case
    assert all(counts.values()), counts


@SQLITE_ONLY
def test_a_port_in_use_is_refused_with_a_clear_error(deployment: Deployment) -> None:
    """Another server's SO_REUSEPORT socket would let the processes join it silently; a
    taken port is refused instead, saying what to do."""
    port = free_port()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = subprocess.run(
            [EXHAUST, "serve", "--port", str(port), "--processes", "2"],
            env=deployment.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in done.stderr
    assert "--port" in done.stderr


@SQLITE_ONLY
def test_where_connections_are_not_spread_the_processes_share_one_socket(
    deployment: Deployment,
) -> None:
    """Elsewhere than Linux the processes share the one socket uvicorn binds, and serve."""
    port = free_port()
    log = (deployment.data_dir.parent / "serve-shared.log").open("wb")
    with log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.without_reuseport", "serve", "--port", str(port),
             "--processes", "2"],
            env=deployment.env, cwd=deployment.data_dir.parent, stdout=log, stderr=log,
        )  # fmt: skip
    deployment.processes.append(process)
    wait_until(lambda: all_listening(process.pid, port))
    children = server_processes(process.pid)
    assert len(sockets_on(port, LISTEN)) == 1  # they listen on one socket, not one each
    key = deployment.create_key(CHANNEL, "ingest")
    auth = {"Authorization": f"Bearer {key}", "X-Channel-ID": CHANNEL}
    answer = httpx.post(f"http://127.0.0.1:{port}/v1/telemetry", json=batch(1), headers=auth)
    assert answer.json()["result"]["accepted"] == 10
    deployment.stop_all()
    wait_until(lambda: not any(alive(pid) for pid in children))
