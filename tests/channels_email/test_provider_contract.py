"""The provider contract: the same scenarios against every enabled provider that signs in
(connect, push, sync, cursor expired, fetch, send, find sent, throttled, auth revoked,
disconnect), each through the sandbox over HTTP with the provider's real client libraries,
asserting what the channel does (rows, tickets, statuses), never the provider's internals.

A provider is driven by a ``Driver`` below (the only place a test names one): how its
sandbox is set up, how mail is delivered, how a push reaches our webhook and how faults
are injected. An enabled provider without a driver fails ``test_every_provider_is_covered``,
so a new provider cannot join the registry without passing the suite."""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from email.utils import make_msgid

import pytest
import requests

from channels_email import health, providers
from channels_email.models import ConnectionStatus, EmailConnection, InboundEmail
from channels_email.providers.base import Capability
from channels_email.sync import connection_sync, push_unmark
from channels_email.tasks import process_inbound_email, start_watch
from channels_email.tokens import authorized, ensure_fresh_token
from helpdesk.tenancy import tenant_scope, unscoped
from tests.mail_support import FIXED
from tests.sandbox_support import PushCatcher, consent, use_sandbox_google
from tickets.models import Ticket

pytestmark = pytest.mark.django_db(transaction=True)
MAILBOX = "support@acme.test"


class GmailDriver:
    """Gmail through the Google side of the sandbox; pushes are caught and replayed."""

    topic = "projects/helpdesk-contract/topics/gmail"
    audience = "https://helpdesk.test/webhooks/google/pubsub/"
    account = "pubsub-push@helpdesk-contract.iam.gserviceaccount.com"
    webhook = "/webhooks/google/pubsub/"

    def __init__(self, settings, sandbox, server):
        self.sandbox = sandbox
        self.catcher = PushCatcher()
        use_sandbox_google(settings, sandbox, public_base_url="http://testserver",
                           topic=self.topic, push_endpoint=self.catcher.url,
                           audience=self.audience, service_account=self.account)

    def close(self):
        self.catcher.close()

    def consent(self, location: str, address: str) -> str:
        return consent(location, address)

    def deliver(self, address: str, subject: str) -> None:
        requests.post(self.sandbox + "/_sandbox/deliver", json={
            "to": address, "from": "Maria Lopez <maria@customer.example>",
            "subject": subject, "body": "Hello, the printer is on fire."},
            timeout=5).raise_for_status()

    def next_push(self, client):
        """The next notification the sandbox sent, posted to our webhook."""
        headers, body = self.catcher.next()
        return client.post(self.webhook, data=body, content_type="application/json",
                           HTTP_AUTHORIZATION=headers["Authorization"])

    def watch_started(self, client) -> None:
        """A new watch notifies once (Gmail's first push): post it, as Pub/Sub would."""
        assert self.next_push(client).status_code == 204

    def fault(self, kind: str, **extra) -> None:
        name = {"cursor_expired": "expired_history", "throttled": "too_many_requests"}[kind]
        requests.post(self.sandbox + "/_sandbox/faults", json={"kind": name, "count": 1,
                                                               **extra},
                      timeout=5).raise_for_status()

    def revoke(self, address: str) -> None:
        requests.post(self.sandbox + "/_sandbox/revoke-all", json={"email": address},
                      timeout=5).raise_for_status()

    def sent_message_ids(self) -> list[str]:
        sent = requests.get(self.sandbox + "/_sandbox/sent", timeout=5).json()["messages"]
        return [str(message_from_bytes(base64.b64decode(m["raw"]), policy=default)
                    ["Message-ID"]).strip("<>") for m in sent]


