"""The inbound pipeline on real PostgreSQL: threading, dedupe, filters, quarantine."""

from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.db import connection as db_connection
from django.db import transaction as db_transaction

from channels_email.ingest import inbound_email_ingest
from channels_email.mime import ParseLimits
from channels_email.models import EmailThreadRef, InboundEmail, RoutingMode
from channels_email.services import (
    connection_create_manual,
    inbound_email_receive,
    inbound_email_reset_for_reprocess,
)
from contacts.models import Contact
from helpdesk.models import AuditEvent
from helpdesk.tenancy import tenant_scope
from tests.channels_email.mail_builder import build_email
from tests.factories import MessageFactory, TeamFactory, TenantFactory, TicketFactory
from tickets.models import DeliveryStatus, Message, MessageKind, Ticket, TicketStatus

_counter = iter(range(1, 10**9))


@pytest.fixture
def conn(tenant):
    with tenant_scope(tenant):
        return connection_create_manual(tenant=tenant, address="Support@Company.example",
                                        display_name="Support")


def ingest(conn, raw: bytes, *, provider_id: str | None = None, thread_id: str = "",
           limits: ParseLimits | None = None):
    with tenant_scope(conn.tenant):
        row, _ = inbound_email_receive(connection=conn, raw=raw, provider_thread_id=thread_id,
                                       provider_message_id=provider_id or f"p{next(_counter)}")
    kwargs = {"limits": limits} if limits else {}
    return inbound_email_ingest(inbound_email_id=row.pk, **kwargs), row


def tickets(tenant):
    with tenant_scope(tenant):
        return list(Ticket.objects.order_by("number"))


@pytest.mark.django_db
def test_new_email_becomes_a_ticket_with_contact_and_attachments(conn, tenant):
    raw = build_email(subject="Invoice n° 42", cc="Bob <bob@customer.example>",
                      attachments=[("report.pdf", b"%PDF-1.4 data", "application/pdf")])
    outcome, row = ingest(conn, raw)
    assert outcome.state == "processed" and outcome.created_ticket
    with tenant_scope(tenant):
        ticket = Ticket.objects.get()
        assert ticket.number == outcome.ticket_number == 1
        assert ticket.title == "Invoice n° 42"
        assert "the printer is on fire" in ticket.description
        assert ticket.contact.email == "maria@customer.example"
        assert ticket.contact.name == "Maria Lopez" and ticket.contact.source == "email"
        assert ticket.cc_addresses == ["bob@customer.example"]
        assert ticket.source_channel == "email" and ticket.email_connection_id == conn.pk
        message = ticket.messages.get()
        assert message.kind == MessageKind.INBOUND and message.author_contact == ticket.contact
        attachment = message.attachments.get()
        assert attachment.filename == "report.pdf" and attachment.size == 13
        assert attachment.file.read() == b"%PDF-1.4 data"
        row.refresh_from_db()
        assert row.state == "processed" and row.ticket == ticket and row.message == message
        assert row.message_id_header and row.processed_at is not None


@pytest.mark.django_db
def test_replies_thread_by_in_reply_to_references_and_reopen(conn, tenant):
    first = build_email(message_id="<m1@customer.example>")
    ingest(conn, first)
    with tenant_scope(tenant):
        Ticket.objects.update(status=TicketStatus.CLOSED)
    by_irt = build_email(subject="Re: Printer on fire", message_id="<m2@customer.example>",
                         in_reply_to="<m1@customer.example>")
    by_refs = build_email(subject="Another subject", message_id="<m3@customer.example>",
                          references="<unknown@x> <m2@customer.example>")
    assert ingest(conn, by_irt)[0].created_ticket is False
    assert ingest(conn, by_refs)[0].created_ticket is False
    [ticket] = tickets(tenant)
    assert ticket.status == TicketStatus.OPEN
    with tenant_scope(tenant):
        assert ticket.messages.count() == 3


@pytest.mark.django_db
def test_provider_thread_id_threads_when_headers_do_not(conn, tenant):
    ingest(conn, build_email(), thread_id="gmail-thread-1")
    outcome, _ = ingest(conn, build_email(subject="Re: stripped headers"),
                        thread_id="gmail-thread-1")
    assert outcome.state == "processed" and not outcome.created_ticket
    assert len(tickets(tenant)) == 1


