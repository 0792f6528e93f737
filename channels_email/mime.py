"""Parse raw RFC 5322 bytes into a ParsedEmail (pure: no database, no I/O).

Contract:
- ``parse_email(raw, limits=...)`` never raises, whatever the bytes. Mail with defects is
  parsed best-effort and ``defects`` lists them. Mail that cannot be parsed at all, has
  no derivable sender, or exceeds a limit comes back with ``quarantine_reason`` set
  (and whatever fields could be read).
- Message-IDs are normalised by ``normalize_message_id``: angle brackets and
  surrounding white space removed, case kept. A message without one gets a stable
  synthetic id derived from its bytes, so re-parsing the same bytes gives the same id.
- Addresses are normalised to lower case (``contacts.models.normalize_email``); they are
  read as RFC 5322 says where it matters: a comment is not a display name, a quoted
  local part keeps its quotes.
- Text is decoded by its declared charset read as its superset (``decode_bytes``); raw
  8-bit header bytes as UTF-8, else the message's declared charset, else a detector
  (``HeaderCharset``). The detector and the header salvage run only for mail that needs
  them: ASCII/UTF-8 headers and well-formed header blocks take the stdlib's path alone.
- A header block cut short by a line that is no header field is salvaged (the fields
  below it kept), a leading BOM dropped, bare CR and mixed line endings made LF; each
  such repair is named in ``defects``.
"""

from __future__ import annotations

import binascii
import codecs
import email.header
import email.utils
import functools
import hashlib
import io
import mimetypes
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.policy import EmailPolicy, compat32

from channels_email.sanitize import cid_references, html_to_text, sanitize_html


@dataclass(frozen=True)
class ParseLimits:
    max_raw_bytes: int = 50 * 1024 * 1024
    max_attachments: int = 500
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
class ComplaintInfo:
    """An abuse feedback report (RFC 5965 ARF, or a known non-standard loop format)."""

    feedback_type: str = ""  # abuse | fraud | virus | other ... ("" when not said)
    # Who complained, when the report says (Original-Rcpt-To; often redacted), lower case.
    recipients: list[str] = field(default_factory=list)
    # Every Message-ID the report mentions, normalised, as for bounces.
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
    attachments: list[ParsedAttachment] = field(default_factory=list)
    is_auto_reply: bool = False
    auto_reply_reason: str = ""  # e.g. "auto-submitted: auto-replied", "precedence: bulk"
    is_challenge: bool = False  # challenge-response ("verify you are human") requests
    complaint: ComplaintInfo | None = None  # abuse feedback report (RFC 5965 ARF)
    is_delay: bool = False  # a temporary delivery warning: not a bounce
    bounce: BounceInfo | None = None
    dmarc: str = "none"  # pass | fail | none, from Authentication-Results
    importance: str = "normal"  # high | normal | low (Importance / X-Priority / Priority)
    loop_marker: str = ""  # value of our own X-Helpdesk-Loop header when present
    headers: dict[str, str] = field(default_factory=dict)  # a few raw headers, decoded
    defects: list[str] = field(default_factory=list)
    raw_size: int = 0
    quarantine_reason: str = ""

    @functools.cached_property
    def reply_text(self) -> str:
        """The new part of ``text``, without quoted history and signature. Computed on
        first use (about 2 ms): ingest does not need it, the ticket view does."""
        return reply_part(self.text)

    @property
    def is_bounce(self) -> bool:
        return self.bounce is not None

    @property
    def is_complaint(self) -> bool:
        return self.complaint is not None

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


# --------------------------------------------------------------------------- parsing

_ANGLE_ID = re.compile(r"<([^<>\s]{1,990})>")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_FOLD = re.compile(r"\r?\n[ \t]*")
_CHARSET_ALIASES = {
    "ks_c_5601": "cp949", "iso-8859-8-i": "iso-8859-8",
    "unicode-1-1-utf-7": "utf-7", "x-unknown": "", "unknown-8bit": "", "x-user-defined": "",
    "windows-874": "cp874", "iso-2022-jp-ms": "iso2022_jp_ext", "cp-850": "cp850",
    "ascii": "us-ascii", "default": "", "none": "", "x-sjis": "shift_jis",
}
# Senders label mail with a charset and write its superset (the WHATWG Encoding Standard
# decodes these labels so, https://encoding.spec.whatwg.org/#names-and-labels): decode
# with the superset, which reads the subset's bytes identically.
_SUPERSETS = {  # keyed by codecs.lookup(label).name
    "gb2312": ("gb18030",), "gbk": ("gb18030",),
    "iso8859-1": ("cp1252", "iso8859-1"), "iso8859-9": ("cp1254", "iso8859-9"),
    "iso8859-11": ("cp874", "iso8859-11"), "tis-620": ("cp874", "tis-620"),
    "euc_kr": ("cp949",), "shift_jis": ("cp932", "shift_jis"),
    "big5": ("cp950", "big5hkscs"), "iso2022_jp": ("iso2022_jp_2", "iso2022_jp_ext"),
}
# What a detector may choose between for 8-bit bytes that are not UTF-8 and whose
# declared charset does not read them (item order: the tie-break, most common first).
_DETECT_CANDIDATES = ("gb18030", "big5", "cp932", "euc_jp", "cp949", "cp1252", "cp1251",
                      "cp1250", "cp1253", "cp1254", "cp1256", "cp1255", "cp1257", "cp1258")
