"""An IMAP/SMTP mailbox's settings as stored (encrypted) in ``EmailConnection.credentials``,
and the IMAP and SMTP sessions opened from them, with every failure turned into the
``ProviderError`` family in words an admin can act on (DNS, refused, TLS, timeout,
sign-in, folder missing).

Layout of the stored JSON (``ImapAccount.as_credentials``)::

    {"kind": "imap", "imap": {host, port, security, username, password},
     "smtp": {host, port, security, username, password},
     "folder": "INBOX", "sent_folder": "Sent", "append_sent": true,
     "after_import": "leave" | "mark_read" | "move", "move_to": "",
     "timeout_ms": 20000}

Passwords never appear in an error text or a log line.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import smtplib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace

from django.conf import settings
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from channels_email.providers.base import (
    AuthError,
    PermanentError,
    ProviderError,
    RateLimited,
    TransientError,
)

logger = logging.getLogger(__name__)

SSL_TLS = "ssl"  # implicit TLS (IMAPS 993, SMTPS 465)
STARTTLS = "starttls"  # plain connect, then STARTTLS (IMAP 143, submission 587)
SECURITY_CHOICES = ((SSL_TLS, "SSL/TLS"), (STARTTLS, "STARTTLS"))
AFTER_IMPORT_CHOICES = (("leave", "Leave it as it is (unread stays unread)"),
                        ("mark_read", "Mark it as read"),
                        ("move", "Move it to a folder"))
# The reason of an AuthError for a refused password: not a token a refresh could fix.
SIGN_IN_FAILED = "sign_in_failed"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    security: str
    username: str
    password: str = field(repr=False, default="")


@dataclass(frozen=True)
class ImapAccount:
    imap: Endpoint
    smtp: Endpoint
    folder: str = "INBOX"
    sent_folder: str = "Sent"
    append_sent: bool = True
    after_import: str = "leave"
    move_to: str = ""
    timeout_ms: int = 0  # 0: the server's PROVIDER_HTTP_TIMEOUT_SECONDS

    @classmethod
    def from_credentials(cls, credentials: dict | None) -> ImapAccount:
        data = credentials or {}
        try:
            imap = Endpoint(**data["imap"])
            smtp = Endpoint(**data["smtp"])
        except (KeyError, TypeError):
            raise AuthError("The mailbox has no IMAP/SMTP settings stored",
                            reason="no_credentials") from None
        return cls(imap=imap, smtp=smtp, folder=data.get("folder") or "INBOX",
                   sent_folder=data.get("sent_folder", "Sent"),
                   append_sent=bool(data.get("append_sent", True)),
                   after_import=data.get("after_import") or "leave",
                   move_to=data.get("move_to") or "",
                   timeout_ms=int(data.get("timeout_ms") or 0))

    def as_credentials(self) -> dict:
        return {"kind": "imap", **asdict(self)}

    def with_timeout(self, timeout_ms: int) -> ImapAccount:
        return replace(self, timeout_ms=timeout_ms)

    @property
    def timeout(self) -> float:
        return self.timeout_ms / 1000 if self.timeout_ms else float(
            settings.PROVIDER_HTTP_TIMEOUT_SECONDS)


def tls_context() -> ssl.SSLContext:
    """Certificates are verified against the system's trust store, plus
    ``IMAP_EXTRA_CA_FILE`` when set (the sandbox mail server's CA in dev and tests)."""
    context = ssl.create_default_context()
    if settings.IMAP_EXTRA_CA_FILE:
        context.load_verify_locations(cafile=settings.IMAP_EXTRA_CA_FILE)
    return context


def _network_error(exc: BaseException, where: str, host: str, port: int) -> ProviderError:
    """A socket-level failure in words."""
    if isinstance(exc, socket.gaierror):
        return TransientError(f"{where}: the server name {host} could not be found (DNS)",
                              reason="dns")
    if isinstance(exc, ConnectionRefusedError):
        return TransientError(f"{where}: {host} refused the connection on port {port}",
                              reason="refused")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TransientError(f"{where}: the server's TLS certificate is not trusted "
                              f"({exc.verify_message or exc.reason})", reason="tls")
    if isinstance(exc, ssl.SSLError):
        return TransientError(f"{where}: TLS failed ({exc.reason or exc}); check the "
                              "security setting and the port", reason="tls")
    if isinstance(exc, TimeoutError):
        return TransientError(f"{where}: {host}:{port} did not answer in time (is the "
                              "security setting right for this port?)", reason="timeout")
    return TransientError(f"{where}: connection to {host}:{port} failed "
                          f"({type(exc).__name__}: {exc})", reason="connection")


def _server_text(exc: BaseException) -> str:
    text = exc.args[0] if exc.args else str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text)
    if text[:2] in ("b'", 'b"') and text[-1:] == text[1]:  # imapclient's repr of bytes
        text = text[2:-1]
    return text[:300]