@pytest.mark.django_db
def test_subject_token_only_for_participants(conn, tenant):
    ingest(conn, build_email(cc="carol@customer.example"))
    [ticket] = tickets(tenant)
    participant = build_email(subject=f"Update [#{ticket.number}]",
                              sender="carol@customer.example")
    stranger = build_email(subject=f"Me too [#{ticket.number}]", sender="eve@evil.example")
    assert ingest(conn, participant)[0].created_ticket is False
    assert ingest(conn, stranger)[0].created_ticket is True
    assert len(tickets(tenant)) == 2


@pytest.mark.django_db
def test_replaying_and_reposting_the_same_email_keeps_one_ticket(conn, tenant):
    raw = build_email(message_id="<dup@customer.example>")
    outcome, row = ingest(conn, raw, provider_id="same")
    for _ in range(5):
        assert inbound_email_ingest(inbound_email_id=row.pk).state == "processed"
    states = [ingest(conn, raw, provider_id=f"other-{i}")[0].state for i in range(5)]
    assert states == ["skipped"] * 5
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 1 and Message.objects.count() == 1
        skipped = InboundEmail.objects.filter(state="skipped")
        assert all(r.reason.startswith("duplicate:") for r in skipped)
        assert {r.ticket_id for r in skipped} == {outcome.ticket_id}


@pytest.mark.django_db
def test_a_duplicate_under_another_sender_creates_no_contact(conn, tenant):
    from contacts.models import Contact

    ingest(conn, build_email(message_id="<m1@customer.example>"))
    outcome, _ = ingest(conn, build_email(message_id="<m1@customer.example>",
                                          sender="Mallory <mallory@evil.example>"))
    assert outcome.state == "skipped" and outcome.reason.startswith("duplicate")
    with tenant_scope(tenant):
        assert not Contact.objects.filter(email="mallory@evil.example").exists()


@pytest.mark.django_db
def test_same_email_to_two_connections_of_a_tenant_is_one_ticket(conn, tenant):
    with tenant_scope(tenant):
        sales = connection_create_manual(tenant=tenant, address="sales@company.example")
    raw = build_email(to="support@company.example", cc="sales@company.example")
    assert ingest(conn, raw)[0].state == "processed"
    assert ingest(sales, raw)[0].state == "skipped"
    assert len(tickets(tenant)) == 1
    [ticket] = tickets(tenant)
    assert "sales@company.example" not in ticket.cc_addresses  # our own address


@pytest.mark.django_db
def test_reply_before_its_parent_lands_in_one_ticket(conn, tenant):
    parent = build_email(message_id="<parent@customer.example>")
    child = build_email(subject="Re: Printer on fire", message_id="<child@customer.example>",
                        in_reply_to="<parent@customer.example>",
                        references="<parent@customer.example>")
    assert ingest(conn, child)[0].created_ticket is True
    assert ingest(conn, parent)[0].created_ticket is False
    assert ingest(conn, parent, provider_id="parent-again")[0].state == "skipped"
    [ticket] = tickets(tenant)
    with tenant_scope(tenant):
        assert ticket.messages.count() == 2
        assert EmailThreadRef.objects.get(message_id_header="parent@customer.example").message


@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_on_one_thread_make_one_ticket():
    """Pairs of (message, its reply) and (message, its copy) ingested at the same moment
    by two threads, each with its own PostgreSQL connection."""
    tenant = TenantFactory()
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="help@company.example")
    pairs = []
    for i in range(12):
        sender = f"user{i}@c.example"
        a = build_email(message_id=f"<a{i}@c.example>", subject=f"Thread {i}", sender=sender)
        b = build_email(message_id=f"<b{i}@c.example>", in_reply_to=f"<a{i}@c.example>",
                        subject=f"Re: Thread {i}", sender=sender) if i % 2 else a
        rows = []
        with tenant_scope(tenant):
            for raw in (a, b):
                rows.append(inbound_email_receive(connection=conn, raw=raw,
                                                  provider_message_id=f"c{next(_counter)}")[0])
        pairs.append(rows)
    errors: list[BaseException] = []

    def run(row_id, barrier):
        try:
            barrier.wait()
            inbound_email_ingest(inbound_email_id=row_id)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            db_connection.close()

    for rows in pairs:
        barrier = threading.Barrier(2)
        workers = [threading.Thread(target=run, args=(r.pk, barrier)) for r in rows]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert errors == []
    with tenant_scope(tenant):
        assert Ticket.objects.count() == 12
        assert InboundEmail.objects.filter(state="processed").count() == 18
        assert InboundEmail.objects.filter(state="skipped").count() == 6


