"""Recognising a mail service's forwarding confirmation: the message a service such as
Gmail sends to a new forwarding target (our generated address) with a code and a link
that the mailbox's owner must use before it forwards anything. Pure: no ORM, no I/O.
Used by the inbound filters (such a message is no ticket), the ingest summary (its code
and link are kept on the row) and the inbound SMTP server (it does not count as the first
forwarded email)."""

from __future__ import annotations

import re
from dataclasses import dataclass

GMAIL_FORWARDING_SENDER = "forwarding-noreply@google.com"
# Gmail's subject: "(#<code>) Gmail Forwarding Confirmation - Receive Mail from <address>"
# (older ones have no "(#code)" part; a localized one may word the subject otherwise, so
# the sender, the code line and the link are what is checked). The link opens Gmail's own
# confirmation page.
_GMAIL_SUBJECT_CODE = re.compile(r"\(#(\d{5,12})\)")
_GMAIL_SUBJECT_FROM = re.compile(r"Receive Mail from\s+(\S+@\S+)", re.IGNORECASE)
_GMAIL_TEXT_CODE = re.compile(r"(?:confirmation code|code)\s*:\s*(\d{5,12})", re.IGNORECASE)
_GMAIL_LINK = re.compile(
    r"https://(?:mail-settings|mail|isolated\.mail)\.google\.com/mail/(?:u/\d+/)?vf-[^\s\"'<>)]+")


@dataclass(frozen=True)
class ForwardingConfirmation:
    """A mail service asking the owner of a mailbox to confirm forwarding to us: which
    service, the address that asked to forward, the code to type in, the link to open."""

    service: str
    requested_by: str
    code: str
    link: str


def forwarding_confirmation(*, sender: str, subject: str, text: str
                            ) -> ForwardingConfirmation | None:
    """Gmail's forwarding confirmation (from ``forwarding-noreply@google.com``, its subject
    naming "Forwarding Confirmation" or carrying the code, or its text Gmail's
    confirmation link), else None. Pure and cheap: the sender is checked first."""
    if (sender or "").strip().lower() != GMAIL_FORWARDING_SENDER:
        return None
    subject, text = subject or "", (text or "")[:20000]
    link_match = _GMAIL_LINK.search(text)
    code_match = _GMAIL_SUBJECT_CODE.search(subject) or _GMAIL_TEXT_CODE.search(text)
    if not (link_match or code_match or "forwarding confirmation" in subject.lower()):
        return None
    requested = _GMAIL_SUBJECT_FROM.search(subject)
    return ForwardingConfirmation(
        service="Gmail", requested_by=(requested.group(1).rstrip(".,)").lower()
                                       if requested else ""),
        code=code_match.group(1) if code_match else "",
        link=link_match.group(0).rstrip(".,") if link_match else "")


def shown_link(link: str) -> str:
    """``link`` when it leads to Gmail's own confirmation page, else "" (a stored value
    is checked again before the page makes it a link)."""
    return link if _GMAIL_LINK.fullmatch(link or "") else ""