@contextlib.contextmanager
def imap_errors(account: ImapAccount) -> Iterator[None]:
    """Every exception of an IMAP exchange as a ProviderError."""
    host, port = account.imap.host, account.imap.port
    try:
        yield
    except ProviderError:
        raise
    except LoginError as exc:
        text = _server_text(exc)
        if "maximum number of connections" in text.lower() or "[limit]" in text.lower():
            raise RateLimited(f"IMAP: too many connections ({text})", reason="limit",
                              retry_after=60) from None
        raise AuthError(f"IMAP: sign-in failed for {account.imap.username} ({text})",
                        reason=SIGN_IN_FAILED) from None
    except (IMAPClientAbortError, imaplib.IMAP4.abort) as exc:
        raise TransientError(f"IMAP: the server closed the connection "
                             f"({_server_text(exc)})", reason="connection") from None
    except (IMAPClientError, imaplib.IMAP4.error) as exc:
        text = _server_text(exc)
        lowered = text.lower()
        if "unavailable" in lowered or "try again" in lowered or "[inuse]" in lowered:
            raise TransientError(f"IMAP: {text}", reason="unavailable") from None
        raise PermanentError(f"IMAP: the server refused: {text}", reason="refused_command"
                             ) from None
    except (OSError, ssl.SSLError) as exc:  # sockets, TLS, timeouts
        raise _network_error(exc, "IMAP", host, port) from None