@pytest.mark.django_db
@pytest.mark.parametrize(("setup", "raw", "code"), [
    ({}, build_email(headers={"X-Helpdesk-Loop": "t1"}), "loop"),
    ({}, build_email(sender="support@company.example"), "loop"),
    ({"alias_addresses": ["help@company.example"]}, build_email(sender="help@company.example"),
     "loop"),
    ({}, build_email(headers={"Auto-Submitted": "auto-replied"}), "auto_reply"),
    ({}, build_email(headers={"Precedence": "bulk"}), "auto_reply"),
    ({"block_list": ["maria@customer.example"]}, build_email(), "blocked"),
    ({"block_list": ["*@customer.example"]}, build_email(), "blocked"),
    ({"block_list": ["/printer on (fire|ice)/"]}, build_email(), "blocked"),
    ({"allowed_sender_domains": ["partner.example"]}, build_email(), "domain_not_allowed"),
    ({"allowed_emails": "replies"}, build_email(), "new_threads_not_allowed"),
    ({"allowed_senders": "known_contacts"}, build_email(), "unknown_sender"),
])
def test_filters_skip_with_a_reason_and_no_ticket(tenant, setup, raw, code):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="support@company.example",
                                        **setup)
    outcome, row = ingest(conn, raw)
    assert outcome.state == "skipped" and outcome.reason.startswith(code + ":"), outcome.reason
    assert tickets(tenant) == []
    row.refresh_from_db()
    assert row.state == "skipped" and row.reason == outcome.reason and row.raw


@pytest.mark.django_db
def test_auto_replies_pass_when_the_connection_wants_them(tenant):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="s@company.example",
                                        skip_auto_replies=False)
    outcome, _ = ingest(conn, build_email(headers={"Auto-Submitted": "auto-replied"}))
    assert outcome.state == "processed"


@pytest.mark.django_db
def test_new_threads_only_skips_replies(tenant):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="s@company.example",
                                        allowed_emails="new_threads")
    ingest(conn, build_email(message_id="<n1@c.example>"))
    outcome, _ = ingest(conn, build_email(message_id="<n2@c.example>",
                                          in_reply_to="<n1@c.example>"))
    assert outcome.reason.startswith("replies_not_allowed:")


@pytest.mark.django_db
def test_sender_rate_cap_catches_a_loop(tenant):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="s@company.example",
                                        sender_rate_limit=3)
    states = [ingest(conn, build_email(subject=f"ping {i}"))[0].state for i in range(5)]
    assert states == ["processed"] * 3 + ["skipped"] * 2


@pytest.mark.django_db
def test_cc_import_off_and_text_body_preference(tenant):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="s@company.example",
                                        import_cc=False, body_preference="text")
    ingest(conn, build_email(cc="bob@customer.example", html="<p>Hello <b>there</b></p>"))
    [ticket] = tickets(tenant)
    with tenant_scope(tenant):
        assert ticket.cc_addresses == [] and ticket.messages.get().body_html == ""


@pytest.mark.django_db
def test_bounce_marks_our_outbound_message_and_makes_no_ticket(conn, tenant):
    ticket = TicketFactory(tenant=tenant)
    ours = MessageFactory(ticket=ticket, kind=MessageKind.OUTBOUND, author_contact=None,
                          delivery_status=DeliveryStatus.DELIVERED)
    with tenant_scope(tenant):
        EmailThreadRef.objects.create(tenant=tenant, ticket=ticket, message=ours,
                                      message_id_header="reply-1@company.example")
    dsn = (
        b"From: Mail Delivery System <MAILER-DAEMON@mx.company.example>\r\n"
        b"To: support@company.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        b"Message-ID: <dsn-1@mx.company.example>\r\nAuto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        b" boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
        b"Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"Message-ID: <reply-1@company.example>\r\nSubject: Re: hi\r\n\r\n--B--\r\n"
    )
    outcome, _ = ingest(conn, dsn)
    assert outcome.state == "skipped" and outcome.reason.startswith("bounce:")
    with tenant_scope(tenant):
        ours.refresh_from_db()
        assert ours.delivery_status == DeliveryStatus.BOUNCED
        assert "gone@customer.example" in ours.delivery_error and "5.1.1" in ours.delivery_error
        assert Ticket.objects.count() == 1


