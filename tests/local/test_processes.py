"""The local run's child processes, ports and HTTP helpers."""
import http.server
import socket
import sys
import threading
from typing import Any, Iterator

import pytest

from pipeline.local.processes import Child, LocalProcessError, http_json, port_is_free, wait_for_port
from pipeline.settings import LOCAL
from tests.helpers import free_port


@pytest.fixture
def json_server() -> Iterator[str]:
    """A loopback HTTP server answering GET / with a JSON object and GET /list with a list."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"answer": 42}' if self.path == "/" else b"[1, 2]"
            status = 404 if self.path == "/missing" else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer((LOCAL.loopback_host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOCAL.loopback_host}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_port_is_free_until_something_listens() -> None:
    port = free_port()
    assert port_is_free(LOCAL.loopback_host, port)

    with socket.socket() as listener:
        listener.bind((LOCAL.loopback_host, port))
        listener.listen()
        assert not port_is_free(LOCAL.loopback_host, port)


def test_http_json_returns_the_object_answered(json_server: str) -> None:
    assert http_json("GET", f"{json_server}/") == {"answer": 42}


@pytest.mark.parametrize("path, reason", [("/missing", "answered 404"), ("/list", "answered list, not a JSON object")])
def test_http_json_raises_naming_what_was_wrong(json_server: str, path: str, reason: str) -> None:
    with pytest.raises(LocalProcessError, match=reason):
        http_json("GET", f"{json_server}{path}")


def test_child_forwards_its_output_and_returns_its_exit_code(capsys: pytest.CaptureFixture) -> None:
    child = Child.start([sys.executable, "-c", "print('from the child'); raise SystemExit(3)"], "test child")

    assert child.wait_forwarding() == 3
    child.stop(5)
    assert "from the child" in capsys.readouterr().out


def test_stop_terminates_a_running_child() -> None:
    child = Child.start([sys.executable, "-c", "import time; time.sleep(60)"], "sleeper")
    child.forward_in_background()

    child.stop(10)

    assert child.process.returncode == -15


def test_wait_for_port_fails_naming_the_child_that_exited_first() -> None:
    child = Child.start([sys.executable, "-c", "raise SystemExit(2)"], "quitter")
    try:
        with pytest.raises(LocalProcessError, match="the quitter exited with code 2 before opening port"):
            wait_for_port(LOCAL.loopback_host, free_port(), child, timeout=30)
    finally:
        child.stop(5)
