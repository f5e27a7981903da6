"""The real thing as a user runs it: ``exhaust`` commands and servers as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
EXHAUST = str(Path(sys.executable).parent / "exhaust")


@dataclass
class Deployment:
    """One data dir and database, with the processes started on them."""

    data_dir: Path
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXHAUST_")}
        env.update(
            {
                "EXHAUST_DATA_DIR": str(self.data_dir),
                "EXHAUST_DATABASE_URL": self.database_url,
                "EXHAUST_SECRET_KEY": "acceptance-secret",
                "EXHAUST_LEASE_SECONDS": "2",
                "EXHAUST_POLL_SECONDS": "0.2",
                "EXHAUST_MAINTENANCE_SECONDS": "0.5",
                "EXHAUST_RETRY_BACKOFF_SECONDS": "0",
                "EXHAUST_PLUGINS": '["tests.plugins:CountingDataset"]',
                "EXHAUST_LOG_JSON": "1",
                "PYTHONPATH": str(ROOT),
            }
        )
        env.update(self.extra_env)
        return env

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run an ``exhaust`` command (``env`` added to the deployment's); its output is also
        kept in cli.log (the PII guard scans it)."""
        result = subprocess.run(
            [EXHAUST, *args],
            env={**self.env, **(env or {})},
            cwd=self.data_dir.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        with (self.data_dir.parent / "cli.log").open("a", encoding="utf-8") as log:
            log.write(f"$ exhaust {' '.join(args)}\n{result.stdout}{result.stderr}\n")
        if check:
            result.check_returncode()
        return result

    def create_key(self, channel: str, scopes: str) -> str:
        result = self.run("keys", "create", "--channel", channel, "--scope", scopes)
        return result.stdout.strip().splitlines()[-1]

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log_path = self.data_dir.parent / f"{args[0]}-{len(self.processes)}.log"
        with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                [EXHAUST, *args],
                env={**self.env, **env},
                cwd=self.data_dir.parent,
                stdout=log,
                stderr=log,
            )
        self.processes.append(process)
        return process

    def serve(self, *args: str, **env: str) -> str:
        """Start ``exhaust serve`` (with ``args``) and wait until it answers; its base URL."""
        port = free_port()
        self.start("serve", "--port", str(port), *args, **env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    return base
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError(f"server did not start; see {self.data_dir.parent}/serve-*.log")

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)  # reaped: no "subprocess is still running" at GC


@pytest.fixture
def deployment(tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    made = Deployment(tmp_path / "var", database_url)
    made.run("migrate")
    yield made
    made.stop_all()


def wait_until(predicate: object, timeout: float = 60.0) -> None:
    """Poll (a deadline guards against hangs; this is not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)
