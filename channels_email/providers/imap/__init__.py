"""Any mailbox by IMAP (receiving, IDLE as push) and SMTP (sending), behind the provider
seam: a password (or app password) instead of OAuth.

Receiving:
- The cursor is ``{"v": UIDVALIDITY, "u": last UID}`` of the mapped folder (JSON in
  ``EmailConnection.cursor``); ``changes_since`` runs ``UID SEARCH UID n+1:*`` on the
  folder opened read-only (EXAMINE), so nothing we do marks customers' mail read.
- A provider message id is ``UIDVALIDITY:UID:folder`` (RFC 3501 section 2.3.1.1: the pair
  names one message for good). A changed UIDVALIDITY raises ``CursorExpired``: the channel
  runs the bounded resync (``list_since``), whose refs carry a Message-ID + Date key so
  that mail already imported under the old UIDVALIDITY is not imported again.
- ``fetch_raw`` reads ``BODY.PEEK[]``; only when the admin chose it does it then mark the
  message read or move it to another folder.
- ``idle_open`` gives the watcher (``manage.py mailbox_watch``) an IDLE session (RFC 2177)
  on the folder.

Sending: our MIME as is over SMTP (implicit TLS or STARTTLS, AUTH); delivered means the
server's 250 after DATA. Then, unless the server files sent mail itself, the copy is
APPENDed to the Sent folder, which is where ``find_sent`` looks for our Message-ID (so a
retry after a crash does not send twice). 4xx replies are transient, 5xx permanent, with
the server's text.

A refused password is ``AuthError`` (reason ``sign_in_failed``): the connection shows
"Sign-in failed" and waits until an admin enters the password again (Reconnect).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from imapclient import SEEN

from channels_email.mime import normalize_message_id
from channels_email.providers.base import (
    Capability,
    CursorExpired,
    MessageRef,
    PermanentError,
    SentMessage,
    SyncPage,
)
from channels_email.providers.imap.account import (
    SIGN_IN_FAILED,
    ImapAccount,
    imap_errors,
    imap_open,
    imap_session,
    select,
    smtp_session,
)

logger = logging.getLogger(__name__)

NAME = "imap"
PAGE_SIZE = 500
# RFC 2177: servers may drop an IDLE after 30 minutes without activity; re-issue sooner.
IDLE_RENEW_SECONDS = 25 * 60
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]", re.IGNORECASE)


def _cursor(text: str) -> tuple[int, int]:
    try:
        data = json.loads(text)
        return int(data["v"]), int(data["u"])
    except (TypeError, ValueError, KeyError):
        raise CursorExpired("No usable IMAP cursor", reason="invalid_cursor") from None


def cursor_text(uidvalidity: int, last_uid: int) -> str:
    return json.dumps({"v": uidvalidity, "u": last_uid}, separators=(",", ":"))


# The cursor of a mailbox just added: no UIDVALIDITY is 0 (RFC 3501), so the first sync
# finds it "changed" and imports from the connection's sync start date.
START_FROM_SYNC_DATE = cursor_text(0, 0)


def message_ref_id(uidvalidity: int, uid: int, folder: str) -> str:
    return f"{uidvalidity}:{uid}:{folder}"


def _parse_ref(provider_message_id: str) -> tuple[int, int, str]:
    try:
        validity, uid, folder = provider_message_id.split(":", 2)
        return int(validity), int(uid), folder
    except ValueError:
        raise PermanentError(f"Not an IMAP message id: {provider_message_id!r}",
                             reason="not_found") from None


def dedupe_key(headers: bytes) -> str:
    """Message-ID + Date of a message's header block: the same mail under a new
    UIDVALIDITY has the same key. "" when it has no Message-ID (nothing to compare)."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(headers or b"")
    message_id = normalize_message_id(str(parsed.get("Message-ID") or ""))
    if not message_id:
        return ""
    return f"{message_id}|{' '.join(str(parsed.get('Date') or '').split())}"[:500]


_KEY_FIELDS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE)]"


def _key_headers(item: dict) -> bytes:
    return next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"") or b""


def _dedupe_keys(client, uids: list[int]) -> dict[int, str]:
    """uid -> Message-ID + Date key, read with the header fields only (PEEK: unread
    stays unread)."""
    if not uids:
        return {}
    fetched = client.fetch(uids, [_KEY_FIELDS])
    return {uid: dedupe_key(_key_headers(item)) for uid, item in fetched.items()}


def _recipients(raw_mime: bytes) -> tuple[str, list[str], str]:
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw_mime)
    to = [addr for _, addr in getaddresses([str(v) for key in ("To", "Cc", "Bcc")
                                            for v in headers.get_all(key, [])]) if addr]
    return (normalize_message_id(str(headers.get("Message-ID") or "")),
            list(dict.fromkeys(to)), str(headers.get("From") or ""))


