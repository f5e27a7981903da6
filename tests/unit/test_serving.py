"""The listening sockets of ``exhaust serve --processes N`` (serving.py), without a server."""

from __future__ import annotations

import pickle
import socket

import pytest

from data_exhaust.serving import AddressInUse, check_port_free, reuse_port_address
from tests.conftest import free_port


def test_each_process_unpickles_a_socket_of_its_own_on_the_address() -> None:
    """What uvicorn's supervisor sends each process it spawns: the placeholder is not bound;
    each copy that arrives is, with SO_REUSEPORT, so that all of them listen at once."""
    port = free_port()
    placeholder = reuse_port_address("127.0.0.1", port)
    with placeholder:
        assert placeholder.getsockname()[1] == 0  # the supervisor holds no port
        sent = pickle.dumps(placeholder)  # as multiprocessing sends it to a spawned process
        first, second = (pickle.loads(sent) for _ in range(2))  # noqa: S301 (our own bytes)
    with first, second:
        for sock in (first, second):
            assert sock.getsockname() == ("127.0.0.1", port)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            sock.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # one of the two accepts it


def test_a_port_held_by_anything_is_refused_with_how_to_fix_it() -> None:
    port = free_port()
    check_port_free("127.0.0.1", port)  # free: nothing raised, nothing kept
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        with pytest.raises(AddressInUse, match=rf"127\.0\.0\.1:{port} is already in use.*--port"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again once it is closed
