"""Parse raw RFC 5322 bytes into a ParsedEmail (pure: no database, no I/O).

Contract:
- ``parse_email(raw, limits=...)`` never raises, whatever the bytes. Mail with defects is
  parsed best-effort and ``defects`` lists them. Mail that cannot be parsed at all, has
  no derivable sender, or exceeds a limit comes back with ``quarantine_reason`` set
  (and whatever fields could be read).
- Message-IDs are normalised by ``normalize_message_id``: angle brackets and
  surrounding white space removed, case kept. A message without one gets a stable
  synthetic id derived from its bytes, so re-parsing the same bytes gives the same id.
- Addresses are normalised to lower case (``contacts.models.normalize_email``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ParseLimits:
    max_raw_bytes: int = 50 * 1024 * 1024
    max_attachments: int = 200
    max_depth: int = 30
    max_header_bytes: int = 512 * 1024
    max_parse_seconds: float = 20.0


DEFAULT_LIMITS = ParseLimits()


@dataclass(frozen=True)
class Address:
    email: str  # normalised, lower case
    name: str = ""


@dataclass
class ParsedAttachment:
    filename: str
    content_type: str
    content: bytes
    content_id: str = ""  # without angle brackets
    inline: bool = False


@dataclass
class BounceRecipient:
    recipient: str
    status: str = ""  # e.g. "5.1.1"
    diagnostic: str = ""
    action: str = ""  # failed | delayed | ...


@dataclass
class BounceInfo:
    """A permanent delivery failure report (RFC 3464 or a classic MTA text)."""

    original_message_id: str = ""  # normalised; "" when the report does not carry it
    recipients: list[BounceRecipient] = field(default_factory=list)
    # Every Message-ID the report mentions (embedded headers, In-Reply-To, References),
    # normalised: the outbound service matches these against the ids it sent.
    referenced_message_ids: list[str] = field(default_factory=list)


@dataclass
class ParsedEmail:
    message_id: str
    message_id_synthetic: bool = False
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    subject: str = ""
    from_: Address | None = None
    sender: Address | None = None
    reply_to: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    delivered_to: list[str] = field(default_factory=list)
    date: datetime | None = None
    text: str = ""  # full plain-text body (derived from the HTML when there is no text part)
    html: str = ""  # sanitised HTML ("" when the message has no HTML part)
    reply_text: str = ""  # the new part of text, without quoted history and signature
    attachments: list[ParsedAttachment] = field(default_factory=list)
    is_auto_reply: bool = False
    auto_reply_reason: str = ""  # e.g. "auto-submitted: auto-replied", "precedence: bulk"
    is_challenge: bool = False  # challenge-response ("verify you are human") requests
    is_complaint: bool = False  # abuse feedback report (RFC 5965 ARF)
    is_delay: bool = False  # a temporary delivery warning: not a bounce
    bounce: BounceInfo | None = None
    dmarc: str = "none"  # pass | fail | none, from Authentication-Results
    importance: str = "normal"  # high | normal | low (Importance / X-Priority / Priority)
    loop_marker: str = ""  # value of our own X-Helpdesk-Loop header when present
    headers: dict[str, str] = field(default_factory=dict)  # a few raw headers, decoded
    defects: list[str] = field(default_factory=list)
    raw_size: int = 0
    quarantine_reason: str = ""

    @property
    def is_bounce(self) -> bool:
        return self.bounce is not None

    @property
    def thread_ids(self) -> list[str]:
        """Every id that can tie this message to a thread, most specific first."""
        seen: dict[str, None] = {}
        for mid in [*self.in_reply_to, *reversed(self.references)]:
            seen.setdefault(mid, None)
        return list(seen)


LOOP_HEADER = "X-Helpdesk-Loop"


def normalize_message_id(value: str) -> str:
    """``<Abc@Host>`` -> ``Abc@Host``; empty string when nothing id-like remains."""
    value = (value or "").strip()
    if value.startswith("<") and ">" in value:
        value = value[1 : value.index(">")]
    return value.strip().strip("<>").strip()


def parse_email(raw: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedEmail:
    """Parse ``raw``; never raises. See the module docstring for the contract."""
    raise NotImplementedError  # implemented in the parsing work of issue 3