_DETECT_SAMPLE = 8 * 1024
_PENALTY_SAMPLE = 2000  # characters: enough to tell scripts apart, cheap to score
_REPLY_LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "pl", "sv", "da", "cs"]
_REPLY_TEXT_LIMIT = 100_000
_SAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]+")


REPORT_TYPES = ("message/delivery-status", "message/global-delivery-status",
                "text/delivery-status", "message/xdelivery-status", "message/feedback-report",
                "message/disposition-notification")


class _RawHeaderPolicy(EmailPolicy):
    """policy.default, except that reading a header returns its raw text instead of a
    parsed header object. The parser and message class are policy.default's; header
    values are decoded by this module (``decode_header_value``, ``_addresses``), which
    tolerates what the header registry raises on, and costs a third of the time."""

    def header_fetch_parse(self, name, value):
        return value


_POLICY = _RawHeaderPolicy()


class _Limit(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _clean(value: str) -> str:
    """PostgreSQL text cannot hold NUL; lone surrogates cannot be encoded."""
    if not value:
        return ""
    value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _codec(charset: str | None) -> str | None:
    charset = (charset or "").strip().strip('"').lower()
    charset = _CHARSET_ALIASES.get(charset, charset)
    if not charset:
        return None
    try:
        return codecs.lookup(charset).name
    except (LookupError, UnicodeError, ValueError):  # unknown, 8-bit or NUL in the label
        return None


def _codecs_for(charset: str | None) -> tuple[str, ...]:
    """The codecs to try for a declared charset: its superset(s), else itself."""
    codec = _codec(charset)
    if codec is None:
        return ()
    return _SUPERSETS.get(codec, (codec,))


_SUSPICIOUS = re.compile("[\x80-\x9f\ue000-\uf8ff\u3130-\u318f\u2500-\u257f\ufffd"
                         "\u3016-\u301b]")
_CJK = re.compile("[\u3040-\u9fff\uac00-\ud7a3]")
_HANGUL = re.compile("[\uac00-\ud7a3]")
_HAN = re.compile("[\u4e00-\u9fff]")
_GREEK_TO_ARABIC = re.compile("[\u0370-\u06ff]")
_GLUED_TO_LATIN = re.compile("[a-zA-Z][\u3040-\u9fff\uac00-\ud7a3]|"
                             "[\u3040-\u9fff\uac00-\ud7a3][a-zA-Z]")
_NON_ASCII_TOKEN = re.compile(r"\S*[^\x00-\x7f]\S*")
_NON_ASCII_WORD = re.compile(r"[^\W\d_]*[^\x00-\x7f\W\d_][^\W\d_]*")


def _script_penalty(text: str) -> int:
    """How implausible ``text`` is as human writing: control and private-use characters,
    words mixing Latin with another alphabet, Latin words of accented letters only
    (Cyrillic read as Windows-1250), capitals inside words, Hanja or Greek amid Hangul
    (Chinese read as EUC-KR), ideographs glued inside Latin words (single-byte text read
    as CJK)."""
    penalty = len(_SUSPICIOUS.findall(text))
    if _CJK.search(text):
        penalty += len(_GREEK_TO_ARABIC.findall(text)) + len(_GLUED_TO_LATIN.findall(text))
        if _HANGUL.search(text):
            penalty += len(_HAN.findall(text))
        return penalty
    for word in _NON_ASCII_WORD.findall(text):
        if len(word) < 3:
            continue
        latin = sum(1 for ch in word if ch < "\u0250")
        if latin and latin < len(word) and _GREEK_TO_ARABIC.search(word):
            penalty += 1  # Latin and Greek/Cyrillic/Hebrew/Arabic in one word
        elif latin == len(word) and not any(ch.isascii() for ch in word):
            penalty += 1
        # a capital after a small letter inside a word: Greek read as Windows-1251 ("ейЬ")
        penalty += sum(1 for a, b in zip(word, word[1:], strict=False)
                       if a.islower() and b.isupper())
    return penalty


def detect_charset(data: bytes) -> str | None:
    """The most plausible of ``_DETECT_CANDIDATES`` for 8-bit bytes (charset-normalizer,
    then a script-plausibility tie-break for short samples); None when none reads them."""
    from charset_normalizer import from_bytes  # imported on the slow path only

    sample = data[:_DETECT_SAMPLE]
    try:
        results = list(from_bytes(sample, cp_isolation=list(_DETECT_CANDIDATES)))
    except (LookupError, ValueError, UnicodeError):
        results = []
    if len(results) == 1:
        return results[0].encoding
    best, best_key = None, None
    for result in results:
        # Only the words with non-ASCII letters tell the candidates apart.
        words = " ".join(_NON_ASCII_TOKEN.findall(str(result)))[:_PENALTY_SAMPLE]
        key = (_script_penalty(words), round(result.chaos, 2),
               _DETECT_CANDIDATES.index(result.encoding)
               if result.encoding in _DETECT_CANDIDATES else len(_DETECT_CANDIDATES))
        if best_key is None or key < best_key:
            best, best_key = result.encoding, key
    return best


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 with U+FFFD for a few broken sequences (a truncated name, one stray byte),
    when valid multi-byte characters outnumber the broken ones two to one; else None."""
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd")
    good = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if good >= 2 * bad else None


def decode_bytes(data: bytes, charset: str | None, fallback: str | None = None) -> str:
    """Bytes of a part or encoded word in its declared charset (read as its superset:
    GB2312 as GB18030, ISO-8859-1 as Windows-1252, ...); bytes that charset cannot read
    are tried as UTF-8, then as ``fallback`` (the message's own declared charset), then
    as the charset a detector finds plausible, then as Windows-1252 with U+FFFD for what
    is left. Never raises."""
    tried = set()
    for codec in (*_codecs_for(charset), "utf-8", *_codecs_for(fallback)):
        if codec in tried:
            continue
        tried.add(codec)
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            continue
    mostly = _mostly_utf8(data)
    if mostly is not None:
        return mostly
    detected = detect_charset(data)
    if detected:
        try:
            return data.decode(detected)
        except (UnicodeDecodeError, LookupError, ValueError):
            pass
    return data.decode("cp1252", errors="replace")


class HeaderCharset:
    """How to read raw 8-bit bytes in one message's header block (RFC 6532 allows UTF-8;
    older senders write their local charset with no RFC 2047 encoding): UTF-8 when valid,
    else the message's declared charset, else what a detector finds in all the 8-bit
    header bytes and the first text part together (one sample reads better than one
    name). Computed on first need: mail with ASCII or UTF-8 headers never gets here."""

    def __init__(self, msg: EmailMessage | None):
        self._msg = msg

    @functools.cached_property
    def declared(self) -> str | None:
        msg = self._msg
        if msg is None:
            return None
        for part in (msg, *(_first_text_part(msg),)):
            if part is None:
                continue
            try:
                charset = part.get_param("charset", header="content-type")
            except Exception:  # noqa: BLE001 - broken parameters: no declared charset
                charset = None
            if isinstance(charset, tuple):
                charset = email.utils.collapse_rfc2231_value(charset)
            codec = _codec(str(charset)) if charset else None
            if codec and codec not in ("ascii", "utf-8"):
                return codec
        return None

    @functools.cached_property
    def detected(self) -> str | None:
        msg = self._msg
        if msg is None:
            return None
        sample = b" ".join(
            str(value).encode("utf-8", "surrogateescape") for _, value in msg.raw_items()
            if not str(value).isascii())
        text_part = _first_text_part(msg)
        if text_part is not None and len(sample) < _DETECT_SAMPLE:
            body = _payload_bytes(text_part)[:_DETECT_SAMPLE]
            if not body.isascii():
                sample += b"\n" + body
        return detect_charset(sample) if sample else None

    def decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        mostly = _mostly_utf8(data)
        if mostly is not None:
            return mostly
        for codec in _codecs_for(self.declared):
            try:
                return data.decode(codec)
            except (UnicodeDecodeError, LookupError, ValueError):
                continue
        if self.detected:  # computed here, not before: declared charsets are the usual case
            try:
                return data.decode(self.detected)
            except (UnicodeDecodeError, LookupError, ValueError):
                pass
        return decode_bytes(data, None)


def _first_text_part(msg: EmailMessage) -> EmailMessage | None:
    if not msg.is_multipart():
        return msg if msg.get_content_maintype() == "text" else None
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            return part
    return None


def _unsurrogate(value: str, charset: HeaderCharset | None = None) -> str:
    """8-bit header bytes arrive surrogate-escaped from BytesParser: decode them as UTF-8,
    else as ``charset`` reads them (the message's declared charset, else a detector);
    without a ``charset`` (a caller matching patterns, not showing text) as Windows-1252."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        data = value.encode("utf-8", "surrogateescape")
        if charset is not None:
            return charset.decode(data)
        mostly = _mostly_utf8(data)
        return mostly if mostly is not None else data.decode("cp1252", errors="replace")


def decode_header_value(value, charset: HeaderCharset | None = None) -> str:
    """A raw header value -> text: unfolded, RFC 2047 words decoded (unknown or wrongly
    declared charsets tolerated), raw 8-bit bytes decoded as ``HeaderCharset`` says.
    Never raises."""
    if value is None:
        return ""
    value = _unsurrogate(str(value), charset)
    if "\x1b$" in value:  # raw ISO-2022-JP, sent without RFC 2047 encoding
        try:
            value = value.encode("ascii").decode("iso2022_jp")
        except (UnicodeError, LookupError):
            pass
    value = _FOLD.sub(" ", value)
    if "=?" not in value:
        return value.strip()
    try:
        chunks = email.header.decode_header(value)
    except Exception:  # noqa: BLE001 - malformed encoded words: keep the text as is
        return value.strip()
    out = []
    for chunk, label in chunks:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, label or "us-ascii",
                                    charset.declared if charset is not None else None))
        else:
            out.append(chunk)
    return "".join(out).strip()


