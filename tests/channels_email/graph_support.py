"""Microsoft Graph in tests: a catcher standing in for our public webhook URLs, and the
settings that point the provider at the sandbox's Graph side."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

NOTIFY_PATH = "/webhooks/microsoft/graph/"
LIFECYCLE_PATH = "/webhooks/microsoft/graph/lifecycle/"


class GraphCatcher:
    """A local HTTP endpoint at our two Graph webhook paths. The validation handshake
    Graph runs while a subscription is created is passed to our real webhook view (the
    Django test client, in the catcher's thread) and its answer relayed, so Graph sees
    exactly what our view answers; every notification is recorded (``path``, ``raw``,
    ``body``) and acknowledged 202, for the test to replay into our webhook when and as
    often as it wants (duplicates, reordering)."""

    def __init__(self):
        from django.test import Client

        self.received: list[dict] = []
        self.handshakes: list[dict] = []
        self._arrived = threading.Condition()
        self._taken = 0
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                split = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(split.query)
                if "validationToken" in query:
                    answer = Client().post(self.path, data=raw,
                                           content_type=self.headers.get("Content-Type",
                                                                         "text/plain"))
                    body = answer.content
                    with catcher._arrived:
                        catcher.handshakes.append({
                            "path": split.path, "token": query["validationToken"][0],
                            "status": answer.status_code,
                            "content_type": answer.get("Content-Type", ""), "body": body})
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.get("Content-Type", ""))
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                with catcher._arrived:
                    catcher.received.append({"path": split.path, "raw": raw,
                                             "body": json.loads(raw) if raw else None})
                    catcher._arrived.notify_all()
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def notification_url(self) -> str:
        return self.base + NOTIFY_PATH

    @property
    def lifecycle_url(self) -> str:
        return self.base + LIFECYCLE_PATH

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.received) >= count, timeout)
            assert arrived, f"{count} notifications expected, {len(self.received)} arrived"
            return list(self.received)

    def next(self, timeout: float = 10.0) -> dict:
        """The oldest notification POST not taken yet."""
        push = self.wait_for(self._taken + 1, timeout)[self._taken]
        self._taken += 1
        return push

    def items(self, count: int, timeout: float = 10.0) -> list[tuple[str, dict]]:
        """The next ``count`` notification items (path, item), however Graph batched them."""
        out: list[tuple[str, dict]] = []
        while len(out) < count:
            push = self.next(timeout)
            out += [(push["path"], item) for item in push["body"]["value"]]
        assert len(out) == count, out
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def post_items(client, path: str, items: list[dict]):
    """Our webhook answering ``items`` as Graph would POST them."""
    return client.post(path, data=json.dumps({"value": items}),
                       content_type="application/json")


def use_sandbox_graph(settings, sandbox: str, catcher: GraphCatcher,
                      graph_url: str = "") -> None:
    """Graph at ``graph_url`` (the sandbox's TLS URL; default ``sandbox``, its control
    URL), notifications to ``catcher``."""
    settings.GRAPH_BASE_URL = (graph_url or sandbox) + "/v1.0"
    settings.GRAPH_NOTIFICATION_URL = catcher.notification_url
    settings.GRAPH_LIFECYCLE_URL = catcher.lifecycle_url
    requests.post(sandbox + "/_sandbox/settings", json={"graph_send_per_minute": 30},
                  timeout=5).raise_for_status()


def graph_fault(sandbox: str, kind: str, **extra) -> None:
    target = {"slow_after_send": "send", "expired_delta": "delta"}.get(kind, "graph")
    requests.post(sandbox + "/_sandbox/faults", json={"kind": kind, "count": 1,
                                                      "target": target, **extra},
                  timeout=5).raise_for_status()


def lifecycle(sandbox: str, mailbox: str, event: str) -> list[str]:
    answer = requests.post(sandbox + "/_sandbox/graph/lifecycle",
                           json={"mailbox": mailbox, "event": event}, timeout=5)
    answer.raise_for_status()
    return answer.json()["subscriptions"]


def subscriptions(sandbox: str) -> list[dict]:
    return requests.get(sandbox + "/_sandbox/graph/subscriptions",
                        timeout=5).json()["subscriptions"]