@pytest.mark.django_db
def test_unparseable_mail_is_quarantined_then_reprocessed(conn, tenant, admin_user):
    raw = build_email(body="x" * 5000)
    outcome, row = ingest(conn, raw, limits=ParseLimits(max_raw_bytes=1000))
    assert outcome.state == "quarantined" and outcome.reason.startswith("too_large")
    row.refresh_from_db()
    assert row.raw.read() == raw
    with tenant_scope(tenant):
        assert inbound_email_reset_for_reprocess(inbound_email=row, actor=admin_user)
        assert inbound_email_ingest(inbound_email_id=row.pk).state == "processed"
        assert AuditEvent.objects.filter(action="inbound_email.reprocessed").count() == 1


@pytest.mark.django_db
def test_garbage_is_quarantined_and_visible_to_admins(client, conn, tenant, admin_user, agent):
    outcome, row = ingest(conn, b"\x00\x01\x02 not an email \xff" * 3)
    assert outcome.state == "quarantined"
    client.force_login(agent)
    assert client.get(f"/{tenant.slug}/settings/email/inbound/").status_code == 403
    client.force_login(admin_user)
    page = client.get(f"/{tenant.slug}/settings/email/inbound/").content.decode()
    assert "Quarantined" in page
    raw = client.get(f"/{tenant.slug}/settings/email/inbound/{row.pk}/raw/")
    assert raw.status_code == 200 and raw.content == b"\x00\x01\x02 not an email \xff" * 3
    assert raw["Content-Disposition"].startswith("attachment")
    with tenant_scope(tenant):
        assert AuditEvent.objects.filter(action="inbound_email.downloaded").count() == 1


@pytest.mark.django_db
def test_team_routing_and_only_new_mail_is_affected(conn, tenant):
    billing = TeamFactory(tenant=tenant, name="Billing")
    ingest(conn, build_email(message_id="<r1@c.example>"))
    with tenant_scope(tenant):
        conn.routing_mode, conn.routing_team = RoutingMode.TEAM, billing
        conn.save()
    ingest(conn, build_email(message_id="<r2@c.example>", subject="Second"))
    first, second = tickets(tenant)
    assert first.team is None and second.team == billing
    assert second.routing["mode"] == "team"


@pytest.mark.django_db
def test_flow_routing_applies_rules_in_the_ticket_insert_and_records_why(conn, tenant):
    from routing.services import flow_create, rule_create

    billing, general = (TeamFactory(tenant=tenant, name=n) for n in ("Billing", "General"))
    with tenant_scope(tenant):
        flow = flow_create(tenant=tenant, name="Triage", fallback_team=general)
        rule_create(flow=flow, name="Refunds", conditions=[
            {"field": "subject", "op": "contains", "value": "refund"},
            {"field": "has_attachments", "op": "is", "value": True},
        ], actions=[{"type": "assign_team", "value": billing.pk},
                    {"type": "set_priority", "value": "high"},
                    {"type": "add_tag", "value": "refund"}])
        conn.routing_mode, conn.routing_flow = RoutingMode.FLOW, flow
        conn.save()
    ingest(conn, build_email(message_id="<f1@c.example>", subject="Refund please",
                             attachments=[("bill.pdf", b"%PDF", "application/pdf")]))
    ingest(conn, build_email(message_id="<f2@c.example>", subject="Refund please"))
    refund, other = tickets(tenant)
    assert (refund.team, refund.priority, refund.tags) == (billing, "high", ["refund"])
    assert refund.routing["flow"]["name"] == "Triage"
    assert refund.routing["rules"][0]["matched"] is True
    assert any("subject contains" in why for why in refund.routing["rules"][0]["why"])
    assert other.team == general and other.priority == "normal" and other.tags == []
    assert other.routing["rules"][0]["matched"] is False
    assert other.routing["fallback_team"]["name"] == "General"