class MicrosoftDriver:
    """Microsoft 365 through the sandbox: sign-in with msal against its identity side over
    TLS, Graph over TLS, change notifications caught (the validation handshake is passed
    to our real webhook view) and replayed."""

    def __init__(self, settings, sandbox, server):
        from tests.channels_email.graph_support import GraphCatcher, use_sandbox_graph
        from tests.sandbox_support import ms_mailbox, use_sandbox_microsoft

        self.sandbox = sandbox
        use_sandbox_microsoft(settings, sandbox, server["https_url"], server["ca_file"])
        self.catcher = GraphCatcher()
        use_sandbox_graph(settings, sandbox, self.catcher, server["https_url"])
        ms_mailbox(sandbox, MAILBOX, "contoso")

    def close(self):
        self.catcher.close()

    def consent(self, location: str, address: str) -> str:
        from tests.sandbox_support import ms_sign_in

        answer = ms_sign_in(location, address)
        assert isinstance(answer, dict), answer.text
        return "http://testserver/oauth/microsoft/callback/?" + urllib.parse.urlencode(answer)

    def deliver(self, address: str, subject: str) -> None:
        """Delivered, and, when the mailbox has a subscription, announced: Graph has
        POSTed its notification (to the catcher), as it does moments after the mail lands."""
        from tests.channels_email.graph_support import subscriptions

        watched = any(s["alive"] and s["mailbox"] == address
                      for s in subscriptions(self.sandbox))
        before = len(self.catcher.received)
        GmailDriver.deliver(self, address, subject)
        if watched:
            self.catcher.wait_for(before + 1)

    def next_push(self, client):
        push = self.catcher.next()
        return client.post(push["path"], data=push["raw"], content_type="application/json")

    def watch_started(self, client) -> None:
        """Graph sends nothing when a subscription starts (it validated both URLs)."""
        assert [h["status"] for h in self.catcher.handshakes][-2:] == [200, 200]

    def fault(self, kind: str, **extra) -> None:
        from tests.channels_email.graph_support import graph_fault

        graph_fault(self.sandbox, {"cursor_expired": "expired_delta",
                                   "throttled": "too_many_requests"}[kind], **extra)

    def revoke(self, address: str) -> None:
        GmailDriver.revoke(self, address)

    def sent_message_ids(self) -> list[str]:
        return GmailDriver.sent_message_ids(self)




@dataclass(frozen=True)
class Announced:
    """What an IDLE push amounts to for the scenarios: 204 when the server announced the
    new mail (EXISTS) on the held connection."""

    status_code: int


class ImapDriver:
    """IMAP/SMTP against the real Dovecot and submission server (tests/mail_support.py):
    connected through the admin form, pushes are IDLE's EXISTS on a held connection,
    the expired cursor is a UIDVALIDITY reset, revoking is a changed password."""

    throttles = False  # Dovecot has no throttling answer to inject

    def __init__(self, settings, server):
        self.server = server
        self.idle = None
        settings.IMAP_EXTRA_CA_FILE = str(server.ca_file)
        server.set_password(MAILBOX, FIXED[MAILBOX])  # a scenario changes it
        server.reset_user(MAILBOX)
        server.save_sent = False

    def close(self):
        if self.idle is not None:
            self.idle.close()

    def connect(self, client, tenant, address: str) -> EmailConnection:
        answer = client.post(f"/{tenant.slug}/settings/email/add/imap/", {
            "action": "save", "address": address, "imap_host": "127.0.0.1",
            "imap_security": "ssl", "imap_port": self.server.ports.imaps,
            "username": address, "password": FIXED[address],
            "smtp_security": "starttls", "smtp_port": self.server.ports.submission,
            "folder": "INBOX", "sent_folder": "Sent", "append_sent": "on",
            "after_import": "leave", "sync_start_at": "2000-01-01"})
        assert answer.status_code == 302, answer.content.decode()[:3000]
        with tenant_scope(tenant):
            conn = EmailConnection.objects.get(address=address)
            self.idle = providers.get(conn.provider).idle_open(conn)
        return conn

    def deliver(self, address: str, subject: str) -> None:
        mail = EmailMessage()
        mail["From"], mail["To"] = "Maria Lopez <maria@customer.example>", address
        mail["Subject"], mail["Message-ID"] = subject, make_msgid(domain="customer.example")
        mail.set_content("Hello, the printer is on fire.")
        self.server.deliver(mail.as_bytes(), address)

    def next_push(self, client):
        return Announced(204 if self.idle.wait(10) else 408)

    def fault(self, kind: str, **extra) -> None:
        assert kind == "cursor_expired"
        self.server.set_uidvalidity(MAILBOX, "INBOX", 4242)

    def revoke(self, address: str) -> None:
        self.server.set_password(address, "changed-by-the-user")

    def sent_message_ids(self) -> list[str]:
        return [str(message_from_bytes(raw, policy=default)["Message-ID"]).strip("<>")
                for _, _, raw in self.server.submitted]


DRIVERS = {"gmail": GmailDriver, "microsoft": MicrosoftDriver, "imap": ImapDriver}


def _signing_in() -> list[str]:
    return [p.name for p in providers.enabled()
            if {Capability.OAUTH_SIGN_IN, Capability.PASSWORD_SIGN_IN} & p.capabilities]


def _oauth() -> list[str]:
    return [p.name for p in providers.enabled() if Capability.OAUTH_SIGN_IN in p.capabilities]


