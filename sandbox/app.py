"""The sandbox's WSGI application: the route tables of each provider's side (``google/``,
``microsoft/``) and of the control endpoints, composed into one dispatcher."""

from __future__ import annotations

import json
import threading
import time
from collections import deque

from . import google, microsoft
from .control import Control
from .delivery import build_message, customer_reply, deliver  # noqa: F401 - the tools' API
from .google.errors import google_error
from .http import Request, Response
from .keys import SigningKey
from .push import PushWorker
from .store import Store


class SandboxApp:
    def __init__(self, store: Store | None = None, start_worker: bool = True):
        self.store = store or Store()
        self.key = SigningKey(self.store.root)
        self.requests_log: deque = deque(maxlen=500)
        self.quota: dict[str, list] = {}
        self.quota_lock = threading.Lock()
        self.worker = PushWorker(self.store, self.key)
        # The listeners' own URLs (set by ``serve``): Microsoft's discovery names its token
        # endpoint on the https one and its browser pages on the plain one.
        self.http_url = ""
        self.https_url = ""
        if start_worker:
            self.worker.start()
        self.routes = google.routes(self) + microsoft.routes(self) + Control(self).routes()

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        request = Request(environ)
        self.requests_log.append({
            "method": request.method, "path": request.path,
            "query": environ.get("QUERY_STRING", ""),
            "authorization": request.header("Authorization")[:16],
            "content_type": request.content_type, "at": time.time(),
        })
        try:
            response = self.dispatch(request)
        except json.JSONDecodeError:
            response = google_error(400, "Invalid JSON payload received.", "parseError")
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            import traceback

            traceback.print_exc()
            response = google_error(500, f"Sandbox bug: {exc!r}", "backendError")
        return response.wsgi(start_response)

    def dispatch(self, request: Request) -> Response:
        allowed = False
        for method, pattern, handler in self.routes:
            match = pattern.match(request.path)
            if not match:
                continue
            allowed = True
            if method == request.method:
                return handler(request, *match.groups())
        if allowed:
            return google_error(405, "Method not allowed", "methodNotAllowed")
        if request.path == "/":
            return Response(302, b"", headers=[("Location", "/_sandbox/")])
        return google_error(404, "Requested entity was not found.", "notFound")