def _raw_headers(msg: EmailMessage) -> dict[str, list[str]]:
    """Header name (lower case) -> raw values, without the policy's header parsing (which
    can raise on hostile input)."""
    headers: dict[str, list[str]] = {}
    for name, value in msg.raw_items():
        headers.setdefault(str(name).strip().lower(), []).append(str(value))
    return headers


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _norm_addr(address: str) -> str:
    address = _unsurrogate(address or "").strip().strip("<>").strip().lower()
    if any(ch.isspace() for ch in address) and not (address.startswith('"') and '"@' in address):
        found = re.findall(r"[^\s<>]+@[^\s<>]+", address)
        address = found[-1] if found else ""
    return address.replace("\x00", "")


def _careful_pairs(value: str) -> list[tuple[str, str]] | None:
    """(display name, address) pairs by the stdlib's RFC 5322 grammar (the one
    ``policy.default`` uses): comments are not names, quoted local parts keep their
    quotes. About ten times the cost of ``getaddresses``, so only used for values with a
    comment or a quoted local part; None when it cannot read the value."""
    from email._header_value_parser import get_address_list

    try:
        address_list, rest = get_address_list(value)
        pairs = []
        for mailbox in address_list.all_mailboxes:
            local, domain = mailbox.local_part or "", mailbox.domain or ""
            if not local or not domain:
                continue
            addr = mailbox.addr_spec
            if " " in local and '"@' not in value:
                addr = f"{local.split()[-1]}@{domain}"  # unquoted spaces: the last word
            pairs.append((mailbox.display_name or "", addr))
    except Exception:  # noqa: BLE001 - the grammar gave up: the lenient reading stands
        return None
    return pairs if pairs and not str(rest).strip(" ,;") else None


