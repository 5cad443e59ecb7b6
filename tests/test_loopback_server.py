"""The loopback HTTP server that the protocol fakes build on."""

from __future__ import annotations

import gc
import socket
import sys
import threading
import time
from typing import Any

from turnloom.testing._httpserver import LoopbackServer


def test_answers_and_keeps_connections_alive() -> None:
    with LoopbackServer() as server, socket.create_connection((server.host, server.port)) as c:
        for _ in range(3):
            c.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            head = c.recv(4096)
            assert head.startswith(b"HTTP/1.1 404 Not Found")
    assert server.connections == 1


def test_stopping_while_clients_connect_leaves_no_socket_open() -> None:
    """A connection accepted as the server stops is closed with it. asyncio
    completes an accept a few loop steps after taking the socket; one completed
    after the listening socket closed used to leak, seen as a ResourceWarning."""
    leaked: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, leaked.append
    try:
        served = 0
        for _ in range(15):
            server = LoopbackServer().start()
            stop = threading.Event()

            def hammer() -> None:
                while not stop.is_set():
                    try:
                        with socket.create_connection((server.host, server.port), timeout=0.1) as c:
                            c.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                    except OSError:
                        pass

            clients = [threading.Thread(target=hammer) for _ in range(4)]
            for t in clients:
                t.start()
            time.sleep(0.05)
            server.stop()
            stop.set()
            for t in clients:
                t.join()
            served += server.connections
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert served > 100  # the clients did reach the server
    assert [str(u.exc_value) for u in leaked] == []
