"""State of the sandbox: one JSON file plus raw-MIME blobs under var/sandbox, behind a lock.

The lock is an flock on ``state.lock`` (shared by the server and the command-line tools)
plus a process-wide RLock, so threads of the server also take turns.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

DEFAULT_SETTINGS: dict = {
    # OAuth clients: {client_id: {"client_secret": str|None, "redirect_uris": [str]}}.
    # With auto_register_clients, an unknown client_id is registered on first use with the
    # redirect_uri it presents, and its secret is learnt at its first token request.
    "clients": {},
    "auto_register_clients": True,
    "require_pkce": False,
    "access_token_ttl": 3599,
    "code_ttl": 600,
    # Pub/Sub topics Gmail may publish to: {topic: {subscription, push_endpoint,
    # audience, service_account}}. An empty push_endpoint keeps notifications undelivered.
    "topics": {},
    "auto_create_topics": True,
    "default_push": {
        "push_endpoint": "",
        "audience": "",  # empty = the push endpoint URL, as Pub/Sub does
        "service_account": "gmail-push@sandbox-project.iam.gserviceaccount.com",
    },
    "push_retry_min_seconds": 1.0,  # Pub/Sub's default retry policy is 10 s .. 600 s
    "push_retry_max_seconds": 60.0,
    "push_ack_deadline_seconds": 10.0,
    "push_max_attempts": 50,
    "reorder_hold_seconds": 1.0,
    "history_retention": 1000,  # history records kept per mailbox; older cursors get 404
    "user_quota_per_minute": 15000,
    "watch_days": 7,
    "deliver_locally": True,  # mail sent to another sandbox mailbox lands in its INBOX
    # Addresses the account picker offers first (e.g. the demo's mailbox), existing or not.
    "suggested_accounts": [],
    # Microsoft (sandbox/microsoft/identity.py): directory tenants, by name, and whether
    # their users may consent to an app themselves; app registrations {client_id:
    # {"client_secret", "redirect_uris", "secret_expired"}}.
    "ms_tenants": {"contoso": {"user_consent": True},
                   "fabrikam": {"user_consent": False}},
    "ms_apps": {},
}


def var_dir() -> Path:
    return Path(os.environ.get("HELPDESK_VAR_DIR", BASE_DIR / "var")) / "sandbox"


def empty_state() -> dict:
    return {
        "mailboxes": {},  # email -> mailbox dict
        "codes": {},
        "access_tokens": {},
        "refresh_tokens": {},
        "grants": {},  # "client_id email" -> {"scopes": [...], "offline": bool}
        "faults": [],
        "push_queue": [],  # notifications waiting for the delivery thread
        "pushes": [],  # delivery log
        "next_fault_id": 1,
        "counter": 0,
    }


class Store:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else var_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "raw").mkdir(exist_ok=True)
        self.state_path = self.root / "state.json"
        self.settings_path = self.root / "settings.json"
        self.lock_path = self.root / "state.lock"
        self._tlock = threading.RLock()
        self._local = threading.local()
        if not self.settings_path.exists():
            self._write_json(self.settings_path, DEFAULT_SETTINGS)

    # -- low level -------------------------------------------------------------------------
    @staticmethod
    def _write_json(path: Path, data) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _locked(self):
        with self._tlock:
            depth = getattr(self._local, "depth", 0)
            if depth:
                self._local.depth += 1
                try:
                    yield
                finally:
                    self._local.depth -= 1
                return
            with open(self.lock_path, "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                self._local.depth = 1
                try:
                    yield
                finally:
                    self._local.depth = 0
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def _load_state(self) -> dict:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            data = empty_state()
        for key, value in empty_state().items():
            data.setdefault(key, value)
        return data

    @contextlib.contextmanager
    def transaction(self):
        """Load the state, yield it for changes, write it back atomically."""
        with self._locked():
            current = getattr(self._local, "state", None)
            if current is not None:  # nested: share the outer transaction
                yield current
                return
            state = self._load_state()
            self._local.state = state
            try:
                yield state
                self._write_json(self.state_path, state)
            finally:
                self._local.state = None

    def read(self) -> dict:
        with self._locked():
            current = getattr(self._local, "state", None)
            return copy.deepcopy(current) if current is not None else self._load_state()

    def settings(self) -> dict:
        try:
            data = json.loads(self.settings_path.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        merged = copy.deepcopy(DEFAULT_SETTINGS)
        merged.update(data)
        return merged

    def update_settings(self, changes: dict) -> dict:
        with self._locked():
            data = self.settings()
            for key, value in changes.items():
                if isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key] = {**data[key], **value}
                else:
                    data[key] = value
            self._write_json(self.settings_path, data)
            return data

    def reset(self, settings: bool = False) -> None:
        with self._locked():
            self._write_json(self.state_path, empty_state())
            for blob in (self.root / "raw").glob("*.eml"):
                blob.unlink()
            if settings:
                self._write_json(self.settings_path, DEFAULT_SETTINGS)

    # -- blobs -----------------------------------------------------------------------------
    def put_raw(self, raw: bytes) -> str:
        digest = hashlib.sha256(raw).hexdigest()
        path = self.root / "raw" / f"{digest}.eml"
        if not path.exists():
            path.write_bytes(raw)
        return digest

    def get_raw(self, digest: str) -> bytes:
        return (self.root / "raw" / f"{digest}.eml").read_bytes()

    # -- ids -------------------------------------------------------------------------------
    @staticmethod
    def new_gmail_id(state: dict) -> str:
        """A 16-digit hex id that grows with time, like Gmail's message ids."""
        state["counter"] = (state.get("counter", 0) + 1) % 0x100000
        ms = int(time.time() * 1000)
        return format(((ms << 20) | state["counter"]) & 0xFFFFFFFFFFFFFFFF, "016x")

    @staticmethod
    def token(prefix: str) -> str:
        return prefix + secrets.token_urlsafe(32)
