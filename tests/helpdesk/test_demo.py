"""The demo seed and the demo itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
import redis
from django.core.management import call_command

from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.tasks import redrive_pending_replies
from helpdesk.demo import ADMIN_EMAIL, AGENT_EMAIL, DEMO_MAILBOX, demo_report
from helpdesk.models import User
from helpdesk.tenancy import unscoped
from tickets.models import (
    DeliveryStatus,
    Message,
    MessageKind,
    Notification,
    NotificationKind,
    Ticket,
)


def _snapshot() -> dict:
    """Everything the seed writes that a second run could duplicate or change."""
    with unscoped():
        return {
            "messages": sorted(Message.objects.values_list(
                "ticket__number", "kind", "delivery_status", "to_addresses", "body_text")),
            "notifications": sorted(Notification.objects.values_list(
                "user__email", "ticket__number", "kind")),
            "mailboxes": list(EmailConnection.objects.values_list("address", "status")),
        }


@pytest.mark.django_db
def test_seed_twice_creates_what_it_says_once(client, capsys):
    call_command("seed_demo")
    first, written = demo_report(), _snapshot()
    call_command("seed_demo")
    assert demo_report() == first
    assert _snapshot() == written
    assert (first.tenants, first.users, first.teams, first.flows) == (2, 2, 2, 1)
    assert first.contacts == 7 and first.tickets == 8 and first.messages == 15
    assert first.mailboxes == 1
    assert "8 tickets" in capsys.readouterr().out

    client.force_login(User.objects.get(email=AGENT_EMAIL))
    listing = client.get("/acme/tickets/").content.decode()
    assert "Charged twice for the November invoice" in listing
    ticket = client.get("/acme/tickets/1/").content.decode()
    assert "my card was charged twice" in ticket and "msg note" in ticket
    assert client.get("/globex/tickets/").status_code == 404  # the agent is not in Globex


@pytest.mark.django_db
def test_seeded_replies_are_settled_with_recipients_and_notices_are_not_repeated():
    """No seeded reply waits for a send that never comes: one the customer answered is
    Delivered, the others went through the send path and Failed on the disconnected demo
    mailbox, each addressed to the ticket's customer, so the redrive sweep finds nothing.
    Nobody is told twice about the same thing."""
    call_command("seed_demo")
    with unscoped():
        replies = list(Message.objects.filter(kind=MessageKind.OUTBOUND)
                       .select_related("ticket__contact", "email_connection"))
        assert len(replies) == 4
        for reply in replies:
            assert reply.delivery_status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)
            assert reply.to_addresses == [reply.ticket.contact.email]
            assert reply.email_connection.address == DEMO_MAILBOX
            assert reply.message_id_header
            # One the customer answered went out while the mailbox was connected; the
            # others Failed on it now that it is disconnected.
            answered = Message.objects.filter(ticket=reply.ticket, kind=MessageKind.INBOUND,
                                              created_at__gt=reply.created_at).exists()
            assert reply.delivery_status == (DeliveryStatus.DELIVERED if answered
                                             else DeliveryStatus.FAILED)
            if reply.delivery_status == DeliveryStatus.FAILED:
                assert "reconnect" in reply.delivery_error
        assert {r.delivery_status for r in replies} == {DeliveryStatus.DELIVERED,
                                                        DeliveryStatus.FAILED}
        assert EmailConnection.objects.get(address=DEMO_MAILBOX).status == \
            ConnectionStatus.DISCONNECTED

        notices = list(Notification.objects.values_list("user_id", "ticket_id", "kind"))
        assert notices, "the seeded team and assignee tickets tell somebody"
        assert [n for n, count in Counter(notices).items() if count > 1] == []
        # "Customer replied" only where the customer wrote again after opening the ticket.
        inbound = Counter(Message.objects.filter(kind=MessageKind.INBOUND)
                          .values_list("ticket_id", flat=True))
        replied = {t for _, t, kind in notices if kind == NotificationKind.CUSTOMER_REPLY}
        assigned = set(Ticket.objects.filter(assignee__isnull=False).values_list("pk", flat=True))
        assert replied == {t for t, count in inbound.items() if count > 1 and t in assigned}
        assert replied, "a seeded customer wrote again on an assigned ticket"
    assert redrive_pending_replies(older_than_minutes=0) == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_rundemo_check_brings_up_web_worker_and_beat(django_db_blocker, settings, tmp_path):
    """`make demo`'s command end to end: migrate, seed, gunicorn + worker + beat, one Ready
    line once they answer, then a sign-in, the ticket list, a ticket and a task through the
    worker, a Gmail mailbox connected through the sandbox, the demo mailbox reconnected with
    a seeded reply retried and answered by the customer, then a clean stop.
    It runs against the test database so that the developer's demo data is untouched."""
    from django.db import connection

    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    url = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    # A var dir and a Redis database of its own: the sandbox's mailboxes stay out of the
    # developer's demo sandbox, and a demo running from the same checkout (same Redis
    # server) does not take this check's tasks off the queues. DEBUG=true in the
    # environment: the demo turns it off all the same.
    (tmp_path / "var" / "run").mkdir(parents=True)
    redis_url = settings.REDIS_URL.rsplit("/", 1)[0] + "/1"
    # Emptied first: sync-pending marks left there by an earlier run with the same
    # connection ids would coalesce this run's syncs away for their 10 minutes.
    redis.Redis.from_url(redis_url).flushdb()
    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=redis_url, DJANGO_ENV="dev",
               DEBUG="true", HELPDESK_VAR_DIR=str(tmp_path / "var"))
    result = subprocess.run(
        [sys.executable, "manage.py", "rundemo", "--check", "--port", "8790"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo check passed" in result.stdout
    assert "web: login, ticket list, ticket view and a plain 404 OK" in result.stdout
    assert "gmail: connect, route to a team, sandbox email -> ticket OK" in result.stdout
    assert "microsoft: connect" in result.stdout
    assert ("demo mailbox: support@acme.example suggested and reconnected, a seeded reply "
            "retried and delivered, the customer's answer threaded OK") in result.stdout
    # With Dovecot installed (make test installs it), the IMAP path too.
    assert "imap: Test connection, save, email -> ticket OK" in result.stdout
    ready = [line for line in result.stdout.splitlines() if line.startswith("Ready: ")]
    assert len(ready) == 1 and "http://127.0.0.1:8790/" in ready[0]
    assert "admin@acme.example" in ready[0] and "demo-pass-2026" in ready[0]
    assert result.stdout.index("worker: ping") > result.stdout.index("Ready: ")
    assert "demo stopped" in result.stdout
    assert not (tmp_path / "var" / "sandbox" / "server.json").exists()  # the sandbox stopped


@pytest.mark.django_db
def test_invitation_flash_says_where_the_demo_mail_went(client, settings, capsys, tmp_path,
                                                       django_capture_on_commit_callbacks):
    """The demo's mail backend is the console: the flash says the invitation is in the
    server's output, and it is there."""
    call_command("seed_demo")
    settings.EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
    client.force_login(User.objects.get(email=ADMIN_EMAIL))
    capsys.readouterr()
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post("/acme/settings/members/", {"email": "nia@example.com",
                                                        "role": "agent"}, follow=True)
    assert ("Invitation for nia@example.com created; this server prints email instead of "
            "sending it: the invitation, with its link, is in the output of the terminal "
            "where the server runs.") in page.content.decode()
    printed = capsys.readouterr().out
    assert "To: nia@example.com" in printed and "/accounts/invite/" in printed

    # Mail written to files: the flash names the folder, and the invitation is in it.
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    settings.EMAIL_FILE_PATH = str(tmp_path / "mail")
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post("/acme/settings/members/", {"email": "omar@example.com",
                                                        "role": "agent"}, follow=True)
    assert (f"the invitation, with its link, is in {tmp_path / 'mail'}."
            in page.content.decode())
    [written] = (tmp_path / "mail").iterdir()
    assert "To: omar@example.com" in written.read_text()


@pytest.mark.django_db
def test_client_errors_log_one_line_without_traceback(client, caplog):
    """gunicorn's access log has a line for every request: Django adds none for a 404 or
    a 403, and a security event's one line carries no traceback."""
    import io
    import logging

    call_command("seed_demo")
    client.force_login(User.objects.get(email=AGENT_EMAIL))
    with caplog.at_level(logging.INFO):
        assert client.get("/acme/tickets/9999/").status_code == 404
        assert client.get("/acme/settings/email/").status_code == 403  # admins only
        assert client.get("/acme/tickets/", headers={"host": "evil.example"}).status_code == 400
    django_records = [r for r in caplog.records if r.name.startswith("django")]
    assert [r.name for r in django_records] == ["django.security.DisallowedHost"]

    console = next(h for h in logging.getLogger().handlers
                   if isinstance(h, logging.StreamHandler) and h.filters)
    out = io.StringIO()
    stream, console.stream = console.stream, out
    try:
        console.handle(django_records[0])
    finally:
        console.stream = stream
    assert out.getvalue().count("\n") == 1 and "Traceback" not in out.getvalue()
    assert "Invalid HTTP_HOST header: 'evil.example'" in out.getvalue()
    assert len(logging.getLogger("django").handlers) == 0  # no second console handler
