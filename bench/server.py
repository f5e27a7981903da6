"""Real servers as subprocesses on 127.0.0.1 random ports, always stopped (like the acceptance
tests' ``Deployment``), plus the client calls the benchmarks make through the real API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXHAUST = str(BIN / "exhaust")
TERMINAL = {"SUCCESS", "FAILED", "STOPPED"}
#: How often :func:`wait_job` polls ``read``.
POLL_SECONDS = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One data dir (and database, lake) with the processes started on it."""

    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    base: str = ""
    pid: int = 0

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXHAUST_")}
        env.update(
            {
                "EXHAUST_DATA_DIR": str(self.data_dir),
                "EXHAUST_SECRET_KEY": "bench-secret",
                "EXHAUST_COMPACT_INTERVAL_SECONDS": "0",
                "EXHAUST_LOG_JSON": "1",
                # The checkout's own code first: an A/B run from a worktree must not serve
                # the code the virtualenv's editable install points at.
                "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
            }
        )
        env.update(self.extra_env)
        return env

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXHAUST, *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, check=True, cwd=self.data_dir.parent,
        )  # fmt: skip

    def create_key(self, channel: str, scopes: str = "exhaust,ingest,admin") -> str:
        result = self.run("keys", "create", "--channel", channel, "--scope", scopes)
        return result.stdout.strip().splitlines()[-1]

    def start(self, argv: list[str], ready_path: str = "/health", processes: int = 1) -> str:
        """Start ``argv`` (which must listen on ``{port}``) and wait until it answers, and
        until each of its ``processes`` listens (each has a socket of its own: without that
        wait, a run began while one process of two was still starting and measured one)."""
        port = free_port()
        log_path = self.data_dir.parent / f"server-{len(self.processes)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [a.format(port=port) for a in argv], env=self.env, stdout=log, stderr=log,
                cwd=self.data_dir.parent,
            )  # fmt: skip
        self.processes.append(process)
        self.base, self.pid = f"http://127.0.0.1:{port}", process.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited; see {log_path}")
            try:
                answered = httpx.get(self.base + ready_path, timeout=2).status_code == 200
                if answered and listening(port) >= processes:
                    return self.base
                time.sleep(0.1)
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start in 60 s; see {log_path}")

    def serve_processes(self, processes: int) -> str:
        """``exhaust serve --processes N``, once every process listens."""
        argv = [EXHAUST, "serve", "--port", "{port}", "--processes", str(processes)]
        return self.start(argv, processes=processes)

    def serve(self) -> str:
        return self.start([EXHAUST, "serve", "--port", "{port}"])

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def listening(port: int) -> int:
    """How many sockets listen on local ``port`` (/proc/net/tcp, state 0A)."""
    count = 0
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():  # no IPv6 in this kernel
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            count += fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return count


@contextmanager
def server(data_dir: Path, **env: str) -> Iterator[Server]:
    """A migrated data dir whose processes are stopped on the way out, whatever happens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    made = Server(data_dir, dict(env))
    try:
        made.run("migrate")
        yield made
    finally:
        made.stop_all()


# -- memory of a process (no psutil: /proc) ----------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM and the RSS split RssAnon / RssFile (kB) from ``/proc/<pid>/status``."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            found[key] = int(value.split()[0])
    return found


@contextmanager
def split_peaks(pid: int, every_s: float = 0.002) -> Iterator[dict[str, int]]:
    """The highest RssAnon and RssFile (kB) of ``pid`` while the ``with`` runs, sampled every
    ``every_s`` (the kernel keeps a peak of their sum only, VmHWM). Anonymous memory is what
    the process allocated; file pages are the mapped libraries' code and data it touched,
    clean and shared with every other process using them."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            status = proc_status(pid)
            for key in peaks:
                peaks[key] = max(peaks[key], status[key])

    sampler = threading.Thread(target=sample, name="rss-sampler")
    sampler.start()
    try:
        yield peaks
    finally:
        done.set()
        sampler.join()


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# -- the export API, as a client uses it -------------------------------------------------


def submit_export(
    client: httpx.Client, base: str, headers: dict[str, str], config: dict[str, Any], tag: str,
    dataset: str = "uci-response-exhaust",
) -> str:  # fmt: skip
    request = {"tag": tag, "dataset": dataset, "datasetConfig": config}
    answer = client.post(
        f"{base}/dataset/v1/request/submit", json={"request": request}, headers=headers
    )
    answer.raise_for_status()
    return str(answer.json()["result"]["requestId"])


def wait_job(
    client: httpx.Client, base: str, headers: dict[str, str], tag: str, request_id: str,
    timeout: float = 900, interval: float = POLL_SECONDS,
) -> dict[str, Any]:  # fmt: skip
    """Poll ``read`` until the job ends (a bounded loop); the job object."""
    url = f"{base}/dataset/v1/request/read/{tag}?requestId={request_id}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(url, headers=headers).json()["result"]
        if job.get("status") in TERMINAL:
            return job
        time.sleep(interval)
    raise TimeoutError(f"job {request_id} did not finish in {timeout} s")


@dataclass(frozen=True)
class ExportRun:
    """One request from submit to SUCCESS.

    ``seconds`` ends when the job became SUCCESS, as the server recorded it (the read answer's
    ``dtJobCompleted``, in ms, against this process's clock at submit: one machine, one
    clock). ``seen_seconds`` ends at the poll that first saw it: polling every
    :data:`POLL_SECONDS` adds up to that much, and to a 10 ms job nearly all of it (until
    2026-12-03 the figures were these).
    """

    seconds: float
    seen_seconds: float
    job: dict[str, Any]


def export_once(
    client: httpx.Client, base: str, headers: dict[str, str], config: dict[str, Any],
    dataset: str = "uci-response-exhaust",
) -> ExportRun:  # fmt: skip
    """One new request (a fresh tag: no dedup) from submit to SUCCESS."""
    tag = f"bench-{uuid.uuid4().hex[:12]}"
    wall, started = time.time(), time.perf_counter()
    request_id = submit_export(client, base, headers, config, tag, dataset)
    job = wait_job(client, base, headers, tag, request_id)
    seen = time.perf_counter() - started
    if job["status"] != "SUCCESS":
        raise RuntimeError(f"export ended {job['status']}: {job.get('statusMessage')}")
    done = job["jobStats"]["dtJobCompleted"] / 1000 - wall
    if not -0.001 <= done <= seen:  # dtJobCompleted is truncated to the millisecond
        raise RuntimeError(
            f"job {request_id} completed {done:.3f} s after its submit but was seen at "
            f"{seen:.3f} s: the server's clock is not this process's"
        )
    return ExportRun(max(done, 0.0), seen, job)