def test_every_provider_is_covered():
    """Each enabled provider either signs in, by OAuth or with a password (and has a
    driver here, so the scenarios run for it), or only receives forwarded mail (nothing to
    sync, fetch or send: its inbound SMTP server is driven by test_forwarding.py), or
    declares no capability at all (manual: mail arrives as files)."""
    for provider in providers.enabled():
        if provider.capabilities and provider.capabilities != {Capability.FORWARDED}:
            assert {Capability.OAUTH_SIGN_IN, Capability.PASSWORD_SIGN_IN} \
                & provider.capabilities
            assert provider.name in DRIVERS, f"no contract driver for {provider.name}"
    assert _signing_in(), "no provider to run the contract against"


def _make_driver(request, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    if request.param == "imap":
        drv = ImapDriver(settings, request.getfixturevalue("mail_server"))
    else:
        drv = DRIVERS[request.param](settings, request.getfixturevalue("sandbox"),
                                     request.getfixturevalue("sandbox_server"))
    drv.name = request.param
    return drv


@pytest.fixture(params=_signing_in())
def driver(request, settings):
    drv = _make_driver(request, settings)
    yield drv
    drv.close()


@pytest.fixture(params=_oauth())
def oauth_driver(request, settings):
    """The scenarios of the OAuth sign-in itself (consent, the watch task)."""
    drv = _make_driver(request, settings)
    yield drv
    drv.close()


@pytest.fixture(params=[name for name in _signing_in()
                        if getattr(DRIVERS[name], "throttles", True)])
def throttling_driver(request, settings):
    """Providers whose throttling answer the sandbox can inject."""
    drv = _make_driver(request, settings)
    yield drv
    drv.close()


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def _connect(driver, client, tenant, address: str = MAILBOX) -> EmailConnection:
    if hasattr(driver, "connect"):  # a form rather than a consent screen
        return driver.connect(client, tenant, address)
    start = client.post(f"/{tenant.slug}/settings/email/connect/{driver.name}/")
    assert start.status_code == 302
    back = urllib.parse.urlsplit(driver.consent(start["Location"], address))
    assert client.get(back.path + "?" + back.query).status_code == 302
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get(address=address)
    start_watch.run(connection_id=conn.pk)  # what the worker does next
    driver.watch_started(client)
    with tenant_scope(tenant):
        conn.refresh_from_db()
    return conn


def _sync_and_ingest(connection_id: int):
    push_unmark(connection_id)
    result = connection_sync(connection_id)
    for pk in result.new_rows:
        process_inbound_email.run(inbound_email_id=pk)
    return result


def _titles(tenant) -> list[str]:
    with tenant_scope(tenant):
        return sorted(Ticket.objects.values_list("title", flat=True))


def test_connect_signs_in_and_the_watch_starts_in_a_task(oauth_driver, admin_client, tenant):
    driver = oauth_driver
    start = admin_client.post(f"/{tenant.slug}/settings/email/connect/{driver.name}/")
    back = urllib.parse.urlsplit(driver.consent(start["Location"], MAILBOX))
    assert admin_client.get(back.path + "?" + back.query).status_code == 302
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get(address=MAILBOX)
    # The callback stored the grant (it refreshes) but left the subscription to a task.
    assert conn.status == ConnectionStatus.ACTIVE and conn.credentials["access_token"]
    with tenant_scope(tenant):
        assert ensure_fresh_token(conn, rejected_token=conn.credentials["access_token"])
    assert conn.credentials["access_token"]
    assert conn.provider == driver.name and conn.subscription_expires_at is None
    assert start_watch.run(connection_id=conn.pk) is True
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.subscription_expires_at is not None and conn.cursor


def test_mail_arriving_before_the_watch_task_runs_is_not_skipped(oauth_driver, admin_client,
                                                                  tenant):
    """The callback records the mailbox's cursor itself: the first sync starts there even
    when the watch task has not run (or failed), and imports what arrived meanwhile."""
    driver = oauth_driver
    start = admin_client.post(f"/{tenant.slug}/settings/email/connect/{driver.name}/")
    back = urllib.parse.urlsplit(driver.consent(start["Location"], MAILBOX))
    assert admin_client.get(back.path + "?" + back.query).status_code == 302
    with tenant_scope(tenant):
        conn = EmailConnection.objects.get(address=MAILBOX)
    assert conn.cursor and conn.subscription_expires_at is None
    driver.deliver(MAILBOX, "Before the watch")
    assert len(_sync_and_ingest(conn.pk).new_rows) == 1
    assert _titles(tenant) == ["Before the watch"]


def test_push_reaches_the_webhook_and_becomes_a_ticket(driver, admin_client, tenant):
    conn = _connect(driver, admin_client, tenant)
    driver.deliver(MAILBOX, "Printer on fire")
    answer = driver.next_push(admin_client)
    assert 200 <= answer.status_code < 300
    assert len(_sync_and_ingest(conn.pk).new_rows) == 1
    assert _titles(tenant) == ["Printer on fire"]


def test_sync_ingests_each_message_once(driver, admin_client, tenant):
    conn = _connect(driver, admin_client, tenant)
    for n in range(3):
        driver.deliver(MAILBOX, f"Question {n}")
    for _ in range(3):
        _sync_and_ingest(conn.pk)
    with unscoped():
        assert InboundEmail.objects.count() == 3
    assert _titles(tenant) == ["Question 0", "Question 1", "Question 2"]


def test_an_expired_cursor_recovers_every_message(driver, admin_client, tenant):
    conn = _connect(driver, admin_client, tenant)
    driver.deliver(MAILBOX, "Lost one")
    driver.fault("cursor_expired")
    result = _sync_and_ingest(conn.pk)
    assert result.full_sync and len(result.new_rows) == 1
    assert _titles(tenant) == ["Lost one"]


def test_fetch_returns_the_raw_message(driver, admin_client, tenant):
    conn = _connect(driver, admin_client, tenant)
    driver.deliver(MAILBOX, "Raw please")
    push_unmark(conn.pk)
    [row_id] = connection_sync(conn.pk).new_rows
    with tenant_scope(tenant):
        row = InboundEmail.objects.get(pk=row_id)
        raw = authorized(conn).fetch_raw(row.provider_message_id)
    assert message_from_bytes(raw, policy=default)["Subject"] == "Raw please"


def _reply_mime(address: str) -> tuple[bytes, str]:
    mail = EmailMessage()
    message_id = make_msgid(domain="helpdesk.test")
    mail["From"], mail["To"] = address, "maria@customer.example"
    mail["Subject"], mail["Message-ID"] = "Re: Printer on fire", message_id
    mail.set_content("We are on it.")
    return mail.as_bytes(), message_id.strip("<>")


def test_send_then_find_sent_by_our_message_id(driver, admin_client, tenant):
    conn = _connect(driver, admin_client, tenant)
    raw, message_id = _reply_mime(MAILBOX)
    with tenant_scope(tenant):
        client = authorized(conn)
        assert client.find_sent(message_id) is None  # not sent yet
        sent = client.send(raw)
        found = client.find_sent(message_id)
    assert sent.provider_message_id and sent.message_id_header == message_id
    assert message_id in driver.sent_message_ids()
    assert found is not None and found.provider_message_id == sent.provider_message_id


def test_throttled_is_rate_limited_then_active(throttling_driver, admin_client, tenant):
    driver = throttling_driver
    conn = _connect(driver, admin_client, tenant)
    driver.deliver(MAILBOX, "Busy day")
    driver.fault("throttled", retry_after=30)
    with pytest.raises(providers.RateLimited):
        _sync_and_ingest(conn.pk)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.RATE_LIMITED and not health.may_call(conn)
        assert _sync_and_ingest(conn.pk).state == "skipped"  # honours Retry-After
        EmailConnection.objects.filter(pk=conn.pk).update(rate_limited_until=None)
    assert len(_sync_and_ingest(conn.pk).new_rows) == 1
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.ACTIVE and _titles(tenant) == ["Busy day"]


def test_a_revoked_grant_is_token_expired_and_nothing_is_fetched(driver, admin_client, tenant):
    conn = _connect(driver, admin_client, tenant)
    driver.revoke(MAILBOX)
    with tenant_scope(tenant):
        conn.credentials = dict(conn.credentials, expires_at="2000-01-01T00:00:00+00:00")
        conn.save(update_fields=["credentials"])
    driver.deliver(MAILBOX, "While revoked")
    with pytest.raises(providers.AuthError):
        _sync_and_ingest(conn.pk)
    with tenant_scope(tenant):
        conn.refresh_from_db()
        assert conn.status == ConnectionStatus.TOKEN_EXPIRED
    assert _sync_and_ingest(conn.pk).state == "skipped"
    assert _titles(tenant) == []


def test_disconnect_ends_the_subscription_and_later_pushes_change_nothing(
        driver, admin_client, tenant):
    conn = _connect(driver, admin_client, tenant)
    driver.deliver(MAILBOX, "After the end")
    answer = admin_client.post(f"/{tenant.slug}/settings/email/{conn.pk}/disconnect/")
    assert answer.status_code == 302
    with tenant_scope(tenant):
        conn.refresh_from_db()
    assert conn.status == ConnectionStatus.DISCONNECTED and conn.credentials is None
    assert conn.subscription_expires_at is None and not conn.subscription_secret
    assert 200 <= driver.next_push(admin_client).status_code < 300
    assert connection_sync(conn.pk).state == "skipped"
    with unscoped():
        assert InboundEmail.objects.count() == 0
