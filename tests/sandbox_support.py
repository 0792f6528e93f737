"""The Google sandbox for tests: started as a real subprocess on a free port (state in a tmp
var dir), plus OAuth helpers. Fixtures are imported by tests/conftest.py for every test
folder."""

from __future__ import annotations

import base64
import hashlib
import html.parser
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
CLIENT_ID = "helpdesk-test.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-test-secret"
REDIRECT_URI = "http://127.0.0.1:8000/channels/email/google/callback/"
SCOPES = ["https://www.googleapis.com/auth/gmail.readonly",
          "https://www.googleapis.com/auth/gmail.send"]


@pytest.fixture(scope="session")
def sandbox_var(tmp_path_factory):
    return tmp_path_factory.mktemp("var")


@pytest.fixture(scope="session")
def sandbox_server(sandbox_var):
    """The running sandbox's server.json: ``url`` (http), ``https_url`` and ``ca_file``
    (the CA its TLS certificate is signed by)."""
    env = {**os.environ, "HELPDESK_VAR_DIR": str(sandbox_var)}
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    info = sandbox_var / "sandbox" / "server.json"
    deadline = time.time() + 20
    while not info.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("sandbox did not start: " + (proc.stdout.read() if proc.stdout else ""))
        time.sleep(0.05)
    yield json.loads(info.read_text())
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def sandbox_url(sandbox_server):
    return sandbox_server["url"]


@pytest.fixture(scope="session")
def sandbox_https_url(sandbox_server):
    return sandbox_server["https_url"]


@pytest.fixture(scope="session")
def sandbox_ca_file(sandbox_server):
    return sandbox_server["ca_file"]


@pytest.fixture
def sandbox(sandbox_url):
    """A clean sandbox for each test, with the test client registered."""
    requests.post(sandbox_url + "/_sandbox/reset", json={"settings": True}, timeout=5)
    requests.post(sandbox_url + "/_sandbox/clients", json={
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "redirect_uris": [REDIRECT_URI]}, timeout=5).raise_for_status()
    requests.post(sandbox_url + "/_sandbox/settings", json={
        "push_retry_min_seconds": 0.2, "push_retry_max_seconds": 1.0,
        "reorder_hold_seconds": 0.5}, timeout=5).raise_for_status()
    return sandbox_url