def _without_bcc(raw_mime: bytes) -> bytes:
    """The message as filed in Sent and sent: Bcc recipients get it by envelope only."""
    head, sep, body = raw_mime.partition(b"\r\n\r\n")
    if not sep:
        return raw_mime
    lines, kept, skipping = head.split(b"\r\n"), [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


@dataclass(frozen=True)
class AccountCheck:
    """What Test connection found: the server's folders, and whether the mapped ones are
    among them."""

    folders: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    idle: bool = False


class IdleSession:
    """One IMAP connection in IDLE on the mapped folder (RFC 2177). ``wait(seconds)``
    returns True when the server announced new mail (EXISTS) or False on timeout; the
    IDLE is ended and re-issued every ``IDLE_RENEW_SECONDS``. Every failure is a
    ProviderError (the watcher reconnects)."""

    def __init__(self, account: ImapAccount):
        self.account = account
        self.client = imap_open(account)
        self.supported = True
        with imap_errors(account):
            select(self.client, account, account.folder, readonly=True)
            self.supported = self.client.has_capability("IDLE")
            if self.supported:
                self.client.idle()
        self.since = time.monotonic()

    def wait(self, seconds: float) -> bool:
        if not self.supported:
            time.sleep(seconds)
            return False
        with imap_errors(self.account):
            if time.monotonic() - self.since > IDLE_RENEW_SECONDS:
                self.client.idle_done()
                self.client.idle()
                self.since = time.monotonic()
            responses = self.client.idle_check(timeout=seconds)
        for response in responses:
            if len(response) >= 2 and response[1] in (b"EXISTS", b"RECENT"):
                return True
            if response and response[0] == b"BYE":
                raise PermanentError("IMAP: the server ended the IDLE", reason="bye")
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.idle_done()
        with contextlib.suppress(Exception):
            self.client.logout()
        with contextlib.suppress(Exception):
            self.client.shutdown()


class ImapProvider:
    """IMAP/SMTP with a password: Test connection, UID cursor sync, IDLE, SMTP send."""

    name = NAME
    label = "IMAP/SMTP"
    connect_button = "IMAP/SMTP: any mail server"
    not_configured_hint = ""
    capabilities = frozenset({Capability.PASSWORD_SIGN_IN, Capability.IDLE,
                              Capability.CURSOR_SYNC, Capability.FETCH, Capability.SEND,
                              Capability.FIND_SENT})
    # How the statuses read for a mailbox signed in with a password.
    status_labels = {"token_expired": "Sign-in failed"}
    sign_in_failed_reason = SIGN_IN_FAILED

    def is_configured(self) -> bool:
        return True

    @property
    def account_form(self):
        from channels_email.providers.imap.form import ImapAccountForm

        return ImapAccountForm

    def form_action_origins(self) -> tuple[str, ...]:
        return ()

    # -- credentials ----------------------------------------------------------------------
    def check_account(self, credentials: dict) -> AccountCheck:
        """Sign in to IMAP and list the folders, then sign in to SMTP (no mail is sent).
        Raises the ProviderError that says what failed."""
        account = ImapAccount.from_credentials(credentials)
        with imap_session(account) as client:
            folders = [name for _, _, name in client.list_folders()]
            idle = client.has_capability("IDLE")
        wanted = [account.folder]
        if account.append_sent and account.sent_folder:
            wanted.append(account.sent_folder)
        if account.after_import == "move" and account.move_to:
            wanted.append(account.move_to)
        missing = [f for f in wanted if f not in folders
                   and not (f.upper() == "INBOX" and "INBOX" in map(str.upper, folders))]
        with smtp_session(account):
            pass
        return AccountCheck(folders=folders, missing=missing, idle=idle)

    def start_cursor(self) -> str:
        return START_FROM_SYNC_DATE

    # -- sync -----------------------------------------------------------------------------
    def current_cursor(self, connection) -> str:
        account = ImapAccount.from_credentials(connection.credentials)
        with imap_session(account) as client:
            info = select(client, account, account.folder, readonly=True)
            validity = int(info[b"UIDVALIDITY"])
            uidnext = info.get(b"UIDNEXT")
            if uidnext is None:
                uids = client.search("ALL")
                last = max(uids) if uids else 0
            else:
                last = int(uidnext) - 1
        return cursor_text(validity, last)

    def changes_since(self, connection, cursor: str, page: str = "") -> SyncPage:
        validity, last = _cursor(cursor)
        account = ImapAccount.from_credentials(connection.credentials)
        after = int(page) if page.isdigit() else last
        with imap_session(account) as client:
            info = select(client, account, account.folder, readonly=True)
            current = int(info[b"UIDVALIDITY"])
            if current != validity:
                raise CursorExpired(f"UIDVALIDITY of {account.folder} changed "
                                    f"({validity} -> {current})", reason="uidvalidity")
            # "n:*" always includes the highest UID, even below n (RFC 3501 6.4.8).
            uids = sorted(u for u in client.search(["UID", f"{after + 1}:*"]) if u > after)
            batch = uids[:PAGE_SIZE]
            keys = _dedupe_keys(client, batch)
        refs = [MessageRef(message_ref_id(validity, uid, account.folder),
                           dedupe_key=keys.get(uid, "")) for uid in batch]
        if len(uids) > PAGE_SIZE:
            return SyncPage(messages=refs, next_page=str(batch[-1]))
        return SyncPage(messages=refs, cursor=cursor_text(validity, max([after, *batch])))

    def list_since(self, connection, since: datetime, page: str = "") -> SyncPage:
        """Every message of the folder that arrived (INTERNALDATE) at or after ``since``,
        each with its Message-ID + Date key for the channel's duplicate check."""
        account = ImapAccount.from_credentials(connection.credentials)
        after = int(page) if page.isdigit() else 0
        with imap_session(account) as client:
            info = select(client, account, account.folder, readonly=True)
            validity = int(info[b"UIDVALIDITY"])
            # SINCE compares dates only (RFC 3501 6.4.4): the exact time is checked below.
            uids = sorted(u for u in client.search(["SINCE", since.date()]) if u > after)
            batch = uids[:PAGE_SIZE]
            fetched = client.fetch(batch, ["INTERNALDATE", _KEY_FIELDS]) if batch else {}
        refs = []
        for uid in batch:
            item = fetched.get(uid) or {}
            arrived = item.get(b"INTERNALDATE")
            if isinstance(arrived, datetime):
                arrived = arrived if arrived.tzinfo else arrived.astimezone()
                if arrived < since:
                    continue
            refs.append(MessageRef(message_ref_id(validity, uid, account.folder),
                                   dedupe_key=dedupe_key(_key_headers(item))))
        return SyncPage(messages=refs,
                        next_page=str(batch[-1]) if len(uids) > PAGE_SIZE else "")

    def fetch_raw(self, connection, provider_message_id: str) -> bytes:
        validity, uid, folder = _parse_ref(provider_message_id)
        account = ImapAccount.from_credentials(connection.credentials)
        changes = account.after_import in ("mark_read", "move")
        with imap_session(account) as client:
            info = select(client, account, folder, readonly=not changes)
            if int(info[b"UIDVALIDITY"]) != validity:
                raise PermanentError(f"The message is gone: UIDVALIDITY of {folder} changed",
                                     reason="not_found")
            fetched = client.fetch([uid], ["BODY.PEEK[]"])
            raw = (fetched.get(uid) or {}).get(b"BODY[]")
            if raw is None:
                raise PermanentError(f"No message {uid} in {folder} (deleted?)",
                                     reason="not_found")
            if account.after_import == "mark_read":
                client.add_flags([uid], [SEEN])
            elif account.after_import == "move" and account.move_to:
                if client.has_capability("MOVE"):  # RFC 6851
                    client.move([uid], account.move_to)
                else:
                    client.copy([uid], account.move_to)
                    client.delete_messages([uid])
                    client.uid_expunge([uid])
        return bytes(raw)

    def idle_open(self, connection) -> IdleSession:
        return IdleSession(ImapAccount.from_credentials(connection.credentials))

    # -- send -----------------------------------------------------------------------------
    def send(self, connection, raw_mime: bytes, thread_id: str = "") -> SentMessage:
        account = ImapAccount.from_credentials(connection.credentials)
        message_id, recipients, _ = _recipients(raw_mime)
        if not recipients:
            raise PermanentError("The message names no recipient", reason="no_recipient")
        filed = _without_bcc(raw_mime)
        with smtp_session(account) as smtp:
            refused = smtp.sendmail(connection.address, recipients, filed)
        if refused:
            logger.warning("imap.send_partly_refused connection=%s refused=%s",
                           connection.pk, len(refused))
        sent_id = f"smtp:{message_id}"
        if account.append_sent and account.sent_folder:
            try:
                sent_id = self._file_sent(account, filed) or sent_id
            except Exception as exc:  # noqa: BLE001 - the mail went out: never fail now
                logger.warning("imap.sent_copy_failed connection=%s error=%s",
                               connection.pk, type(exc).__name__)
        return SentMessage(sent_id, "", message_id)

    @staticmethod
    def _file_sent(account: ImapAccount, raw: bytes) -> str:
        with imap_session(account) as client:
            answer = client.append(account.sent_folder, raw, flags=(SEEN,),
                                   msg_time=datetime.now(UTC))
        match = _APPENDUID.search(answer or b"")
        if not match:
            return ""
        return message_ref_id(int(match.group(1)), int(match.group(2)), account.sent_folder)

    def find_sent(self, connection, message_id_header: str) -> SentMessage | None:
        wanted = normalize_message_id(message_id_header)
        account = ImapAccount.from_credentials(connection.credentials)
        if not wanted or not account.sent_folder:
            return None
        with imap_session(account) as client:
            info = select(client, account, account.sent_folder, readonly=True)
            uids = client.search(["HEADER", "Message-ID", f"<{wanted}>"])
        if not uids:
            return None
        return SentMessage(message_ref_id(int(info[b"UIDVALIDITY"]), min(uids),
                                          account.sent_folder), "", wanted)

