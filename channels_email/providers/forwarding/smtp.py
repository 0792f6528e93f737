"""The inbound SMTP server of forwarding mailboxes (``manage.py inbound_smtp``): aiosmtpd,
its own process, receiving what mail services forward to our generated addresses.

Contract, per SMTP session:
- RCPT TO: answered 550 for any address that is not the generated address of a
  forwarding mailbox that is not disconnected (before DATA, so an unknown address never
  gets a message stored), 451 when the lookup cannot be made now (the sender retries),
  452 beyond ``MAX_RECIPIENTS``.
- TLS: STARTTLS is offered when ``INBOUND_SMTP_TLS_CERT_FILE`` and ``..._KEY_FILE`` are
  set (never required: a public MX must accept plain SMTP too).
- Size: EHLO announces SIZE (RFC 1870) with ``INBOUND_SMTP_MAX_BYTES``; a MAIL FROM whose
  SIZE is larger, or DATA that grows larger, is refused with 552 (aiosmtpd's own checks).
- DATA: for each mailbox among the recipients, one ``InboundEmail`` with the raw bytes as
  received, the envelope (MAIL FROM, that RCPT TO, the client's address and HELO) and the
  forwarder's Authentication-Results (and ARC-Authentication-Results) headers in
  ``details["envelope"]``, written by ``services.inbound_email_receive(...,
  wait_for_flush=True)`` and so durable on disk before we answer 250. Only then is the
  normal ingest task queued for each; a queue that is down loses nothing (the redrive
  sweep picks up rows left ``received``). A storage or database failure answers 451 and
  the sender retries.
- Idempotency: the provider message id is ``smtp:`` + SHA-256 of the raw bytes and the
  generated address, so a retried DATA of the same message after a lost 250 finds its row
  (unique per connection) and makes no second ticket.
- A stored message stamps the mailbox's ``last_sync_at`` (its health reads Active from
  then on), except Gmail's forwarding confirmation, which shows that Gmail can reach us
  but not that forwarding is on.

The database is reached from a small thread pool (Django's ORM is synchronous); each call
starts with ``close_old_connections`` so a dropped database connection heals itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import parseaddr

from aiosmtpd.controller import Controller
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db import connections as db_connections

from channels_email import health, providers
from channels_email.models import ConnectionStatus, EmailConnection, InboundState
from channels_email.providers.base import Capability
from channels_email.providers.forwarding.confirmation import forwarding_confirmation
from helpdesk.tenancy import tenant_scope, unscoped

logger = logging.getLogger(__name__)

MAX_RECIPIENTS = 100
AUTH_HEADERS = ("authentication-results", "arc-authentication-results")
_KEEP_HEADERS = 10  # of each kind, topmost (most recent hop) first
_KEEP_CHARS = 2000


def message_key(raw: bytes, inbound_address: str) -> str:
    """The provider message id of ``raw`` delivered to ``inbound_address``: the same for a
    retried DATA of the same bytes, different per mailbox."""
    digest = hashlib.sha256(raw)
    digest.update(b"\0" + inbound_address.encode())
    return f"smtp:{digest.hexdigest()}"


def _live_connections(addresses):
    # Unscoped: a machine endpoint; the generated address names the connection, and every
    # write below runs in that connection's tenant scope.
    with unscoped():
        return list(EmailConnection.objects.select_related("tenant").filter(
            inbound_address__in=[a.strip().lower() for a in addresses],
            provider__in=providers.names_with(Capability.FORWARDED),
        ).exclude(status=ConnectionStatus.DISCONNECTED))


def known_address(address: str) -> bool:
    """Whether ``address`` is the generated address of a live forwarding mailbox."""
    close_old_connections()
    return bool(_live_connections([address]))


def _headers(raw: bytes):
    """The header block, decoded (RFC 2047) where it can be; None if it cannot be read."""
    try:
        return BytesHeaderParser(policy=default_policy).parsebytes(raw)
    except Exception:  # noqa: BLE001 - any header the parser chokes on: stored as is
        return None


def authentication_results(headers) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    if headers is None:
        return found
    for name in AUTH_HEADERS:
        try:
            values = [" ".join(str(v).split())[:_KEEP_CHARS]
                      for v in headers.get_all(name, [])[:_KEEP_HEADERS]]
        except Exception:  # noqa: BLE001 - a malformed header is left out, the raw keeps it
            values = []
        if values:
            found[name.replace("-", "_")] = values
    return found


def _is_confirmation(headers) -> bool:
    if headers is None:
        return False
    try:
        sender = parseaddr(str(headers.get("From") or ""))[1]
        subject = str(headers.get("Subject") or "")
    except Exception:  # noqa: BLE001 - unreadable headers: an ordinary message
        return False
    return forwarding_confirmation(sender=sender, subject=subject, text="") is not None


def store_forwarded(*, raw: bytes, mail_from: str, rcpt_tos: list[str], peer: str = "",
                    helo: str = "") -> list[int]:
    """Store ``raw`` once per forwarding mailbox among ``rcpt_tos`` (durably: the WAL
    flush is waited for), then queue its ingest. Returns the rows' ids (new or found from
    an earlier delivery of the same bytes). Raises DatabaseError / OSError when a row or
    its bytes could not be stored (the caller answers 451: the sender retries, and rows
    stored meanwhile are found again by their key)."""
    from channels_email.services import inbound_email_receive

    close_old_connections()
    headers = _headers(raw)
    auth = authentication_results(headers)
    confirmation = _is_confirmation(headers)
    rows = []
    for conn in _live_connections(rcpt_tos):
        envelope = {"mail_from": mail_from or "", "rcpt_to": conn.inbound_address,
                    "client": peer, "helo": (helo or "")[:255], **auth}
        with tenant_scope(conn.tenant):
            row, created = inbound_email_receive(
                connection=conn, provider_message_id=message_key(raw, conn.inbound_address),
                raw=raw, wait_for_flush=True, details={"envelope": envelope})
            if not confirmation:
                health.record_success(conn, synced=True)
        rows.append(row)
        logger.info("inbound_smtp.stored connection=%s inbound_email=%s new=%s size=%s",
                    conn.pk, row.pk, created, len(raw))
    _queue_ingest([row.pk for row in rows if row.state == InboundState.RECEIVED])
    return [row.pk for row in rows]


def _queue_ingest(ids: list[int]) -> None:
    from channels_email.tasks import process_inbound_email

    for pk in ids:
        try:
            process_inbound_email.delay(inbound_email_id=pk)
        except Exception as exc:  # noqa: BLE001 - stored already: the redrive sweep queues it
            logger.warning("inbound_smtp.queue_failed inbound_email=%s error=%s", pk,
                           type(exc).__name__)


class InboundHandler:
    """aiosmtpd handler: RCPT against the known generated addresses, DATA stored."""

    def __init__(self, *, workers: int = 8):
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="inbound-smtp")

    async def _run(self, fn, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(fn, **kwargs))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            known = await self._run(known_address, address=address)
        except DatabaseError as exc:
            logger.warning("inbound_smtp.lookup_failed error=%s", type(exc).__name__)
            return "451 4.3.0 Temporary lookup failure, try again later"
        if not known:
            return "550 5.1.1 No such forwarding address here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer or "")
        try:
            ids = await self._run(store_forwarded, raw=raw, mail_from=envelope.mail_from or "",
                                  rcpt_tos=list(envelope.rcpt_tos), peer=peer,
                                  helo=session.host_name or "")
        except (DatabaseError, OSError) as exc:
            logger.warning("inbound_smtp.store_failed error=%s", type(exc).__name__)
            return "451 4.3.0 Could not store the message, try again later"
        if not ids:  # every recipient's mailbox was disconnected since RCPT
            return "554 5.1.1 No such forwarding address here"
        return f"250 2.0.0 OK: stored for {len(ids)} mailbox{'es' if len(ids) > 1 else ''}"

    def close(self) -> None:
        """Close every pool thread's database connection (Django keeps one per thread),
        then the pool: one task per thread, held at a barrier so that no thread runs two."""
        barrier = threading.Barrier(self.workers)

        def close_own() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=5)
            db_connections.close_all()

        for _ in range(self.workers):
            self.executor.submit(close_own)
        self.executor.shutdown(wait=True)


class InboundSMTPServer:
    """The server on ``host``:``port`` in a thread of its own (aiosmtpd's Controller):
    ``start()`` returns once it answers, ``stop()`` ends it."""

    def __init__(self, host: str | None = None, port: int | None = None, *,
                 max_bytes: int | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None):
        self.host = host or settings.INBOUND_SMTP_HOST
        self.port = port if port is not None else settings.INBOUND_SMTP_PORT
        self.max_bytes = max_bytes or settings.INBOUND_SMTP_MAX_BYTES
        cert = settings.INBOUND_SMTP_TLS_CERT_FILE if tls_cert_file is None else tls_cert_file
        key = settings.INBOUND_SMTP_TLS_KEY_FILE if tls_key_file is None else tls_key_file
        tls = None
        if cert and key:
            # Offered, not required: a forwarder that cannot do TLS still delivers (RFC 3207
            # section 4: a publicly referenced server must not require it).
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cert, key)
        self.handler = InboundHandler()
        self.controller = Controller(
            self.handler, hostname=self.host, port=self.port,
            data_size_limit=self.max_bytes, enable_SMTPUTF8=True, tls_context=tls,
            require_starttls=False, ident="Helpdesk inbound mail", ready_timeout=10)

    def start(self) -> InboundSMTPServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.handler.close()