def _addresses(raw_values: list[str], charset: HeaderCharset | None = None) -> list[Address]:
    result: list[Address] = []
    seen: set[str] = set()
    for raw in raw_values:
        decoded = _FOLD.sub(" ", _unsurrogate(raw, charset))
        pairs = None
        if "(" in decoded or '"@' in decoded:
            pairs = _careful_pairs(decoded)
        if pairs is None:
            try:
                pairs = email.utils.getaddresses([decoded])
            except Exception:  # noqa: BLE001 - fall back to anything address-shaped
                pairs = [("", m) for m in re.findall(r"[^\s<>,;\"]+@[^\s<>,;\"]+", decoded)]
        if not any("@" in addr for _, addr in pairs):
            pairs += [("", m) for m in re.findall(r"[^\s<>,;\"():]+@[^\s<>,;\"():]+", decoded)]
        for name, addr in pairs:
            if not name and " " in addr.strip() and "<" not in addr and '"' not in addr:
                # "John Smith john@example.com": the words before the address are its name
                words = addr.split()
                name, addr = " ".join(w for w in words if "@" not in w), words[-1]
            addr = _norm_addr(addr)
            if "@" not in addr or addr in seen or len(addr) > 320:
                continue
            seen.add(addr)
            name = decode_header_value(name, charset).strip().strip('"').strip()
            if name.lower() == addr:
                name = ""
            result.append(Address(email=_clean(addr), name=_clean(name)[:200]))
    return result


def _message_ids(raw_values: list[str]) -> list[str]:
    ids: list[str] = []
    for raw in raw_values:
        value = _unsurrogate(raw)
        found = _ANGLE_ID.findall(value)
        if not found:
            found = [tok.strip(",;") for tok in value.split() if "@" in tok.strip("@")]
        for mid in found:
            mid = _clean(normalize_message_id(mid))
            if mid and mid not in ids:
                ids.append(mid)
    return ids


def _bounded_references(ids: list[str], keep: int = 40) -> list[str]:
    """The root and the newest ids of a long References chain (the middle adds nothing
    but lock keys and rows)."""
    if len(ids) <= keep:
        return ids
    return [ids[0], *ids[-(keep - 1):]]


def _header_block_size(raw: bytes) -> int:
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = raw.find(sep)
        if pos >= 0:
            return pos
    return len(raw)


def _filename(part: EmailMessage) -> str:
    name = ""
    try:
        name = part.get_filename() or ""
    except Exception:  # noqa: BLE001 - broken RFC 2231 parameters
        name = ""
    if not name:
        try:
            name = part.get_param("name", header="content-type") or ""
            if isinstance(name, tuple):
                name = email.utils.collapse_rfc2231_value(name)
        except Exception:  # noqa: BLE001
            name = ""
    name = decode_header_value(str(name), HeaderCharset(part))
    name = _SAFE_NAME.sub("_", name).strip(" ._") if name else ""
    return _clean(name)[:200]


def _payload_bytes(part: EmailMessage) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - undecodable transfer encoding: keep what is there
        data = None
    if data is None:
        payload = part.get_payload()
        if isinstance(payload, str):
            data = payload.encode("utf-8", "surrogateescape")
        else:
            data = b""
    return data


def _part_text(part: EmailMessage) -> str:
    try:
        charset = part.get_content_charset()
    except Exception:  # noqa: BLE001
        charset = None
    return decode_bytes(_payload_bytes(part), charset)


