"""``exhaust serve --processes N``: N server processes on one port, each listening on a socket
of its own.

uvicorn's own ``workers=N`` binds one socket in its supervisor and hands it to every process.
A process's event loop, once woken, accepts every connection waiting (uvloop accepts until
the queue is empty), so connections that arrive together (a proxy's or a client's pool, a
load generator's clients) all went to whichever process woke first: 8 keep-alive connections
opened at once were all held by one of two processes in 8 tries out of 10, and its requests
shared one core while the other core idled (bench/HISTORY.md, *Eleventh sitting*).

Here every process binds a socket of its own to the address with ``SO_REUSEPORT``, and Linux
spreads new connections over the sockets of such a group by a hash of their addresses, so
each process gets its share whenever they arrive (no split of 8 left a process without one
in 20 tries). uvicorn's supervisor is kept as it is (it restarts a process that dies and
stops them all on SIGTERM): it sends each process it starts a :class:`ReusePortAddress`, which
arrives there, unpickled, as that process's own bound socket.

Where ``SO_REUSEPORT`` does not spread connections (anything but Linux), the processes share
one socket as uvicorn binds it.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

import uvicorn

#: The ASGI app factory each process calls (:func:`data_exhaust.api.app.app_from_settings`).
APP_FACTORY = "data_exhaust.api.app:app_from_settings"


class AddressInUse(Exception):
    """The port is taken; the message says by what and how to choose another."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` in the address's ``SO_REUSEPORT`` group (uvicorn's
    server makes it listen)."""
    sock = socket.socket(_family(host))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class ReusePortAddress(socket.socket):
    """Stands for ``(host, port)`` in the supervisor, unbound; pickled to a process uvicorn
    spawns, it becomes :func:`bind_reuse_port`'s socket of that process."""

    address: tuple[str, int]

    def __reduce__(self) -> tuple[Any, ...]:
        return (bind_reuse_port, self.address)


def reuse_port_address(host: str, port: int) -> ReusePortAddress:
    placeholder = ReusePortAddress(_family(host))
    placeholder.address = (host, port)
    return placeholder


def check_port_free(host: str, port: int) -> None:
    """Bind the address alone for a moment: it fails while anything holds the port, another
    server of this user's ``SO_REUSEPORT`` group included, which the processes would
    otherwise join silently and share its connections with."""
    with socket.socket(_family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise AddressInUse(
                f"{host}:{port} is already in use (another exhaust serve?); stop it, or "
                "choose another port with --port"
            ) from None


def spreads_connections() -> bool:
    """Whether this system balances a ``SO_REUSEPORT`` group's connections (Linux does;
    BSD and macOS give them all to one socket)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def serve_processes(
    processes: int, host: str, port: int, app: str = APP_FACTORY, *, factory: bool = True
) -> None:
    """Run ``processes`` server processes of ``app`` (an import string: uvicorn imports it in
    each process) on ``host:port`` under uvicorn's supervisor until it is stopped (SIGINT,
    SIGTERM)."""
    from uvicorn.supervisors import Multiprocess

    options: dict[str, Any] = {"factory": factory, "workers": processes, "log_level": "warning"}
    if not spreads_connections():
        uvicorn.run(app, host=host, port=port, **options)
        return
    check_port_free(host, port)
    config = uvicorn.Config(app, host=host, port=port, **options)
    Multiprocess(config, sockets=[reuse_port_address(host, port)]).run()
