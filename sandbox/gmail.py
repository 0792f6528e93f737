"""Mailbox model of the sandbox: messages, threads, history, search and MIME payloads.

Everything here works on the state dict inside a ``Store.transaction()``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import hashlib
import html
import random
import re
import time
from email.message import EmailMessage, Message

from .store import Store

SYSTEM_LABELS = ["INBOX", "SENT", "UNREAD", "IMPORTANT", "STARRED", "DRAFT", "SPAM", "TRASH",
                 "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS",
                 "CATEGORY_UPDATES", "CATEGORY_FORUMS"]


def now_ms() -> int:
    return int(time.time() * 1000)


def b64url_encode(data: bytes) -> str:
    # Gmail returns URL-safe base64 *with* padding for raw and body data.
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64_decode_tolerant(text: str) -> bytes:
    text = re.sub(r"\s+", "", text).replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def new_mailbox(email_address: str) -> dict:
    return {
        "email": email_address,
        # History ids are large decimal numbers in Gmail; start somewhere plausible.
        "history_id": random.randint(100_000, 900_000),
        "history_floor": 0,  # startHistoryId below this -> 404
        "history": [],  # [{"id": int, "message": {"id","threadId","labelIds"}}]
        "messages": {},  # id -> record (raw in a blob)
        "order": [],  # ids, oldest first
        "watch": None,
        "created": now_ms(),
    }


def ensure_mailbox(state: dict, email_address: str) -> dict:
    email_address = email_address.strip().lower()
    box = state["mailboxes"].get(email_address)
    if box is None:
        box = new_mailbox(email_address)
        box["history_floor"] = box["history_id"]
        state["mailboxes"][email_address] = box
    return box


def bump_history(box: dict) -> int:
    box["history_id"] += random.randint(1, 4)  # ids increase, with gaps
    return box["history_id"]


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # noqa: BLE001 - malformed header: fall back to the raw text
        value = msg.get_all(name, failobj=[None])[0] if hasattr(msg, "get_all") else None
    return str(value) if value is not None else ""


def normalize_subject(subject: str) -> str:
    subject = subject or ""
    while True:
        new = re.sub(r"^\s*((re|fwd?|aw|sv|antw)\s*(\[\d+\])?\s*:\s*)", "", subject, flags=re.I)
        if new == subject:
            return subject.strip().lower()
        subject = new


def msgids(text: str) -> list[str]:
    return re.findall(r"<[^<>\s]+>", text or "")


def _text_body(msg: EmailMessage) -> str:
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        text = part.get_content()
        if part.get_content_type() == "text/html":
            text = re.sub(r"<[^>]+>", " ", text)
        return text
    except Exception:  # noqa: BLE001 - snippets are best effort
        return ""


def snippet_of(msg: EmailMessage) -> str:
    text = " ".join(_text_body(msg).split())
    return html.escape(text[:200])


def _thread_for(box: dict, msg: EmailMessage, thread_id: str | None) -> str | None:
    """Gmail threading: a message joins a thread when the subject matches and either the
    client named the thread or the message references one of the thread's messages."""
    subject = normalize_subject(_header(msg, "Subject"))
    if thread_id:
        members = [m for m in box["messages"].values() if m["threadId"] == thread_id]
        if members and any(normalize_subject(m["subject"]) == subject for m in members):
            return thread_id
    refs = msgids(_header(msg, "In-Reply-To")) + msgids(_header(msg, "References"))
    for ref in reversed(refs):
        for rec in box["messages"].values():
            if rec["messageIdHeader"] == ref and normalize_subject(rec["subject"]) == subject:
                return rec["threadId"]
    return None


def add_message(store: Store, state: dict, box: dict, raw: bytes, labels: list[str],
                thread_id: str | None = None) -> dict:
    """Store a message, record a messageAdded history entry and queue the push."""
    msg = parse(raw)
    gid = Store.new_gmail_id(state)
    thread = _thread_for(box, msg, thread_id) or gid
    history_id = bump_history(box)
    record = {
        "id": gid,
        "threadId": thread,
        "labelIds": list(labels),
        "historyId": history_id,
        "internalDate": now_ms(),
        "sizeEstimate": len(raw),
        "snippet": snippet_of(msg),
        "blob": store.put_raw(raw),
        "messageIdHeader": (msgids(_header(msg, "Message-ID")) or [""])[0],
        "subject": _header(msg, "Subject"),
        "from": _header(msg, "From"),
        "to": ", ".join(filter(None, [_header(msg, "To"), _header(msg, "Cc")])),
    }
    box["messages"][gid] = record
    box["order"].append(gid)
    box["history"].append({
        "id": history_id,
        "message": {"id": gid, "threadId": thread, "labelIds": list(labels)},
    })
    retention = int(store.settings().get("history_retention") or 1000)
    if len(box["history"]) > retention:
        dropped = box["history"][: len(box["history"]) - retention]
        box["history"] = box["history"][len(dropped):]
        box["history_floor"] = dropped[-1]["id"]
    maybe_queue_push(store, state, box, labels)
    return record


def expire_history(box: dict) -> None:
    """Forget all history: every cursor issued so far becomes too old (404)."""
    box["history"] = []
    box["history_floor"] = box["history_id"]


