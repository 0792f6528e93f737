"""Mail arriving from outside: a customer's email built from a spec (or an .eml) and
delivered into a sandbox mailbox's INBOX, and the customer's answer to a sent message."""

from __future__ import annotations

import base64
import email.utils
import re
from email.message import EmailMessage
from email.policy import default as default_policy

from . import gmail
from .http import BadRequest
from .store import Store


def build_message(spec: dict) -> bytes:
    msg = EmailMessage()
    msg["From"] = spec.get("from") or "Customer <customer@example.net>"
    msg["To"] = spec["to"]
    msg["Subject"] = spec.get("subject") or ""
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = spec.get("message_id") or email.utils.make_msgid(domain="example.net")
    for name, value in (spec.get("headers") or {}).items():
        if name.lower() in ("from", "to", "subject", "date", "message-id"):
            del msg[name]  # the spec's own value replaces the default
        msg[name] = value
    msg.set_content(spec.get("body") or "")
    if spec.get("html"):
        msg.add_alternative(spec["html"], subtype="html")
    attachments = list(spec.get("attachments_raw") or [])
    for att in spec.get("attachments") or []:
        attachments.append((att["filename"], base64.b64decode(att["data_base64"]),
                            att.get("content_type") or "application/octet-stream"))
    for filename, data, ctype in attachments:
        maintype, _, subtype = (ctype or "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=filename)
    return msg.as_bytes(policy=default_policy.clone(linesep="\r\n"))


def deliver(store: Store, spec: dict) -> dict:
    """Deliver a customer email into a sandbox mailbox's INBOX (creating the mailbox)."""
    to = (spec.get("to") or "").strip().lower()
    if "@" not in to:
        raise BadRequest("'to' must be a mailbox address")
    if spec.get("eml_bytes"):
        raw = spec["eml_bytes"]
    elif spec.get("raw"):
        raw = gmail.b64_decode_tolerant(spec["raw"])
    else:
        raw = build_message(spec)
    raw = b"Delivered-To: " + to.encode() + b"\r\n" + raw
    labels = spec.get("labelIds") or ["INBOX", "UNREAD", "CATEGORY_PERSONAL"]
    with store.transaction() as state:
        box = gmail.ensure_mailbox(state, to)
        rec = gmail.add_message(store, state, box, raw, labels)
        return {"id": rec["id"], "threadId": rec["threadId"], "labelIds": rec["labelIds"],
                "historyId": str(rec["historyId"]), "messageId": rec["messageIdHeader"],
                "mailbox": to}


def customer_reply(store: Store, mailbox: str, sent_id: str, body: str = "") -> dict:
    """Deliver the customer's answer to the message ``sent_id`` that ``mailbox`` sent:
    from its first To recipient, "Re:" its subject, In-Reply-To its Message-ID and
    References its References plus that id (RFC 5322 section 3.6.4). KeyError for an
    unknown mailbox or message; BadRequest when it is not a sent message."""
    state = store.read()
    rec = state["mailboxes"][mailbox]["messages"][sent_id]
    if "SENT" not in rec["labelIds"]:
        raise BadRequest("only a message the mailbox sent can be answered")
    sent = gmail.parse(store.get_raw(rec["blob"]))
    customers = email.utils.getaddresses([str(v) for v in sent.get_all("To", [])])
    customer = next(((n, a) for n, a in customers if a and a.lower() != mailbox), None)
    message_id = rec["messageIdHeader"]  # with its angle brackets
    if customer is None or not message_id:
        raise BadRequest("the sent message has no recipient or no Message-ID to answer")
    subject = rec["subject"]
    if not re.match(r"^\s*re\s*:", subject, re.IGNORECASE):
        subject = f"Re: {subject}"
    references = str(sent.get("References", "") or "").split()
    return deliver(store, {
        "to": mailbox, "from": email.utils.formataddr(customer), "subject": subject,
        "body": body or "Thanks, that answers it.",
        "headers": {"In-Reply-To": message_id,
                    "References": " ".join([*references, message_id])},
    })
