"""Pub/Sub push delivery: wrapped body + OIDC JWT, at-least-once with retries and backoff.

Notifications are queued in the state (``push_queue``) by whoever adds a message (server
or command line); the server's delivery thread drains that queue.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import threading
import time
import urllib.error
import urllib.request

from .faults import consume_push_faults
from .keys import SigningKey
from .store import Store


def topic_config(settings: dict, topic: str) -> dict | None:
    conf = settings.get("topics", {}).get(topic)
    if conf is None:
        if not settings.get("auto_create_topics", True):
            return None
        conf = {}
    project = topic.split("/")[1] if topic.startswith("projects/") else "sandbox-project"
    name = topic.rsplit("/", 1)[-1]
    merged = {**settings.get("default_push", {}), **conf}
    merged.setdefault("subscription", f"projects/{project}/subscriptions/{name}-push")
    return merged


def _publish_time() -> str:
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def build_body(notification: dict, subscription: str, message_id: str) -> dict:
    data = json.dumps({"emailAddress": notification["emailAddress"],
                       "historyId": int(notification["historyId"])})
    publish_time = _publish_time()
    return {
        "message": {
            "data": base64.b64encode(data.encode()).decode("ascii"),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": publish_time,
            "publish_time": publish_time,
            "attributes": {},
        },
        "subscription": subscription,
    }


def oidc_token(key: SigningKey, audience: str, service_account: str) -> str:
    now = int(time.time())
    sub = str(int.from_bytes(service_account.encode()[:9], "big") % 10**21).rjust(21, "1")
    return key.sign_jwt({
        "aud": audience,
        "azp": sub,
        "email": service_account,
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": sub,
    })


class RetryingPusher(threading.Thread):
    """What the sandbox's push threads share (Pub/Sub here, Graph's change notifications
    in microsoft/graph.py): attempts due in memory, a reorder buffer, one POST per attempt
    logged in ``pushes``, and exponential backoff with jitter until acked or out of tries."""

    def __init__(self, store: Store, name: str):
        super().__init__(name=name, daemon=True)
        self.store = store
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.pending: list[dict] = []  # in-memory attempts: {"due", "job"}
        self.held: list[dict] = []  # reorder buffer
        self.held_since = 0.0

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _release_held(self) -> None:
        if not self.held:
            return
        hold = float(self.store.settings().get("reorder_hold_seconds", 1.0))
        if time.time() - self.held_since >= hold:
            for job in reversed(self.held):  # newest first
                self.pending.append({"due": time.time(), "job": job})
            self.held = []
            self.held_since = 0.0

    def _deliver_due(self) -> None:
        now = time.time()
        due = [p for p in self.pending if p["due"] <= now]
        self.pending = [p for p in self.pending if p["due"] > now]
        for item in due:
            self._attempt(item["job"])

    def _attempt(self, job: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _post(request: urllib.request.Request, timeout: float) -> int | str:
        """The HTTP status of one attempt, or what kept it from getting one."""
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections
            return f"error: {exc.__class__.__name__}"

    def _logged_or_retried(self, job: dict, entry: dict, settings: dict) -> None:
        """Log the attempt; unless acked or out of attempts, schedule the next one."""
        with self.store.transaction() as state:
            state["pushes"].append(entry)
            del state["pushes"][:-500]
        if entry["acked"] or job["attempts"] >= int(settings.get("push_max_attempts", 50)):
            return
        low = float(settings.get("push_retry_min_seconds", 1.0))
        high = float(settings.get("push_retry_max_seconds", 60.0))
        delay = min(high, low * (2 ** (job["attempts"] - 1))) * random.uniform(0.8, 1.2)
        self.pending.append({"due": time.time() + delay, "job": job})


class PushWorker(RetryingPusher):
    def __init__(self, store: Store, key: SigningKey):
        super().__init__(store, "sandbox-push")
        self.key = key

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._drain_queue()
                self._release_held()
                self._deliver_due()
            except Exception as exc:  # noqa: BLE001 - keep the thread alive
                print(f"sandbox push worker: {exc!r}", flush=True)
            self.wake.wait(0.1)
            self.wake.clear()

    def _drain_queue(self) -> None:
        if not self.store.read()["push_queue"]:
            return
        settings = self.store.settings()
        with self.store.transaction() as state:
            queued, state["push_queue"] = state["push_queue"], []
            for note in queued:
                conf = topic_config(settings, note["topic"])
                message_id = str(random.randint(10**15, 10**16 - 1))
                if not conf or not conf.get("push_endpoint"):
                    state["pushes"].append({"messageId": message_id, "status": "undeliverable",
                                            "emailAddress": note["emailAddress"],
                                            "historyId": str(note["historyId"]),
                                            "topic": note["topic"]})
                    continue
                job = {
                    "messageId": message_id,
                    "endpoint": conf["push_endpoint"],
                    "audience": conf.get("audience") or conf["push_endpoint"],
                    "service_account": conf.get("service_account", ""),
                    "subscription": conf["subscription"],
                    "notification": note,
                    "attempts": 0,
                }
                duplicate, reorder = consume_push_faults(state, note["emailAddress"])
                copies = [job, dict(job)] if duplicate else [job]
                for copy_ in copies:
                    if reorder:
                        self.held.append(copy_)
                        self.held_since = self.held_since or time.time()
                    else:
                        self.pending.append({"due": time.time(), "job": copy_})

    def _attempt(self, job: dict) -> None:
        settings = self.store.settings()
        job["attempts"] += 1
        body = build_body(job["notification"], job["subscription"], job["messageId"])
        token = oidc_token(self.key, job["audience"], job["service_account"])
        request = urllib.request.Request(  # noqa: S310 - configured http(s) endpoint
            job["endpoint"], data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                     "User-Agent": "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)"},
        )
        status = self._post(request, float(settings.get("push_ack_deadline_seconds", 10)))
        acked = status in (102, 200, 201, 202, 204)
        entry = {
            "messageId": job["messageId"],
            "endpoint": job["endpoint"],
            "emailAddress": job["notification"]["emailAddress"],
            "historyId": str(job["notification"]["historyId"]),
            "attempt": job["attempts"],
            "status": status,
            "acked": acked,
            "at": time.time(),
        }
        self._logged_or_retried(job, entry, settings)