def _message_bytes(part: EmailMessage) -> bytes:
    """An attached message/rfc822 as bytes for an .eml file."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    for candidate in (inner, part):
        if candidate is None:
            continue
        try:
            buffer = io.BytesIO()
            BytesGenerator(buffer, mangle_from_=False, policy=compat32).flatten(candidate)
            data = buffer.getvalue()
            if candidate is part:  # drop the wrapper's own header block
                data = data[_header_block_size(data):].lstrip(b"\r\n")
            return data
        except Exception:  # noqa: BLE001 - try the next way
            continue
    return _payload_bytes(part)


_UU_ENCODINGS = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
# An inline uuencoded file in a text body: "begin <mode> <name>", lines of 32..96, "end"
# (POSIX uuencode, https://pubs.opengroup.org/onlinepubs/9699919799/utilities/uuencode.html).
_UU_BLOCK = re.compile(r"^begin [0-7]{3,4} ([^\n]+?)[ \t]*\n((?:[ -`]{1,62}\n)+?)end[ \t]*$",
                       re.MULTILINE)


def _uudecode(lines: str) -> bytes | None:
    out = []
    for line in lines.splitlines():
        if not line or line[0] == "`":
            continue
        try:
            out.append(binascii.a2b_uu(line))
        except binascii.Error:
            # Trailing garbage after what the length character announces (as the
            # stdlib's own uudecoding tolerates): decode only that much.
            try:
                out.append(binascii.a2b_uu(line[: (((ord(line[0]) - 32) & 63) * 4 + 5) // 3]))
            except binascii.Error:
                return None
    return b"".join(out)


def _extract_uuencoded(text: str) -> tuple[str, list[ParsedAttachment]]:
    """Inline uuencoded files cut out of a text body, as attachments; the text without
    them. A block that does not decode stays in the text."""
    files: list[ParsedAttachment] = []

    def cut(match: re.Match) -> str:
        content = _uudecode(match.group(2))
        if content is None:
            return match.group(0)
        name = _SAFE_NAME.sub("_", match.group(1)).strip(" ._")[:200] or "attachment.bin"
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        files.append(ParsedAttachment(filename=_clean(name), content_type=ctype,
                                      content=content))
        return ""

    rest = _UU_BLOCK.sub(cut, text.replace("\r\n", "\n"))
    return (re.sub(r"\n{3,}", "\n\n", rest) if files else text), files


def _uu_filename(part: EmailMessage) -> str:
    payload = part.get_payload()
    if isinstance(payload, str):
        match = re.search(r"^begin [0-7]{3,4} ([^\r\n]+?)[ \t]*\r?$", payload[:2000],
                          re.MULTILINE)
        if match:
            return _clean(_SAFE_NAME.sub("_", _unsurrogate(match.group(1))).strip(" ._"))[:200]
    return ""


@dataclass
class _Walk:
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    attachments: list[tuple[EmailMessage, str]] = field(default_factory=list)  # (part, ctype)
    reports: list[EmailMessage] = field(default_factory=list)  # delivery-status etc.
    embedded_headers: list[EmailMessage | str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    uuencoded: list[ParsedAttachment] = field(default_factory=list)  # cut out of text bodies


_BOUNDARY_LINE = re.compile(rb"^--([^\r\n]{1,200}?)[ \t]*\r?$", re.MULTILINE)


def _reparse_multipart(part: EmailMessage, ctype: str) -> EmailMessage | None:
    """Parse a multipart whose declared boundary does not match its body, using the
    first delimiter line found in the body."""
    payload = _payload_bytes(part)
    match = _BOUNDARY_LINE.search(payload)
    if not match:
        return None
    boundary = match.group(1).decode("ascii", "replace").replace('"', "")
    # an 8-bit content type arrives surrogate-escaped: write its bytes back as they were
    head = f'Content-Type: {ctype}; boundary="{boundary}"\r\n\r\n'.encode(
        "utf-8", "surrogateescape")
    try:
        recovered = BytesParser(policy=_POLICY).parsebytes(head + payload)
    except Exception:  # noqa: BLE001
        return None
    return recovered if recovered.is_multipart() else None


def _walk(part: EmailMessage, depth: int, acc: _Walk, limits: ParseLimits, deadline: float,
          top: bool = False) -> None:
    if depth > limits.max_depth:
        raise _Limit(f"too_deep: MIME nesting deeper than {limits.max_depth} levels")
    if time.monotonic() > deadline:
        raise _Limit(f"too_slow: parsing took longer than {limits.max_parse_seconds:g} s")
    ctype = part.get_content_type()
    maintype = ctype.split("/", 1)[0]
    if maintype == "multipart":
        if not part.is_multipart():
            # The boundary was missing or wrong, so the stdlib left the parts as text.
            recovered = _reparse_multipart(part, ctype)
            if recovered is None:
                acc.defects.append("UnparsedMultipart")
                text = _part_text(part)
                if text.strip():
                    acc.texts.append(text)
                return
            part = recovered
        for sub in part.get_payload() or []:
            if isinstance(sub, EmailMessage):
                _walk(sub, depth + 1, acc, limits, deadline)
        return
    if ctype in REPORT_TYPES:
        acc.reports.append(part)
        return
    if ctype in ("message/rfc822", "message/global"):
        inner = part.get_payload()
        if isinstance(inner, list) and inner:
            acc.embedded_headers.append(inner[0])
        acc.attachments.append((part, ctype))
        return
    if ctype in ("text/rfc822-headers", "text/global-headers"):
        acc.embedded_headers.append(_part_text(part))
        acc.attachments.append((part, ctype))
        return
    try:
        disposition = part.get_content_disposition()
    except Exception:  # noqa: BLE001
        disposition = None
    if ctype in ("text/plain", "text/html") and disposition != "attachment" and (
        top or not _filename(part)
    ) and str(part.get("content-transfer-encoding", "")).strip().lower() not in _UU_ENCODINGS:
        text = _part_text(part)
        if ctype == "text/plain":
            if "begin " in text and "\nend" in text:
                text, files = _extract_uuencoded(text)
                acc.uuencoded.extend(files)
            acc.texts.append(text)
        else:
            acc.htmls.append(text)
        return
    acc.attachments.append((part, ctype))


def _synthetic_id(parts: list[str], raw: bytes) -> str:
    if any(parts):
        digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()
    else:
        digest = hashlib.sha256(raw).hexdigest()
    return f"synthetic.{digest[:40]}@helpdesk.invalid"


def _importance(headers: dict[str, list[str]]) -> str:
    importance = _first(headers, "importance").strip().lower()
    if importance in ("high", "low"):
        return importance
    priority = _first(headers, "x-priority").strip()[:1]
    if priority in ("1", "2"):
        return "high"
    if priority in ("4", "5"):
        return "low"
    ms = _first(headers, "x-msmail-priority").strip().lower()
    if ms in ("high", "low"):
        return ms
    prio = _first(headers, "priority").strip().lower()
    if prio == "urgent":
        return "high"
    if prio == "non-urgent":
        return "low"
    return "normal"


def _resinfos(value: str) -> list[str]:
    """The ``;``-separated parts of an Authentication-Results value (RFC 8601 section 2.2),
    with comments removed; a ``;`` or ``(`` inside a quoted string or comment is text."""
    if "(" not in value and '"' not in value and "\\" not in value:
        return value.split(";")  # nothing to skip: the common, cheap case
    parts, current, depth, quoted, escaped = [], [], 0, False, False
    for char in value:
        if escaped:
            escaped = False
            if depth == 0:
                current.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                current.append(char)
            continue
        if quoted:
            current.append(char)
            quoted = char != '"'
            continue
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif char == '"':
            quoted = True
            current.append(char)
        elif char == ";":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _dmarc(headers: dict[str, list[str]]) -> str:
    """The DMARC verdict of the topmost Authentication-Results header: the one our
    receiving provider added (anything below it came from the sender's side and proves
    nothing). Only a result whose method is ``dmarc`` counts (RFC 8601): a ``dmarc=pass``
    inside another result's properties, such as an envelope sender the attacker chose
    (``smtp.mailfrom=dmarc=pass@evil.example``), is not a verdict."""
    values = headers.get("authentication-results")
    if not values:
        return "none"
    verdict = ""
    for resinfo in _resinfos(values[0])[1:]:  # the first part is the authserv-id
        match = re.match(r"\s*dmarc\s*=\s*([a-z]+)\b", resinfo, re.IGNORECASE)
        if match:
            verdict = match.group(1).lower()
            break
    if verdict == "pass":
        return "pass"
    if verdict in ("fail", "quarantine", "reject"):
        return "fail"
    return "none"


_BOM = b"\xef\xbb\xbf"
_CR_RUN = re.compile(rb"\r?\r\n|\r")
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_KNOWN_FIELDS = frozenset({
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"sender",
    b"in-reply-to", b"references", b"mime-version", b"content-type", b"return-path",
    b"content-transfer-encoding", b"received", b"delivered-to", b"x-mailer"})


def _normalise(raw: bytes) -> tuple[bytes, list[str]]:
    """The bytes the parser reads, and what was fixed on the way: a leading UTF-8 BOM and
    white space dropped; bare CR and mixed line endings made LF (``\r\r\n``, a CRLF
    converted twice, is one line break), so that every later step sees one kind of line.
    Mail with CRLF or LF throughout is returned as it is, after two byte counts."""
    fixed = []
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
        fixed.append("LeadingByteOrderMark")
    raw = raw.lstrip(b" \t\r\n")  # some exports put blank lines before the header block
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or (crlf and raw.count(b"\n") != crlf):
        raw = _CR_RUN.sub(b"\n", raw)
        fixed.append("MixedLineEndings")
    return raw, fixed


def _salvage_header_block(raw: bytes) -> tuple[bytes, int] | None:
    """The header block without the lines that are not header fields (junk before the
    first field, a line without a colon, a continuation that lost its indent), when well-
    formed fields follow them before the blank line, and with white space before a colon
    removed (obsolete syntax, RFC 5322 section 4.5); and how many lines were dropped.
    None when there is nothing to salvage (e.g. a body that starts with no blank line)."""
    blank = _BLANK_LINE.search(raw)
    if blank is None:
        return None
    kept, dropped, respaced, known_after_drop = [], 0, 0, False
    for line in raw[:blank.start()].splitlines(keepends=True):
        match = _HEADER_LINE.match(line)
        if match:
            name = match.group(0)[:-1].rstrip(b" \t")
            respaced += len(name) + 1 != match.end()  # "Subject : x", RFC 5322 section 4.5
            kept.append(name + b":" + line[match.end():])
            known_after_drop = known_after_drop or bool(dropped and name.lower() in _KNOWN_FIELDS)
        elif line[:1] in (b" ", b"\t") and kept:
            kept.append(line)
        elif kept and kept[-1].rstrip().endswith(b",") and line.strip():
            kept.append(b" " + line)  # an address list folded without its indent
            respaced += 1
        elif not line.startswith(b"From ") or kept:
            dropped += 1
    if not respaced and not (dropped and known_after_drop):
        return None
    if not kept[-1].endswith(b"\n"):
        kept[-1] += b"\n"
    return b"".join(kept) + b"\n" + raw[blank.end():], dropped


def _header_block_ended_early(msg: EmailMessage) -> bool:
    return any(type(defect).__name__ == "MissingHeaderBodySeparatorDefect"
               for defect in msg.defects)


def _header_only(raw: bytes, limits: ParseLimits) -> EmailMessage | None:
    try:
        raw, _ = _normalise(raw[: limits.max_header_bytes + 4])
        msg = BytesHeaderParser(policy=_POLICY).parsebytes(raw[: _header_block_size(raw)])
        if _header_block_ended_early(msg) or not len(msg):
            salvaged = _salvage_header_block(raw)
            if salvaged is not None:
                head = salvaged[0]
                msg = BytesHeaderParser(policy=_POLICY).parsebytes(
                    head[: _header_block_size(head)])
        return msg
    except Exception:  # noqa: BLE001
        return None


def _fill_headers(parsed: ParsedEmail, msg: EmailMessage, headers: dict[str, list[str]],
                  raw_first_line: str = "") -> None:
    charset = HeaderCharset(msg)
    ids = _message_ids(headers.get("message-id", []))
    if ids:
        parsed.message_id = ids[0]
    parsed.in_reply_to = _message_ids(headers.get("in-reply-to", []))[:5]
    parsed.references = _bounded_references(_message_ids(headers.get("references", [])))
    parsed.subject = _clean(decode_header_value(_first(headers, "subject"), charset))[:998]
    froms = _addresses(headers.get("from", []), charset)
    parsed.sender = next(iter(_addresses(headers.get("sender", []), charset)), None)
    parsed.reply_to = _addresses(headers.get("reply-to", []), charset)
    parsed.from_ = froms[0] if froms else (parsed.sender or next(iter(parsed.reply_to), None))
    if parsed.from_ is None:
        # Last resorts: the envelope sender the receiving server recorded, or the mbox
        # "From " line some exports keep.
        envelope = [a for a in _addresses(headers.get("return-path", []), charset) if a.email]
        if not envelope and raw_first_line.startswith("From "):
            envelope = _addresses([raw_first_line[5:].split(" ", 1)[0]])
        parsed.from_ = envelope[0] if envelope else None
    parsed.to = _addresses(headers.get("to", []), charset)
    parsed.cc = _addresses(headers.get("cc", []), charset)
    parsed.delivered_to = [a.email for a in _addresses(
        headers.get("delivered-to", []) + headers.get("x-original-to", []))]
    date = _first(headers, "date")
    if date:
        try:
            value = email.utils.parsedate_to_datetime(_unsurrogate(date).strip())
            if value is not None and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            parsed.date = value
        except (TypeError, ValueError, IndexError, OverflowError):
            parsed.defects.append("InvalidDateHeader")
    parsed.importance = _importance(headers)
    parsed.dmarc = _dmarc(headers)
    parsed.loop_marker = _clean(_first(headers, LOOP_HEADER.lower()).strip())[:200]
    for name in ("auto-submitted", "precedence", "return-path", "x-mailer", "list-id",
                 "list-unsubscribe", "authentication-results", "content-type"):
        value = _first(headers, name)
        if value:
            parsed.headers[name] = _clean(decode_header_value(value, charset))[:500]


_REPLY_PARSER = None


def reply_part(text: str) -> str:
    """The reply without quoted history and signature (mail-parser-reply); the whole text
    when the library finds nothing or fails."""
    global _REPLY_PARSER
    if not text.strip():
        return ""
    try:
        if _REPLY_PARSER is None:
            from mailparser_reply import EmailReplyParser

            _REPLY_PARSER = EmailReplyParser(languages=_REPLY_LANGUAGES)
        reply = _REPLY_PARSER.parse_reply(text=text[:_REPLY_TEXT_LIMIT])
    except Exception:  # noqa: BLE001 - the full body is kept anyway
        return text
    reply = (reply or "").strip()
    return _clean(reply or text.strip())


def _collect_defects(msg: EmailMessage, parsed: ParsedEmail) -> None:
    names: list[str] = []
    for part in msg.walk():
        for defect in getattr(part, "defects", []) or []:
            names.append(type(defect).__name__)
    parsed.defects.extend(sorted(set(names)))


def _attachment(part: EmailMessage, ctype: str, index: int, cids: set[str],
                related_ids: set[str]) -> ParsedAttachment:
    name = _filename(part)
    if ctype in ("message/rfc822", "message/global"):
        content = _message_bytes(part)
        if not name:
            inner = part.get_payload()
            subject = ""
            if isinstance(inner, list) and inner:
                subject = decode_header_value(_first(_raw_headers(inner[0]), "subject"))
            name = _SAFE_NAME.sub("_", subject).strip(" ._")[:100] or f"message-{index}"
        if not name.lower().endswith(".eml"):
            name += ".eml"
    else:
        content = _payload_bytes(part)
        if not name and str(part.get("content-transfer-encoding", "")).strip().lower() \
                in _UU_ENCODINGS:
            name = _uu_filename(part)
        if not name:
            ext = mimetypes.guess_extension(ctype) or ".bin"
            name = f"attachment-{index}{ext}"
    content_id = ""
    raw_cid = part.get("Content-ID", failobj="") if "Content-ID" in part else ""
    if raw_cid:
        content_id = _clean(normalize_message_id(_unsurrogate(str(raw_cid))))[:250]
    try:
        disposition = part.get_content_disposition()
    except Exception:  # noqa: BLE001
        disposition = None
    inline = bool(content_id) and (content_id in cids or disposition == "inline"
                                   or (disposition is None and content_id in related_ids))
    return ParsedAttachment(filename=name, content_type=ctype, content=content,
                            content_id=content_id, inline=inline)


def parse_email(raw: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> ParsedEmail:
    """Parse ``raw``; never raises. See the module docstring for the contract."""
    raw = bytes(raw or b"")
    try:
        return _parse(raw, limits)
    except _Limit as exc:
        return _quarantined(raw, limits, exc.reason)
    except RecursionError:
        return _quarantined(raw, limits, "too_deep: MIME structure nested beyond what can be "
                                         "parsed")
    except Exception as exc:  # noqa: BLE001 - the contract: never raise, quarantine instead
        return _quarantined(raw, limits,
                            f"unparseable: {type(exc).__name__}: {str(exc)[:300]}")


def _quarantined(raw: bytes, limits: ParseLimits, reason: str) -> ParsedEmail:
    """Whatever the header block tells, for the admin's list; the raw bytes are kept by
    the caller."""
    parsed = ParsedEmail(message_id="", raw_size=len(raw), quarantine_reason=_clean(reason))
    msg = _header_only(raw, limits)
    if msg is not None:
        try:
            _fill_headers(parsed, msg, _raw_headers(msg))
        except Exception:  # noqa: BLE001
            pass
    if not parsed.message_id:
        parsed.message_id = _synthetic_id([], raw)
        parsed.message_id_synthetic = True
    return parsed


def _parse(raw: bytes, limits: ParseLimits) -> ParsedEmail:
    started = time.monotonic()
    deadline = started + limits.max_parse_seconds
    if len(raw) > limits.max_raw_bytes:
        raise _Limit(f"too_large: {len(raw)} bytes, the limit is {limits.max_raw_bytes}")
    if _header_block_size(raw) > limits.max_header_bytes:
        raise _Limit(f"too_large: header block above {limits.max_header_bytes} bytes")
    if not raw.strip():
        raise _Limit("unparseable: empty message")

    original = raw
    raw, fixed = _normalise(raw)
    msg = BytesParser(policy=_POLICY).parsebytes(raw)
    if _header_block_ended_early(msg) or not len(msg):
        # A line that is no header field ended the block: keep the fields below it.
        salvaged = _salvage_header_block(raw)
        if salvaged is not None:
            msg = BytesParser(policy=_POLICY).parsebytes(salvaged[0])
            fixed.append("MissingHeaderBodySeparatorDefect")
            if salvaged[1]:
                fixed.append(f"HeaderLinesDropped:{salvaged[1]}")
    if time.monotonic() > deadline:
        raise _Limit(f"too_slow: parsing took longer than {limits.max_parse_seconds:g} s")
    headers = _raw_headers(msg)
    if not headers:
        raise _Limit("unparseable: no header fields found")
    parsed = ParsedEmail(message_id="", raw_size=len(original), defects=fixed)
    _fill_headers(parsed, msg, headers, _unsurrogate(raw[:300].split(b"\n", 1)[0].decode(
        "ascii", "surrogateescape")))
    acc = _Walk()
    _walk(msg, 0, acc, limits, deadline, top=True)
    if len(acc.attachments) + len(acc.uuencoded) > limits.max_attachments:
        raise _Limit(f"too_many_attachments: {len(acc.attachments) + len(acc.uuencoded)}, "
                     f"the limit is {limits.max_attachments}")

    if not any(t.strip() for t in acc.texts + acc.htmls):
        # No body part: an inline text part with a file name (old clients send the body
        # so) is the body; a text file sent as an attachment stays an attachment.
        for index, (part, ctype) in enumerate(acc.attachments):
            if ctype == "text/plain" and part.get_content_disposition() != "attachment" \
                    and str(part.get("content-transfer-encoding", "")).strip().lower() \
                    not in _UU_ENCODINGS:
                acc.texts.append(_part_text(part))
                del acc.attachments[index]
                break
    parsed.defects.extend(acc.defects)
    raw_html = "\n".join(h for h in acc.htmls if h.strip())
    text = "\n\n".join(t.strip("\r\n") for t in acc.texts if t.strip())
    if not text.strip() and raw_html:
        text = html_to_text(raw_html)
    parsed.text = _clean(text.replace("\r\n", "\n").replace("\r", "\n"))
    parsed.html = _clean(sanitize_html(raw_html)) if raw_html else ""

    # Only attachments can be the target of a cid: reference.
    cids = cid_references(raw_html) if acc.attachments else set()
    related_ids = set()
    if cids and (msg.get_content_type() == "multipart/related" or "multipart/related" in (
        parsed.headers.get("content-type", "") + " ".join(
            p.get_content_type() for p in msg.walk() if p.is_multipart())
    )):
        related_ids = cids  # parts of a related body are inline when referenced
    parsed.attachments = [
        _attachment(part, ctype, i, cids, related_ids)
        for i, (part, ctype) in enumerate(acc.attachments, start=1)
    ] + acc.uuencoded
    _collect_defects(msg, parsed)

    if not parsed.message_id:
        parsed.message_id = _synthetic_id(
            [parsed.from_.email if parsed.from_ else "", _first(headers, "date"), parsed.subject,
             ",".join(a.email for a in parsed.to), hashlib.sha256(
                 parsed.text.encode("utf-8", "replace")).hexdigest()],
            original,
        )
        parsed.message_id_synthetic = True

    from channels_email.classify import classify  # it uses this module's types

    classify(parsed, msg, raw, headers, acc.reports, acc.embedded_headers)
    if parsed.from_ is None and not (parsed.bounce or parsed.is_delay or parsed.is_complaint):
        raise _Limit("no_sender: no address in From, Sender, Reply-To or Return-Path")
    if time.monotonic() > deadline:
        raise _Limit(f"too_slow: parsing took longer than {limits.max_parse_seconds:g} s")
    return parsed