def _refusal(host: str, port: int, where: str, peer: str | None = None) -> None:
    """Refuse a server whose name leads to an address we may not reach (settings
    IMAP_ALLOW_*): checked on every address the name resolves to before connecting, and on
    the address reached once connected, before a password is sent (DNS rebinding)."""
    from helpdesk.webhook_transport import address_refusal

    addresses = [peer] if peer else [
        info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    for address in addresses:
        reason = address_refusal(address, allow_loopback=settings.IMAP_ALLOW_LOOPBACK,
                                 allow_private=settings.IMAP_ALLOW_PRIVATE_ADDRESSES)
        if reason:
            raise PermanentError(f"{where}: {host} is {reason} ({address}), which this "
                                 "helpdesk does not connect to", reason="address_refused")


def imap_open(account: ImapAccount) -> IMAPClient:
    """A signed-in IMAP session (TLS from the start, or STARTTLS before the password)."""
    with imap_errors(account):
        endpoint = account.imap
        _refusal(endpoint.host, endpoint.port, "IMAP")
        client = IMAPClient(endpoint.host, port=endpoint.port,
                            ssl=endpoint.security == SSL_TLS, ssl_context=tls_context(),
                            timeout=account.timeout)
        try:
            _refusal(endpoint.host, endpoint.port, "IMAP", client.socket().getpeername()[0])
            if endpoint.security != SSL_TLS:
                client.starttls(tls_context())
            client.login(endpoint.username, endpoint.password)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        return client


@contextlib.contextmanager
def imap_session(account: ImapAccount) -> Iterator[IMAPClient]:
    client = imap_open(account)
    try:
        with imap_errors(account):
            yield client
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def select(client: IMAPClient, account: ImapAccount, folder: str, *, readonly: bool) -> dict:
    """SELECT (or EXAMINE) ``folder``; a folder the server does not have is a
    PermanentError that says so."""
    try:
        return client.select_folder(folder, readonly=readonly)
    except (IMAPClientError, imaplib.IMAP4.error) as exc:
        if isinstance(exc, IMAPClientAbortError | imaplib.IMAP4.abort):
            raise
        raise PermanentError(f"IMAP: the folder {folder!r} does not exist on the server "
                             f"({_server_text(exc)})", reason="folder_missing") from None


# ------------------------------------------------------------------------------ SMTP


def _smtp_reply_error(code: int, text: str, what: str) -> ProviderError:
    message = f"SMTP {what}: {code} {text}".strip()
    if 400 <= code < 500:
        return TransientError(message, status=code, reason="smtp_4xx")
    return PermanentError(message, status=code, reason="smtp_5xx")


def _reply_text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


@contextlib.contextmanager
def smtp_errors(account: ImapAccount) -> Iterator[None]:
    host, port = account.smtp.host, account.smtp.port
    try:
        yield
    except ProviderError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise AuthError(f"SMTP: sign-in failed for {account.smtp.username} "
                        f"({exc.smtp_code} {_reply_text(exc.smtp_error)})",
                        reason=SIGN_IN_FAILED) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(f"SMTP: the server does not offer {exc} here; check the "
                             "security setting", reason="smtp_unsupported") from None
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()), (550, b""))
        refused = ", ".join(exc.recipients)
        raise _smtp_reply_error(code, f"{_reply_text(text)} ({refused})",
                                "refused every recipient") from None
    except smtplib.SMTPSenderRefused as exc:
        raise _smtp_reply_error(exc.smtp_code, _reply_text(exc.smtp_error),
                                f"refused the sender {exc.sender}") from None
    except smtplib.SMTPDataError as exc:
        raise _smtp_reply_error(exc.smtp_code, _reply_text(exc.smtp_error),
                                "refused the message") from None
    except smtplib.SMTPResponseException as exc:
        raise _smtp_reply_error(exc.smtp_code, _reply_text(exc.smtp_error), "error") from None
    except smtplib.SMTPServerDisconnected as exc:
        raise TransientError(f"SMTP: the server closed the connection ({exc})",
                             reason="connection") from None
    except smtplib.SMTPException as exc:
        raise TransientError(f"SMTP: {exc}", reason="smtp") from None
    except (OSError, ssl.SSLError) as exc:
        raise _network_error(exc, "SMTP", host, port) from None


@contextlib.contextmanager
def smtp_session(account: ImapAccount) -> Iterator[smtplib.SMTP]:
    """A signed-in SMTP session over TLS (implicit, or STARTTLS required)."""
    endpoint = account.smtp
    with smtp_errors(account):
        _refusal(endpoint.host, endpoint.port, "SMTP")
        if endpoint.security == SSL_TLS:
            smtp = smtplib.SMTP_SSL(endpoint.host, endpoint.port, timeout=account.timeout,
                                    context=tls_context())
        else:
            smtp = smtplib.SMTP(endpoint.host, endpoint.port, timeout=account.timeout)
        try:
            _refusal(endpoint.host, endpoint.port, "SMTP", smtp.sock.getpeername()[0])
            smtp.ehlo()
            if endpoint.security != SSL_TLS:
                if not smtp.has_extn("starttls"):
                    raise PermanentError("SMTP: the server does not offer STARTTLS on this "
                                         "port; choose SSL/TLS or another port",
                                         reason="tls")
                smtp.starttls(context=tls_context())
                smtp.ehlo()
            if endpoint.username:
                smtp.login(endpoint.username, endpoint.password)
            yield smtp
        finally:
            with contextlib.suppress(Exception):
                smtp.quit()
