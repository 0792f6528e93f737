"""Per-connection inbound filters. Each skip is a (code, human reason) pair that the
ingest step records on the InboundEmail.

Contract: ``prefilter`` is pure except for the per-sender rate counter in Redis (one
round trip, idempotent per InboundEmail id, so a replay is not counted twice). The two
filters that need the database (allowed emails: new threads | replies; allowed senders:
known contacts) are ``thread_filter`` and ``sender_filter``, called by ingest inside its
transaction once the thread and the contact are known.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from channels_email.mime import ParsedEmail
from channels_email.models import AllowedEmails, AllowedSenders, EmailConnection
from channels_email.providers.forwarding.confirmation import forwarding_confirmation
from helpdesk.coordination import redis_client, redis_key
from helpdesk.patterns import pattern_search


@dataclass(frozen=True)
class Skip:
    code: str  # stable, machine-readable: loop, bounce, auto_reply, blocked, ...
    reason: str  # for people: says which rule and which value


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1] if "@" in address else ""


def pattern_matches(pattern: str, value: str) -> bool:
    """Block-list pattern: ``/regex/`` (case-insensitive search), a wildcard with ``*`` or
    ``?``, or an exact (case-insensitive) text."""
    pattern = pattern.strip()
    if not pattern or not value:
        return False
    if len(pattern) > 2 and pattern.startswith("/") and pattern.endswith("/"):
        # Time-limited (helpdesk.patterns); a bad pattern is refused at save time.
        return pattern_search(pattern[1:-1], value[:2000])
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value.lower(), pattern.lower())
    return value.lower() == pattern.lower()


# One round trip: record this email (by InboundEmail id, so a replay is not counted
# twice), drop what fell out of the window, count what is in it, keep the key alive.
_COUNT_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2] - ARGV[3] - 3600)
local count = redis.call('ZCOUNT', KEYS[1], ARGV[2] - ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3] + 3600)
return count
"""


@lru_cache(maxsize=1)
def _count_script():
    return redis_client().register_script(_COUNT_SCRIPT)


def sender_count_in_window(*, connection: EmailConnection, sender: str, inbound_id: int,
                           received_at: datetime) -> int:
    """How many mails from ``sender`` reached ``connection`` in the window ending at
    ``received_at`` (arrival time), this one included. A sorted set per sender keyed by
    InboundEmail id, so counting the same email twice is impossible."""
    window = connection.sender_rate_window_minutes * 60
    key = redis_key("rate", connection.pk, sender)
    return int(_count_script()(keys=[key],
                               args=[str(inbound_id), received_at.timestamp(), window]))


def prefilter(*, parsed: ParsedEmail, connection: EmailConnection,
              tenant_addresses: set[str], inbound_id: int,
              received_at: datetime) -> Skip | None:
    """The filters that need neither the thread nor the contact, in a fixed order."""
    sender = parsed.from_.email if parsed.from_ else ""
    if parsed.loop_marker:
        return Skip("loop", "our own outbound mail came back (X-Helpdesk-Loop header)")
    if sender in tenant_addresses:
        # The workspace's own mailboxes, aliases and every address forwarded to us (a
        # forwarding mailbox's support address is its address): mail from one of them
        # that came back in, through a forwarder or directly, is a loop.
        return Skip("loop", f"sent from a connected, alias or forwarded address ({sender})")
    confirmation = forwarding_confirmation(sender=sender, subject=parsed.subject,
                                           text=parsed.text)
    if confirmation is not None:
        return Skip("forwarding_confirmation",
                    f"{confirmation.service} asks to confirm forwarding"
                    + (f" from {confirmation.requested_by}" if confirmation.requested_by
                       else "") + "; the code and link are on the mailbox's page")
    if parsed.bounce is not None:
        return Skip("bounce", "delivery failure report; handed to delivery tracking")
    if parsed.is_delay:
        return Skip("delay", "temporary delivery warning (the mail server keeps trying)")
    if parsed.is_complaint:
        return Skip("complaint", "abuse feedback report")
    if connection.skip_auto_replies:
        if parsed.is_challenge:
            return Skip("challenge", "challenge-response request from the sender's spam filter")
        if parsed.is_auto_reply:
            return Skip("auto_reply", f"automatic reply ({parsed.auto_reply_reason})")
    for pattern in connection.block_list:
        if pattern_matches(pattern, sender):
            return Skip("blocked", f"sender matches the block list entry {pattern!r}")
        if pattern_matches(pattern, parsed.subject):
            return Skip("blocked", f"subject matches the block list entry {pattern!r}")
    if connection.allowed_sender_domains:
        domain = _domain(sender)
        allowed = [d.lower().lstrip("@") for d in connection.allowed_sender_domains]
        if not any(domain == d or domain.endswith("." + d) for d in allowed):
            return Skip("domain_not_allowed",
                        f"sender domain {domain or '(none)'} is not in the allowed domains")
    count = sender_count_in_window(connection=connection, sender=sender, inbound_id=inbound_id,
                                   received_at=received_at)
    if count > connection.sender_rate_limit:
        return Skip("sender_rate_limit",
                    f"{count} mails from {sender} within {connection.sender_rate_window_minutes}"
                    f" minutes (limit {connection.sender_rate_limit}): a mail loop is likely")
    return None


def sender_always_accepted(connection: EmailConnection) -> bool:
    """True when neither ``thread_filter`` nor ``sender_filter`` can refuse a sender on
    this connection (the defaults): ingest may then upsert the contact before it knows
    the thread."""
    return (connection.allowed_emails == AllowedEmails.BOTH
            and connection.allowed_senders == AllowedSenders.ANYONE)


def thread_filter(*, connection: EmailConnection, is_reply: bool) -> Skip | None:
    if connection.allowed_emails == AllowedEmails.NEW_THREADS and is_reply:
        return Skip("replies_not_allowed", "this connection accepts new threads only")
    if connection.allowed_emails == AllowedEmails.REPLIES and not is_reply:
        return Skip("new_threads_not_allowed", "this connection accepts replies only")
    return None


def sender_filter(*, connection: EmailConnection, contact_known: bool) -> Skip | None:
    if connection.allowed_senders == AllowedSenders.KNOWN_CONTACTS and not contact_known:
        return Skip("unknown_sender", "this connection accepts mail from known contacts only")
    return None