@pytest.mark.django_db
def test_ingest_eml_command_with_report(tmp_path, tenant, capsys):
    folder = tmp_path / "mails"
    folder.mkdir()
    (folder / "a.eml").write_bytes(build_email(message_id="<f1@c.example>"))
    (folder / "b.eml").write_bytes(build_email(message_id="<f2@c.example>",
                                               in_reply_to="<f1@c.example>",
                                               subject="Re: Printer on fire"))
    (folder / "c.eml").write_bytes(build_email(headers={"Auto-Submitted": "auto-replied"}))
    report = tmp_path / "out.jsonl"
    args = ["--tenant", "newco", "--address", "help@newco.example", "--create",
            "--report", str(report), str(folder)]
    call_command("ingest_eml", *args)
    import json

    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"files": 3, "processed": 2, "skipped": 1}
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [line["created_ticket"] for line in lines] == [True, False, False]
    assert lines[1]["ticket_number"] == lines[0]["ticket_number"] == 1
    assert lines[1]["in_reply_to"] == ["f1@c.example"]
    assert lines[2]["is_auto_reply"] and lines[2]["state"] == "skipped"
    call_command("ingest_eml", *args)  # idempotent
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["processed"] == 2
    from helpdesk.models import Tenant

    newco = Tenant.objects.get(slug="newco")
    with tenant_scope(newco):
        assert Ticket.objects.count() == 1 and Contact.objects.count() == 1


@pytest.mark.django_db
def test_inbound_emails_command_lists_downloads_and_reprocesses(tmp_path, conn, tenant,
                                                                capsys):
    _, row = ingest(conn, build_email(body="y" * 3000), limits=ParseLimits(max_raw_bytes=500))
    call_command("inbound_emails", "--tenant", tenant.slug, "list")
    assert f"{row.pk}\tquarantined" in capsys.readouterr().out
    out = tmp_path / "raw.eml"
    call_command("inbound_emails", "--tenant", tenant.slug, "download", str(row.pk),
                 "--out", str(out))
    assert out.read_bytes().startswith(b"From: Maria")
    call_command("inbound_emails", "--tenant", tenant.slug, "reprocess", str(row.pk))
    assert f"{row.pk}\tprocessed" in capsys.readouterr().out
    with tenant_scope(tenant):
        actions = set(AuditEvent.objects.values_list("action", flat=True))
        assert {"inbound_email.downloaded", "inbound_email.reprocessed"} <= actions


def test_slow_block_list_patterns_share_one_budget_per_email_and_lose_nothing(
        conn, tenant, caplog):
    # Ten patterns that backtrack exponentially on this subject: each search would stop at
    # its own limit, but together they get the email's budget, then count as no match.
    with tenant_scope(tenant):
        conn.block_list = [f"/(x+x+)+y{n}/" for n in range(10)]
        conn.save()
    with caplog.at_level("WARNING", logger="helpdesk.patterns"):
        outcome, _ = ingest(conn, build_email(subject="x" * 1900))
    events = [r.getMessage().split(" ")[0] for r in caplog.records]
    assert "pattern.timeout" in events and "pattern.budget_spent" in events
    assert len([e for e in events if e == "pattern.timeout"]) < 10
    assert outcome.state == "processed"  # not blocked, not lost


@pytest.mark.django_db(transaction=True)
def test_receive_commits_without_the_flush_wait_and_the_ingest_still_waits():
    """The raw row's autocommitted INSERT does not wait for the WAL flush, only for itself
    (set_config(..., true)): the session, and so the ingest's commit that flushes the row
    before any outcome of the mail is durable, still waits. In a caller's transaction the
    caller's commit decides, and sql.insert refuses to change it."""
    from helpdesk import sql

    tenant = TenantFactory()
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="help@company.example")
    seen: list[tuple[str, bool]] = []

    def watch(execute, query, params, many, context):
        result = execute(query, params, many, context)
        if "channels_email_inboundemail" in query and query.lstrip().startswith("INSERT"):
            seen.append((query, db_connection.in_atomic_block))
        return result

    raw = build_email(subject="Hi")
    with db_connection.cursor() as cursor:  # the server's own setting (off when embedded)
        cursor.execute("SHOW synchronous_commit")
        before = cursor.fetchone()[0]
    with db_connection.execute_wrapper(watch), tenant_scope(tenant):
        row, created = inbound_email_receive(connection=conn, raw=raw,
                                             provider_message_id="flush-1")
        durable, _ = inbound_email_receive(connection=conn, raw=build_email(subject="Hi"),
                                           provider_message_id="flush-2", wait_for_flush=True)
    assert created and row.raw_size > 0
    [(fast, atomic), (slow, _)] = seen
    assert sql.NO_FLUSH_WAIT in fast and not atomic
    assert sql.NO_FLUSH_WAIT not in slow
    with db_connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == before  # the statement's set_config did not leak
    assert inbound_email_ingest(inbound_email_id=row.pk).state == "processed"
    with tenant_scope(tenant):
        assert InboundEmail.objects.get(pk=row.pk).raw.read() == raw
        with pytest.raises(RuntimeError), db_transaction.atomic():
            sql.insert(InboundEmail(tenant_id=tenant.pk, connection=conn,
                                    provider_message_id="flush-3"), wait_for_flush=False)