class FormParser(html.parser.HTMLParser):
    """Collects forms: action, method and (name, value) of inputs and buttons."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": a.get("method", "get"),
                               "fields": [], "buttons": []})
        elif tag == "input" and self.forms and a.get("name"):
            if a.get("type") == "checkbox" and "checked" not in a:
                return
            self.forms[-1]["fields"].append((a["name"], a.get("value", "")))
        elif tag == "button" and self.forms and a.get("name"):
            self.forms[-1]["buttons"].append((a["name"], a.get("value", "")))


def forms_of(page: str) -> list[dict]:
    parser = FormParser()
    parser.feed(page)
    return parser.forms


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(url: str, email: str, *, decision: str = "allow", scopes=None, state="st-123",
              challenge: str | None = None, extra: dict | None = None) -> dict:
    """Drive the consent pages like a browser; return the redirect's query parameters."""
    params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code",
              "scope": " ".join(scopes or SCOPES), "state": state, "access_type": "offline",
              "prompt": "consent", "include_granted_scopes": "true", **(extra or {})}
    if challenge:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    session = requests.Session()
    page = session.get(url + "/o/oauth2/v2/auth", params=params, timeout=5)
    assert page.status_code == 200, page.text
    picker = [f for f in forms_of(page.text) if not f["buttons"]][0]  # "use another account"
    fields = [(k, v) for k, v in picker["fields"] if k != "email"] + [("email", email)]
    consent = session.post(url + "/o/oauth2/v2/auth", data=fields, timeout=5)
    assert consent.status_code == 200, consent.text
    form = forms_of(consent.text)[0]
    answer = session.post(url + "/o/oauth2/v2/auth",
                          data=form["fields"] + [("decision", decision)],
                          allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI)
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def exchange(url: str, code: str, verifier: str | None, basic: bool = True):
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    if verifier:
        data["code_verifier"] = verifier
    if basic:
        return requests.post(url + "/token", data=data, auth=(CLIENT_ID, CLIENT_SECRET),
                             timeout=5)
    data.update(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    return requests.post(url + "/token", data=data, timeout=5)


@pytest.fixture
def connect(sandbox):
    """OAuth-connect a mailbox; return (tokens, google-auth Credentials, gmail service)."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build

    def _connect(email: str = "support@acme.test"):
        verifier, challenge = pkce_pair()
        redirect = authorize(sandbox, email, challenge=challenge)
        tokens = exchange(sandbox, redirect["code"], verifier).json()
        creds = Credentials(tokens["access_token"], refresh_token=tokens["refresh_token"],
                            token_uri=sandbox + "/token", client_id=CLIENT_ID,
                            client_secret=CLIENT_SECRET, scopes=SCOPES)
        service = build("gmail", "v1", credentials=creds, static_discovery=True,
                        client_options={"api_endpoint": sandbox + "/"})
        return tokens, creds, service

    return _connect


def consent(auth_url: str, email: str, *, decision: str = "allow") -> str:
    """Drive the sandbox's account picker and consent page for an authorization URL our
    app built, like a browser would; return the redirect Location (not fetched)."""
    session = requests.Session()
    page = session.get(auth_url, timeout=5)
    assert page.status_code == 200, page.text
    base = auth_url.split("?", 1)[0]
    picker = [f for f in forms_of(page.text) if not f["buttons"]]
    if picker:  # no login_hint: "use another account" with the address
        fields = [(k, v) for k, v in picker[0]["fields"] if k != "email"] + [("email", email)]
        page = session.post(base, data=fields, timeout=5)
        assert page.status_code == 200, page.text
    form = forms_of(page.text)[0]
    answer = session.post(base, data=form["fields"] + [("decision", decision)],
                          allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


class PushCatcher:
    """A local HTTP endpoint standing in for our public webhook URL. It records each push
    Pub/Sub makes (``headers``, ``auth``, ``raw`` body, JSON ``body``, and the ``status`` it
    answered: the next of ``statuses`` a test queued, else 204) so a test can inspect them
    or replay them into the Django test client."""

    def __init__(self, path: str = "/webhooks/google/pubsub/"):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[dict] = []
        self.statuses: list[int] = []
        self._arrived = threading.Condition()
        self._taken = 0
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with catcher._arrived:
                    status = catcher.statuses.pop(0) if catcher.statuses else 204
                    catcher.received.append({
                        "headers": dict(self.headers), "raw": raw, "status": status,
                        "auth": self.headers.get("Authorization", ""),
                        "body": json.loads(raw) if raw else None})
                    catcher._arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        """Every push so far, once at least ``count`` have arrived."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.received) >= count, timeout)
            assert arrived, f"{count} pushes expected, {len(self.received)} arrived"
            return list(self.received)

    def next(self, timeout: float = 10.0) -> tuple[dict, bytes]:
        """The oldest push not taken yet, as (headers, raw body)."""
        push = self.wait_for(self._taken + 1, timeout)[self._taken]
        self._taken += 1
        return push["headers"], push["raw"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def use_sandbox_google(settings, sandbox: str, *, public_base_url: str, topic: str,
                       push_endpoint: str, audience: str, service_account: str) -> None:
    """Point the Google settings at the sandbox, register our OAuth client with its
    callback under ``public_base_url``, and have ``topic`` push to ``push_endpoint``."""
    settings.GOOGLE_CLIENT_ID, settings.GOOGLE_CLIENT_SECRET = CLIENT_ID, CLIENT_SECRET
    settings.GOOGLE_AUTH_URI = sandbox + "/o/oauth2/v2/auth"
    settings.GOOGLE_TOKEN_URI = sandbox + "/token"
    settings.GOOGLE_REVOKE_URI = sandbox + "/revoke"
    settings.GOOGLE_CERTS_URL = sandbox + "/oauth2/v1/certs"
    settings.GMAIL_API_ENDPOINT = sandbox + "/"
    settings.GMAIL_PUBSUB_TOPIC = topic
    settings.PUBSUB_AUDIENCE, settings.PUBSUB_SERVICE_ACCOUNT = audience, service_account
    settings.PUBLIC_BASE_URL = public_base_url
    requests.post(sandbox + "/_sandbox/clients", json={
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        "redirect_uris": [public_base_url + "/oauth/gmail/callback/"]}, timeout=5)
    requests.post(sandbox + "/_sandbox/settings", json={"topics": {topic: {
        "push_endpoint": push_endpoint, "audience": audience,
        "service_account": service_account}}}, timeout=5).raise_for_status()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own (the binary ``helpdesk.embedded`` runs) on a fixed
    free port, that the test stops and starts again: a Redis outage or restart that the
    session's Redis, shared by the rest of the suite, never sees. Like the embedded one it
    keeps nothing on disk, so a restart loses every key (queued tasks, locks, marks)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        from helpdesk.embedded import _redis_binary

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def use_redis(settings, url: str) -> None:
    """Point this process's cache, coordination client and Celery producer at ``url``
    (undone by ``use_redis(settings, settings.REDIS_URL)`` before the settings fixture
    restores the rest)."""
    from helpdesk.celery import app
    from helpdesk.coordination import redis_client

    settings.REDIS_URL = url
    settings.CACHES = {**settings.CACHES,
                       "default": {**settings.CACHES["default"], "LOCATION": url}}
    redis_client.cache_clear()
    app.conf.broker_url = url
    # Dropped, not closed: kombu keeps one pool per URL and hands it out again.
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def own_redis(settings, tmp_path):
    """A ``RedisServer`` of this test's own, running, with this process pointed at it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    shared = settings.REDIS_URL
    use_redis(settings, server.url)
    yield server
    use_redis(settings, shared)
    server.stop()


# ------------------------------------------------------------------- Microsoft (identity)
MS_CLIENT_ID = "6731de76-14a6-49ae-97bc-6eba6914391e"
MS_CLIENT_SECRET = "sbx8Q~test-client-secret"
MS_REDIRECT_URI = "http://127.0.0.1:8000/oauth/microsoft/callback/"
MS_SCOPES = ["Mail.Read", "Mail.Send", "User.Read"]


def ms_http_client(ca_file: str) -> requests.Session:
    """What msal and Graph calls use against the sandbox: its CA trusted through
    ``verify``, the environment's CA variables ignored (PROVIDERS.md 7.4 G6)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_file
    return session


def ms_app(https_url: str, ca_file: str, *, tenant: str = "organizations", cache=None,
           secret: str = MS_CLIENT_SECRET):
    """A real msal ConfidentialClientApplication pointed at the sandbox over TLS (a new
    one per call: msal answers an identical failed token request from its own cache)."""
    import msal

    return msal.ConfidentialClientApplication(
        MS_CLIENT_ID, client_credential=secret, authority=f"{https_url}/{tenant}",
        instance_discovery=False, http_client=ms_http_client(ca_file), token_cache=cache)


def ms_mailbox(sandbox_url: str, address: str, tenant: str = "contoso") -> dict:
    answer = requests.post(sandbox_url + "/_sandbox/mailboxes", json={
        "email": address, "provider": "microsoft", "tenant": tenant}, timeout=5)
    answer.raise_for_status()
    return answer.json()


def ms_register(sandbox_url: str, redirect_uris=(MS_REDIRECT_URI,), **extra) -> None:
    requests.post(sandbox_url + "/_sandbox/microsoft/apps", json={
        "client_id": MS_CLIENT_ID, "client_secret": MS_CLIENT_SECRET,
        "redirect_uris": list(redirect_uris), **extra}, timeout=5).raise_for_status()


def ms_sign_in(auth_uri: str, email: str, *, decision: str = "accept"):
    """Drive the sandbox's Microsoft sign-in pages for ``auth_uri`` like a browser: pick
    (or type) the account, then press ``decision`` on the consent ("accept" / "deny") or
    "Need admin approval" ("return") page. Returns the redirect's query parameters, or the
    page (a requests Response) when there is no redirect."""
    session = requests.Session()
    page = session.get(auth_uri, allow_redirects=False, timeout=5)
    base = auth_uri.split("?", 1)[0]
    for _ in range(3):
        if page.status_code == 302:
            location = page.headers["Location"]
            return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
        if page.status_code != 200:
            return page
        forms = forms_of(page.text)
        typed = [f for f in forms if not f["buttons"] and any(k == "step" for k, _ in f["fields"])]
        decide = [f for f in forms if any(k == "decision" for k, _ in f["buttons"])]
        if decide:
            form = decide[0]
            if ("decision", decision) not in form["buttons"]:
                return page
            data = form["fields"] + [("decision", decision)]
        elif typed:
            data = [(k, v) for k, v in typed[0]["fields"] if k != "email"] + [("email", email)]
        else:
            return page
        page = session.post(base, data=data, allow_redirects=False, timeout=5)
    return page


def use_sandbox_microsoft(settings, sandbox: str, https_url: str, ca_file: str, *,
                          public_base_url: str = "http://testserver", tenant="organizations",
                          **app) -> None:
    """Point the Microsoft settings at the sandbox (msal over its TLS listener, trusting
    its CA) and register our app with its callback under ``public_base_url``."""
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = MS_CLIENT_ID, MS_CLIENT_SECRET
    settings.MS_AUTHORITY = f"{https_url}/{tenant}"
    settings.MS_SIGN_IN_ORIGIN = sandbox
    settings.MS_CA_BUNDLE = ca_file
    settings.GRAPH_BASE_URL = https_url + "/v1.0"
    settings.PUBLIC_BASE_URL = public_base_url
    ms_register(sandbox, [public_base_url + "/oauth/microsoft/callback/"], **app)
