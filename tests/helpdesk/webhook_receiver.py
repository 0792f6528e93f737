"""A real HTTP receiver for outgoing webhooks in tests: a threaded server on 127.0.0.1
that records every request and answers with the statuses it is scripted to give."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """``answers``: the statuses of the next requests, in order (then 204 for ever)."""

    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/helpdesk"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append(Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.answers.pop(0) if receiver.answers else 204
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.url + "/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, predicate, seconds: float = 60, proc=None, log=None) -> list[Received]:
        """Wait until ``predicate(self.received)`` holds (a worker delivers meanwhile)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc is not None:
                assert proc.poll() is None, log.read_text() if log else "worker died"
            if predicate(self.received):
                return self.received
            time.sleep(0.2)
        tail = log.read_text()[-4000:] if log else ""
        raise AssertionError(f"receiver got {[r.body for r in self.received]}\n{tail}")