def test_raw_mime_is_written_once_under_a_fresh_name_even_after_its_folder_went(conn, tenant):
    import shutil
    from pathlib import Path

    from channels_email.services import raw_store

    first = build_email(subject="One")
    with tenant_scope(tenant):
        row, _ = inbound_email_receive(connection=conn, raw=first, provider_message_id="raw-1")
    path = Path(row.raw.path)
    assert path.read_bytes() == first and row.raw_size == len(first)
    shutil.rmtree(path.parent)  # a cleanup removed the day's folder the writer knew
    second = build_email(subject="Two")
    with tenant_scope(tenant):
        again, _ = inbound_email_receive(connection=conn, raw=second,
                                         provider_message_id="raw-2")
        assert InboundEmail.objects.get(pk=again.pk).raw.read() == second
    assert again.raw.name != row.raw.name
    # The exclusive create never overwrites: the same name twice is refused.
    clash = InboundEmail(tenant_id=tenant.pk, connection=conn)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("channels_email.services.inbound_raw_path", lambda *_: again.raw.name)
        with pytest.raises(FileExistsError):
            raw_store(clash, b"other bytes")
    assert Path(again.raw.path).read_bytes() == second


def test_the_thread_lookup_reads_only_the_ids_asked_in_its_generic_plan(conn, tenant):
    """psycopg prepares the lookup after a few runs and PostgreSQL may switch it to a
    generic plan, which guesses the workspace's size. Led by the tenant, the unique index
    let such a plan walk every reference of the workspace and filter them by id (seen in
    bench/ingest.py's database: 0.5 ms per email at 2,000); led by the Message-ID, the
    only way through an index is the ids asked. This pins that the generic plan takes it
    (the planner's choice on the old index depended on statistics this test cannot
    reproduce reliably)."""
    from channels_email.ingest import THREAD_LOOKUP_SQL
    from tests.tickets.test_search import _numbered_placeholders

    ingest(conn, build_email(subject="Thread"))
    db_connection.ensure_connection()
    raw = db_connection.connection
    # Statistics taken while the workspaces were new (as autovacuum's first ANALYZE of a
    # young table: a few references each), and 2,000 references since.
    other = TenantFactory()
    refs = ("INSERT INTO channels_email_emailthreadref (tenant_id, message_id_header,"
            " ticket_id, created_at) SELECT %s, '<' || %s || '-' || g || '@x>', t.id, now()"
            " FROM generate_series(1, %s) g, (SELECT min(id) AS id FROM tickets_ticket) t")
    for workspace in (tenant, other):
        raw.execute(refs, [workspace.pk, f"young-{workspace.pk}", 4])
    raw.execute("ANALYZE channels_email_emailthreadref")
    raw.execute(refs, [tenant.pk, "later", 2000])
    raw.execute("SET plan_cache_mode = force_generic_plan")
    # A table this small may be read whole; a workspace's references never are.
    raw.execute("SET enable_seqscan = off")
    raw.execute(f"PREPARE lookup AS {_numbered_placeholders(THREAD_LOOKUP_SQL)}")
    try:
        plan = "\n".join(r[0] for r in raw.execute(
            f"EXPLAIN EXECUTE lookup({int(tenant.pk)}, ARRAY['<a@b>']::varchar[], "
            f"{int(conn.pk)}, '', 0)").fetchall())
    finally:
        raw.execute("DEALLOCATE lookup")
        raw.execute("RESET plan_cache_mode")
        raw.execute("RESET enable_seqscan")
    thread_ref_scan = plan.split("channels_email_emailthreadref", 1)[1].split("->", 1)[0]
    assert "message_id_header" in thread_ref_scan.split("Filter", 1)[0], plan