def watch_matches(watch: dict, labels: list[str]) -> bool:
    wanted = set(watch.get("labelIds") or [])
    behavior = (watch.get("labelFilterBehavior") or "include").lower()
    if not wanted:
        return True
    hit = bool(wanted & set(labels))
    return hit if behavior == "include" else not hit


def maybe_queue_push(store: Store, state: dict, box: dict, labels: list[str] | None,
                     force: bool = False) -> None:
    watch = box.get("watch")
    if not watch or watch["expiration"] < now_ms():
        return
    if not force and not watch_matches(watch, labels or []):
        return
    state["push_queue"].append({
        "topic": watch["topicName"],
        "emailAddress": box["email"],
        "historyId": box["history_id"],
        "queued_at": time.time(),
    })


# -- rendering -----------------------------------------------------------------------------

def _part_tree(msg_id: str, part: Message, part_id: str, headers_filter=None,
               with_bodies: bool = True) -> dict:
    headers = [{"name": k, "value": str(v)} for k, v in part.raw_items()] \
        if hasattr(part, "raw_items") else [{"name": k, "value": str(v)} for k, v in part.items()]
    if headers_filter is not None:
        headers = [h for h in headers if h["name"].lower() in headers_filter]
    node: dict = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": part.get_filename() or "",
        "headers": headers,
    }
    if not with_bodies:
        return node
    if part.is_multipart():
        node["body"] = {"size": 0}
        node["parts"] = [
            _part_tree(msg_id, sub, f"{part_id}.{i}" if part_id else str(i))
            for i, sub in enumerate(part.get_payload())
        ]
    else:
        data = part.get_payload(decode=True) or b""
        if node["filename"]:
            node["body"] = {"attachmentId": attachment_id(msg_id, part_id), "size": len(data)}
        else:
            node["body"] = {"size": len(data)}
            if data:
                node["body"]["data"] = b64url_encode(data)
    return node


def attachment_id(msg_id: str, part_id: str) -> str:
    digest = hashlib.sha256(f"{msg_id}/{part_id}".encode()).hexdigest()
    return "ANGjdJ" + digest + "." + part_id.replace(".", "_")


def find_attachment(raw: bytes, msg_id: str, att_id: str) -> bytes | None:
    msg = parse(raw)

    def walk(part: Message, part_id: str):
        if part.is_multipart():
            for i, sub in enumerate(part.get_payload()):
                found = walk(sub, f"{part_id}.{i}" if part_id else str(i))
                if found is not None:
                    return found
            return None
        if attachment_id(msg_id, part_id) == att_id:
            return part.get_payload(decode=True) or b""
        return None

    return walk(msg, "")


def render_message(store: Store, rec: dict, fmt: str, metadata_headers: list[str]) -> dict:
    out = {
        "id": rec["id"],
        "threadId": rec["threadId"],
        "labelIds": rec["labelIds"],
        "snippet": rec["snippet"],
        "sizeEstimate": rec["sizeEstimate"],
        "historyId": str(rec["historyId"]),
        "internalDate": str(rec["internalDate"]),
    }
    raw = store.get_raw(rec["blob"])
    if fmt == "raw":
        out["raw"] = b64url_encode(raw)
    elif fmt == "metadata":
        wanted = {h.lower() for h in metadata_headers} if metadata_headers else None
        out["payload"] = _part_tree(rec["id"], parse(raw), "", wanted, with_bodies=False)
    elif fmt == "full":
        out["payload"] = _part_tree(rec["id"], parse(raw), "")
    return out


# -- search (messages.list q) ----------------------------------------------------------------

_TERM = re.compile(r'(-?)(?:(\w+):)?("[^"]*"|\S+)')


def _date_term(value: str) -> int | None:
    if value.isdigit():
        return int(value)
    m = re.fullmatch(r"(\d{4})[/-](\d{1,2})[/-](\d{1,2})", value)
    if m:
        import datetime as dt

        day = dt.datetime(int(m[1]), int(m[2]), int(m[3]), tzinfo=dt.UTC)
        return int(day.timestamp())
    return None


def matches_query(rec: dict, query: str) -> bool:
    for neg, op, value in _TERM.findall(query or ""):
        value = value.strip('"')
        op = (op or "").lower()
        if op == "rfc822msgid":
            target = value if value.startswith("<") else f"<{value}>"
            ok = rec["messageIdHeader"].lower() == target.lower()
        elif op in ("after", "before", "newer", "older"):
            epoch = _date_term(value)
            if epoch is None:
                ok = True
            elif op in ("after", "newer"):
                ok = rec["internalDate"] // 1000 > epoch
            else:
                ok = rec["internalDate"] // 1000 < epoch
        elif op == "from":
            ok = value.lower() in rec["from"].lower()
        elif op in ("to", "cc"):
            ok = value.lower() in rec["to"].lower()
        elif op == "subject":
            ok = value.lower() in rec["subject"].lower()
        elif op in ("in", "label"):
            ok = value.upper() in rec["labelIds"] or value.lower() == "anywhere"
        elif op == "is":
            ok = value.upper() in rec["labelIds"]
        elif op:
            ok = f"{op}:{value}".lower() in (rec["subject"] + " " + rec["snippet"]).lower()
        else:
            ok = value.lower() in (rec["subject"] + " " + rec["snippet"] + " "
                                   + rec["from"]).lower()
        if bool(neg) == ok:
            return False
    return True
