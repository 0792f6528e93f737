"""Machine-made mail: delivery reports (bounces and delays), abuse complaints,
challenge-response requests and auto-replies. Fills the flags of a ParsedEmail.

Order of evidence, strongest first:
1. Amazon SES notifications (JSON mailed by SNS, from AWS and not failing DMARC):
   Bounce and Reject are bounces, Complaint a complaint, DeliveryDelay a delay, the
   rest (Delivery, tracking events) automatic.
2. RFC 3464 delivery-status parts, in any transfer encoding: per recipient,
   ``Action: failed`` or ``expired`` is a bounce (the status tells soft from hard);
   ``delayed`` (or, without an action, a 4.x.x status) is a delay, never a bounce;
   ``delivered``/``relayed``/``expanded`` is a success notice (automatic, no ticket).
3. RFC 5965 feedback reports and the known non-standard complaint formats: complaint.
4. Only for mail that looks like it comes from a mail system (cheap header checks: a
   missing, "<>" or daemon sender such as MAILER-DAEMON, postmaster and its variants or
   Exchange's MicrosoftExchange<hex>; a null Return-Path; X-Failed-Recipients; Exchange's
   NDR header; or a failure subject, unless a reply, a forward or a list notice): report
   fields in the text, then ``flufl.bounce`` on the classic MTA texts (temporary-only
   findings are delays), then the sender side plus a failure subject of its own: a bounce
   in any wording, the recipient read from the returned original.
5. Challenge-response services and auto-replies by their headers, and a short list of
   auto-reply subjects.

Ordinary mail is never inspected by the classic-text detectors, which keeps customer
emails that merely mention "undeliverable", or forward a bounce, from being taken for
bounces, and keeps the classification of ordinary mail cheap.
"""

from __future__ import annotations

import base64
import binascii
import email
import json
import logging
import quopri
import re
from email.message import EmailMessage

from channels_email.mime import (
    BounceInfo,
    BounceRecipient,
    ComplaintInfo,
    ParsedEmail,
    _addresses,
    _message_ids,
    _part_text,
    _raw_headers,
    _unsurrogate,
    normalize_message_id,
)

logger = logging.getLogger(__name__)

DELIVERY_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status",
                         "text/delivery-status", "message/xdelivery-status")
_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "mdaemon",
            "maildaemon", "mail.daemon", "mmdf", "smtp", "mailer"}
# Spelling variants of the daemon mailboxes (RFC 5321 section 4.5.1 names postmaster;
# MTAs and providers add separators, suffixes and their own names): "Mailer_Daemon",
# "post.master", "postmaster-noreply", "MAILER-DAEMON+tag", Exchange Online's
# "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e".
_DAEMON_LOCALPART = re.compile(
    r"^(?:mailer[-_.]?daemon|mail[-_.]?daemon|post[-_.]?ma?ste?r\d*|"
    r"mail[-_.]?delivery(?:[-_.]?sub)?(?:[-_.]?system)?|ndr|non[-_.]?delivery)"
    r"(?:[-_.+][a-z0-9._-]*)?$|"
    r"^microsoftexchange[0-9a-f]{0,40}$")
_DAEMON_NAMES = re.compile(r"mail delivery (system|subsystem|service)|mailer.?daemon|"
                           r"post.?master|mail administrator|delivery status|"
                           r"mail system administrator|^system administrator$|"
                           r"^mail (?:system|router)$|^internet mail delivery$|"
                           r"^microsoft (?:outlook|exchange)",
                           re.IGNORECASE)
# Mailing-list software and list role addresses (RFC 2142, RFC 2369): their notices
# ("your message awaits approval", "posting rejected") are not delivery reports.
_LIST_LOCALPART = re.compile(r"^(?:owner-.+|.+-(?:owner|request|bounces?|admin)|mailman|"
                             r"majordomo|listserv|sympa|ezmlm|lyris|listproc)$")
# A subject saying it is a reply or a forward: a person wrote it (a customer forwarding
# us the bounce they got is a customer, not a mail system).
# What mail clients put above an inline forward; mail systems quote the original
# differently ("Original message", "Below this line is a copy of the message").
_FORWARD_MARKER = re.compile(
    r"^[ \t>]*(?:-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transf[ée]r[ée]|"
    r"mensaje reenviado|messaggio inoltrato|doorgestuurd bericht)\s*-{2,}|"
    r"begin forwarded message\s*:)", re.IGNORECASE | re.MULTILINE)
_INNER_PREFIX = re.compile(r"\b(?:re|aw|sv|fw|fwd|wg|tr|rv|antw)\s*(?:\[\d+\])?\s*:")
_REPLY_OR_FORWARD = re.compile(r"^\s*(?:re|aw|sv|fw|fwd|wg|tr|rv|enc|doorst|vs|vl|i)\s*"
                               r"(?:\[\d+\])?\s*:", re.IGNORECASE)
# Matched against the lower-cased subject: a case-sensitive search is some twenty
# times faster than re.IGNORECASE over this many alternatives, and it runs on every mail.
_FAILURE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status notification|failure|failed|has failed|problem|"
    r"notification|report)|returned mail|failure notice|mail delivery failed|"
    r"could not be delivered|not be delivered|non.?deliver|mail system error|"
    r"message not delivered|returned to sender|permanent (error|failure)|unzustellbar|"
    r"non remis|nicht zustellbar|mail status report|user unknown|no such user|"
    r"delivery (error|unsuccessful)|message status|mail returned|bounced? mail|"
    r"rejected|nondeliverable|failed delivery|delivery warning|warning: could not send|"
    r"mail system error|failure delivery|not deliverable|delivery status|"
    r"message blocked|sent blocked|blocked by|\((?:failure|fehler|error|échec|errore|erro|fout)\)|"
    r"failed mail|mail failure|failed to deliver|delivery error|error sending|not delivered|"
    r"returned message|(?:mail|message) bounced|\bbounce\b|\bndn\b|non-?delivery|"
    r"delivery problem|mail error|"
    # Exchange's and other MTAs' localised "Undeliverable": German, French, Spanish,
    # Portuguese, Italian, Dutch, Nordic, Polish, Czech, Hungarian, Turkish, Russian,
    # Chinese, Korean.
    r"nicht zugestellt|échec de (?:la )?remise|no entregad|"
    r"no se (?:pudo|puede) entregar|não entregue|não foi possível entregar|"
    r"non recapitabil|recapito non riuscito|onbestelbaar|niet bezorgd|"
    r"kunde inte levereras|olevererbar|ikke levert|ikke leveret|kan ikke leveres|"
    r"ei voitu toimittaa|niedostarczal|nie dostarczono|nedoručitel|kézbesíthetetlen|"
    r"teslim edilemedi|недоставлен|не доставлено|невозможно доставить|"
    r"退信|未送达|投递失败|無法傳遞|無法投遞|送達失敗|배달되지|전송 실패|반송|"
    # Japanese carriers and providers: "delivery error", "could not be sent",
    # "undelivered", "unknown address", "returned mail", "did not arrive".
    r"配[信送](?:エラー|不能|失敗|できません)|送信(?:エラー|失敗|できません)|不達|未達|不着|未配信|"
    r"宛先不明|返送(?:され|メール)|届きませんでした|届けられませんでした|エラーメール")
# Success notices without a report part ("Delivery Status Notification (Success)").
_SUCCESS_SUBJECT = re.compile(r"\((?:success|relayed|delivered)\)|successful(?:ly)? "
                              r"deliver|delivery (?:succeeded|successful)|\brelayed\b",
                              re.IGNORECASE)
_DELAY_SUBJECT = re.compile(
    r"\bdelay|still being retried|could not send message for past|not yet been delivered|"
    r"will (continue to )?retry|delivery warning|temporar", re.IGNORECASE)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:(?:re|aw|sv|fw|fwd)\s*:\s*)*\[?\s*(?:auto:|auto(?:matic|matische?)?[- ]?"
    r"(?:reply|response|antwort|answer)|out of (?:the )?office|abwesenheit|"
    r"r[ée]ponse automatique|automatyczna odpowied|risposta automatica|"
    r"respuesta autom[áa]tica|autosvar|automaattinen vastaus|fuera de la oficina|"
    r"vacation reply|on vacation)|\((?:automatic|auto)[- ]?(?:response|reply)\)\s*$",
    re.IGNORECASE)
_AUTO_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from",
                 "x-mail-autoreply", "x-auto-reply", "x-autogenerated", "x-fc-machinegenerated")
_CHALLENGE_HEADERS = ("x-bluebottle-request", "x-boxbe-", "x-spamarrest", "x-challenge",
                      "x-mailblocks", "x-choicemail", "x-sanebox-challenge")
_CHALLENGE_DOMAINS = ("boxbe.com", "bluebottle.com", "spamarrest.com", "mailblocks.com",
                      "choicemail.com", "sanebox.com")
_CHALLENGE_TEXT = re.compile(
    r"verify (that )?you are (a )?(human|real|person)|(added|add you) to (the|my|their) "
    r"(recipient'?s? )?(allowed|approved|accepted|safe) (senders? )?list|approved senders|"
    r"sender verification|confirm (that )?you (are|sent)|challenge[- ]response|"
    r"please (click|verify|confirm)[^.\n]{0,80}(deliver|verif|confirm)", re.IGNORECASE)
_FAILURE_TEXT = re.compile(
    r"(could ?not|cannot|can't|couldn't|was not|wasn't|will not) be delivered|"
    r"delivery to the following recipients? failed|undeliverable|user unknown|"
    r"unknown (user|recipient)|no such (user|mailbox|recipient)|not a valid (user|recipient)|"
    r"mailbox (unavailable|full|is full)|does not exist|recipient address rejected|"
    r"permanent(ly)? (error|fatal|failure)|message (was )?rejected|delivery (has )?failed",
    re.IGNORECASE)
_ENHANCED_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_FAILURE_STATUS = re.compile(r"(?<![\w.])([45]\.\d{1,3}\.\d{1,3})(?![\w.])")
_SMTP_CODE = re.compile(r"\b([45][0-9][0-9])[ :-]")
_QUOTED_MESSAGE_ID = re.compile(r"^[>\s]*Message-I[Dd]\s*:\s*(<[^<>\s]+>|\S+@\S+)",
                                re.IGNORECASE | re.MULTILINE)
_TYPE_PREFIX = re.compile(r"^\s*[a-z0-9.-]+\s*;\s*", re.IGNORECASE)
_QUOTED_TO = re.compile(r"^[>\s]*(?:To|Cc)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_QUOTED_HEADER = re.compile(r"^[>\s]*(?:Received|Return-Path|From|To|Cc|Date|Subject|"
                            r"Message-I[Dd]|MIME-Version)\s*:", re.IGNORECASE | re.MULTILINE)
_EMBEDDED_TO = re.compile(r"^(?:To|Cc)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+\.[a-z0-9-]+", re.IGNORECASE)
# Amazon SES event notifications delivered by SNS email subscriptions.
_SES_DOMAINS = ("amazonaws.com", "amazonses.com")


def _localpart(address: str) -> str:
    return address.split("@", 1)[0].lower()


def _is_daemon(address: str) -> bool:
    local = _localpart(address)
    return local in _DAEMONS or bool(_DAEMON_LOCALPART.match(local))


def _from_mail_system(parsed: ParsedEmail, headers: dict[str, list[str]]) -> bool:
    raw_from = " ".join(headers.get("from", []))
    if parsed.from_ is None or "<>" in raw_from:
        return True  # people always have an address; only machines send from "<>"
    return _is_daemon(parsed.from_.email) or bool(_DAEMON_NAMES.search(parsed.from_.name or ""))


def _machine_made(headers: dict[str, list[str]]) -> bool:
    return_path = (headers.get("return-path") or [""])[0].strip()
    return ("auto-submitted" in headers or "precedence" in headers
            or "x-autogenerated" in headers or return_path == "<>")


def _null_return_path(headers: dict[str, list[str]]) -> bool:
    """RFC 5321 section 4.5.5: delivery reports are sent with a null reverse-path, which
    the final MTA records as ``Return-Path: <>`` (some write it empty)."""
    values = headers.get("return-path")
    return bool(values) and values[0].strip() in ("<>", "", "< >")


def _daemon_return_path(headers: dict[str, list[str]]) -> bool:
    """``Return-Path: <MAILER-DAEMON>`` (some MTAs record the null sender so) or a daemon
    address."""
    values = headers.get("return-path")
    if not values:
        return False
    address = values[0].strip().strip("<>").strip().lower()
    return bool(address) and _is_daemon(address)


def _sent_by_mail_system(parsed: ParsedEmail, headers: dict[str, list[str]]) -> bool:
    """The sender side says a mail system wrote this: no sender or a daemon sender, a null
    or daemon return path, or a header only MTAs add (X-Failed-Recipients; Exchange's NDR
    mark; a multipart/report of report-type delivery-status, RFC 6522)."""
    return (_from_mail_system(parsed, headers) or _null_return_path(headers)
            or "x-failed-recipients" in headers or "x-ms-exchange-message-is-ndr" in headers
            or _daemon_return_path(headers) or _report_type(headers) == "delivery-status")


def _from_mailing_list(parsed: ParsedEmail, headers: dict[str, list[str]]) -> bool:
    sender = parsed.from_.email if parsed.from_ else ""
    return bool(sender and _LIST_LOCALPART.match(_localpart(sender)))


def _own_failure_subject(subject: str) -> bool:
    """The subject itself reports a failure: not a success notice, not an auto-reply,
    and the failure words come before any "Re:" (in "Automatic reply: Re: Refund
    rejected" they are the original's subject, in "Undeliverable: Re: ..." they are not)."""
    lower = subject.lower()
    failure = _FAILURE_SUBJECT.search(lower)
    if failure is None or _SUCCESS_SUBJECT.search(lower) or _AUTO_SUBJECT.search(subject):
        return False
    quoted = _INNER_PREFIX.search(lower)
    return quoted is None or failure.start() < quoted.start()


def _looks_like_mail_system(parsed: ParsedEmail, headers: dict[str, list[str]]) -> bool:
    """Cheap header checks that decide whether the classic-text detectors run at all."""
    if _sent_by_mail_system(parsed, headers):
        return True
    if not _FAILURE_SUBJECT.search(parsed.subject.lower()):
        return False
    # A list notice, or a person replying or forwarding a bounce, is no report.
    return not (_from_mailing_list(parsed, headers) or _REPLY_OR_FORWARD.match(parsed.subject)
                or _FORWARD_MARKER.search(parsed.text[:20000]))


def _encoded_report_text(part: EmailMessage) -> str | None:
    """The text of a base64 or quoted-printable delivery-status part, decoded; None for
    any other transfer encoding. (RFC 3464 allows any encoding for the part; the stdlib
    splits the still-encoded text into field blocks as if it were plain.)"""
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding not in ("base64", "quoted-printable"):
        return None
    payload = part.get_payload()
    if isinstance(payload, list):
        chunks = []
        for block in payload:
            body = block.get_payload()
            chunks.append("".join(f"{name}: {value}\n" for name, value in block.raw_items())
                          + (body if isinstance(body, str) else ""))
        encoded = "\n".join(chunks)
    else:
        encoded = str(payload)
    data = _unsurrogate(encoded).encode("ascii", "replace")
    try:
        if encoding == "base64":
            decoded = base64.b64decode(b"".join(data.split()) + b"==", validate=False)
        else:
            decoded = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        return ""
    return decoded.decode("utf-8", "replace")


def _report_blocks(part: EmailMessage) -> list[dict[str, str]]:
    """The field blocks of a delivery-status part, as lower-cased name -> value dicts."""
    payload = part.get_payload()
    blocks: list[dict[str, str]] = []
    text = _encoded_report_text(part)
    if text is None and isinstance(payload, list):
        for block in payload:
            fields: dict[str, str] = {}
            for name, value in block.raw_items():
                fields.setdefault(name.strip().lower(),
                                  re.sub(r"\s+", " ", _unsurrogate(str(value))).strip())
            blocks.append(fields)
        # The stdlib reads a part's own headers into the first block when there is no
        # blank line; a report whose body did not split still has its fields there.
        if blocks:
            return blocks
    if text is None:
        text = _part_text(part) if not isinstance(payload, list) else ""
    return _text_blocks(text)


def _text_blocks(text: str) -> list[dict[str, str]]:
    """Field blocks (separated by blank lines) read from report text."""
    blocks = []
    for chunk in re.split(r"\r?\n\s*\r?\n", text):
        fields: dict[str, str] = {}
        for match in re.finditer(r"^([A-Za-z-]+)\s*:\s*(.*(?:\r?\n[ \t].*)*)", chunk,
                                 re.MULTILINE):
            fields.setdefault(match.group(1).lower(),
                              re.sub(r"\s+", " ", match.group(2)).strip())
        if fields:
            blocks.append(fields)
    return blocks


def _dsn_recipients(part: EmailMessage) -> list[BounceRecipient]:
    # A top-level delivery-status part carries its recipient fields in its own headers.
    own = {name.strip().lower(): re.sub(r"\s+", " ", _unsurrogate(str(value))).strip()
           for name, value in part.raw_items()}
    return _block_recipients([own, *_report_blocks(part)])


def _inline_report_recipients(parsed: ParsedEmail) -> list[BounceRecipient]:
    """RFC 3464 fields written into the text of a mail system's notice instead of a
    delivery-status part (some MTAs and gateways do)."""
    text = parsed.text[:50000]
    if "final-recipient" not in text.lower():
        return []
    return _block_recipients(_text_blocks(text))


def _block_recipients(blocks: list[dict[str, str]]) -> list[BounceRecipient]:
    recipients = []
    for fields in blocks:
        if "action" not in fields and "status" not in fields:
            continue
        # Final-Recipient first; Original-Recipient when the final one is no address
        # (CommuniGate writes "Final-Recipient: system;<>").
        addresses = [_TYPE_PREFIX.sub("", fields[name]).strip().strip("<>").strip().lower()
                     for name in ("final-recipient", "original-recipient") if fields.get(name)]
        if not addresses:
            continue
        address = next((a for a in addresses if "@" in a), addresses[0])
        diagnostic = _TYPE_PREFIX.sub("", fields.get("diagnostic-code", ""))
        recipients.append(BounceRecipient(
            recipient=address[:320], status=fields.get("status", "")[:20],
            diagnostic=diagnostic[:500], action=_action(fields.get("action", "")),
        ))
    return recipients


# RFC 3464 section 2.3.3 names failed, delayed, delivered, relayed and expanded; MTAs
# also write "failure", "error", "expired" (given up after the retry period) and
# "deferred", sometimes followed by a comment ("failed (Bad destination mailbox)").
_FAILED_ACTIONS = {"failed", "failure", "fail", "error", "expired", "bounced", "rejected"}
_DELAY_ACTIONS = {"delayed", "deferred", "delay"}
_SUCCESS_ACTIONS = {"delivered", "relayed", "expanded"}


def _action(value: str) -> str:
    """The Action field's keyword, lower case, without a trailing comment."""
    word = re.match(r"\s*([A-Za-z]+)", value)
    return word.group(1).lower()[:20] if word else ""


def _is_permanent(recipient: BounceRecipient) -> bool:
    # RFC 3464: "failed" is final even with a 4.x.x status (the server gave up, e.g.
    # 4.4.7 delivery time expired); the status tells a soft from a hard bounce. An
    # action we do not know falls back to the status.
    if recipient.action in _FAILED_ACTIONS:
        return True
    if recipient.action in _DELAY_ACTIONS or recipient.action in _SUCCESS_ACTIONS:
        return False
    return recipient.status.startswith("5")


def _is_delay(recipient: BounceRecipient) -> bool:
    if recipient.action in _DELAY_ACTIONS:
        return True
    if recipient.action in _FAILED_ACTIONS or recipient.action in _SUCCESS_ACTIONS:
        return False
    return recipient.status.startswith("4")


def _referenced_ids(parsed: ParsedEmail, embedded: list[EmailMessage | str]) -> list[str]:
    ids: list[str] = []
    for item in embedded:
        if isinstance(item, str):
            found = [normalize_message_id(m) for m in _QUOTED_MESSAGE_ID.findall(item)]
        else:
            found = _message_ids(_raw_headers(item).get("message-id", []))
        ids.extend(found)
    ids.extend(normalize_message_id(m) for m in _QUOTED_MESSAGE_ID.findall(parsed.text))
    ids.extend(parsed.in_reply_to)
    ids.extend(parsed.references)
    seen: dict[str, None] = {}
    for mid in ids:
        if mid and mid != parsed.message_id:
            seen.setdefault(mid[:998], None)
    return list(seen)[:50]


def _classic_details(text: str, address: str) -> BounceRecipient:
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if address in line.lower():
            window = " ".join(part.strip() for part in lines[index:index + 4])
            status = _ENHANCED_STATUS.search(window)
            if status is None:  # one status code in the whole notice is this one's
                found = set(_FAILURE_STATUS.findall(text[:5000]))
                status = _FAILURE_STATUS.search(found.pop()) if len(found) == 1 else None
            code = _SMTP_CODE.search(window)
            return BounceRecipient(
                recipient=address[:320],
                status=(status.group(1) if status else (code.group(1) if code else ""))[:20],
                diagnostic=window[:500], action="failed",
            )
    return BounceRecipient(recipient=address[:320], action="failed")


def _classic_failures(raw: bytes) -> tuple[set[str], set[str]]:
    from flufl.bounce import all_failures

    try:
        legacy = email.message_from_bytes(raw)
        temporary, permanent = all_failures(legacy)
    except Exception:  # noqa: BLE001 - a detector tripping over odd input finds nothing
        logger.debug("flufl.bounce failed", exc_info=True)
        return set(), set()

    def as_text(values) -> set[str]:
        out = set()
        for value in values:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            value = str(value).strip().strip("<>").lower()
            if "@" in value:
                out.add(value[:320])
        return out

    return as_text(temporary), as_text(permanent)


def _original_recipients(parsed: ParsedEmail, embedded: list[EmailMessage | str]
                         ) -> list[BounceRecipient]:
    """For a mail system's notice in wording no detector knows: the recipients of the
    original message it returns (attached, or its headers quoted in the text), narrowed
    to those the notice itself names when it names any. Our own addresses (the notice's
    To and Delivered-To) are never a bounced recipient."""
    ours = {a.email for a in parsed.to} | set(parsed.delivered_to)
    candidates: list[str] = []
    for item in embedded:
        if isinstance(item, str):
            values = [m.group(1) for m in _EMBEDDED_TO.finditer(item[:20000])]
        else:
            headers = _raw_headers(item)
            values = headers.get("to", []) + headers.get("cc", [])
        candidates += [a.email for a in _addresses(values)]
    notice = parsed.text[:20000]
    if not candidates:
        quoted_id = _QUOTED_MESSAGE_ID.search(notice)
        if quoted_id:  # a quoted header block: its To/Cc lines near the Message-ID
            start = max(0, quoted_id.start() - 2000)
            block = notice[start:quoted_id.end() + 2000]
            candidates = [a.email for m in _QUOTED_TO.finditer(block)
                          for a in _addresses([m.group(1)])]
            first = _QUOTED_HEADER.search(block)
            notice = notice[:start + (first.start() if first else 0)]
    candidates = [c for c in dict.fromkeys(candidates) if c not in ours]
    named = [m.lower().strip(".") for m in _ADDRESS.findall(notice)]
    chosen = [c for c in candidates if c in named] or candidates
    if not chosen and not embedded:
        # Nothing returned with the notice: the addresses it names, except ours and
        # those of mail systems ("contact postmaster@...").
        sender = parsed.from_.email if parsed.from_ else ""
        chosen = [a for a in dict.fromkeys(named)
                  if a not in ours and a != sender and not _is_daemon(a)][:5]
    return [_classic_details(parsed.text, address) for address in chosen[:20]]


def _ses_notification(parsed: ParsedEmail) -> dict | None:
    """An Amazon SES event notification (bounce, complaint, delivery) as SNS mails it:
    the notification JSON as the body ("email" subscriptions) or inside the SNS envelope's
    ``Message`` string ("email-json"). Documented at docs.aws.amazon.com/ses/latest/dg/
    notification-contents.html. None for anything else; only read for mail from AWS."""
    domain = (parsed.from_.email if parsed.from_ else "").rsplit("@", 1)[-1]
    if not any(domain == d or domain.endswith("." + d) for d in _SES_DOMAINS) or (
            parsed.dmarc == "fail"):
        return None  # AWS signs its mail: one that fails DMARC is not from AWS
    text = parsed.text
    start = text.find("{")
    if start < 0 or ("notificationType" not in text and "eventType" not in text):
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"])  # the SNS envelope of "email-json"
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _object(value) -> dict:
    """A JSON object from an untrusted document, or {} for anything else."""
    return value if isinstance(value, dict) else {}


def _array(value) -> list:
    return value if isinstance(value, list) else []


def _ses_ids(notification: dict) -> list[str]:
    mail = _object(notification.get("mail"))
    ids = [str(_object(mail.get("commonHeaders")).get("messageId") or "")]
    for header in _array(mail.get("headers")):
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            ids.append(str(header.get("value") or ""))
    seen: dict[str, None] = {}
    for mid in ids:
        mid = normalize_message_id(mid)
        if mid:
            seen.setdefault(mid[:998], None)
    return list(seen)


def _ses_apply(parsed: ParsedEmail, notification: dict) -> bool:
    """Fill ``parsed`` from an SES notification; False when it is none (no ``mail``)."""
    kind = str(notification.get("notificationType") or notification.get("eventType") or "")
    ids = _ses_ids(notification)
    if kind == "Bounce":
        recipients = []
        for entry in _array(_object(notification.get("bounce")).get("bouncedRecipients")):
            if not isinstance(entry, dict) or "@" not in str(entry.get("emailAddress", "")):
                continue
            address = _addresses([str(entry["emailAddress"])])
            recipients.append(BounceRecipient(
                recipient=(address[0].email if address else "")[:320],
                status=str(entry.get("status") or "")[:20],
                diagnostic=_TYPE_PREFIX.sub("", str(entry.get("diagnosticCode") or ""))[:500],
                action=str(entry.get("action") or "failed").lower()[:20]))
        parsed.bounce = BounceInfo(original_message_id=(ids or [""])[0],
                                   recipients=recipients, referenced_message_ids=ids)
        return True
    if kind == "Reject":  # SES refused to send it at all (say, a virus): nobody got it
        parsed.bounce = BounceInfo(
            original_message_id=(ids or [""])[0], referenced_message_ids=ids,
            recipients=[BounceRecipient(recipient=a.email, action="failed",
                                        diagnostic="rejected by Amazon SES")
                        for a in _addresses([str(d) for d in _array(
                            _object(notification.get("mail")).get("destination"))])][:20])
        return True
    if kind == "Complaint":
        complaint = _object(notification.get("complaint"))
        parsed.complaint = ComplaintInfo(
            feedback_type=str(complaint.get("complaintFeedbackType") or "").lower()[:40],
            recipients=[a.email for entry in _array(complaint.get("complainedRecipients"))
                        if isinstance(entry, dict)
                        for a in _addresses([str(entry.get("emailAddress", ""))])][:20],
            referenced_message_ids=ids)
        return True
    if kind == "DeliveryDelay":
        parsed.is_delay = True
        return True
    if not _object(notification.get("mail")):
        return False
    # Delivery, and the tracking events (Send, Open, Click, ...): automatic, no ticket.
    parsed.is_auto_reply, parsed.auto_reply_reason = True, "delivery notification"
    return True


def _report_type(headers: dict[str, list[str]]) -> str:
    ctype = (headers.get("content-type") or [""])[0].lower()
    match = re.search(r"report-type\s*=\s*\"?([a-z-]+)", ctype)
    return match.group(1) if match else ""


def _is_challenge(parsed: ParsedEmail, headers: dict[str, list[str]]) -> bool:
    if any(name.startswith(_CHALLENGE_HEADERS) for name in headers):
        return True
    sender = parsed.from_.email if parsed.from_ else ""
    domain = sender.rsplit("@", 1)[-1]
    if any(domain == d or domain.endswith("." + d) for d in _CHALLENGE_DOMAINS):
        return True
    automatic = "auto-submitted" in headers or _localpart(sender) in ("noreply", "no-reply")
    return automatic and bool(_CHALLENGE_TEXT.search(parsed.text[:5000]))


def _is_complaint(report_type: str, reports: list[EmailMessage],
                  embedded: list[EmailMessage | str], parsed: ParsedEmail) -> bool:
    if report_type == "feedback-report":
        return True
    if any(p.get_content_type() == "message/feedback-report" for p in reports):
        return True
    for item in embedded:  # Microsoft's JMRP complaints embed the reported message
        if not isinstance(item, str) and "x-hmxmroriginalrecipient" in _raw_headers(item):
            return True
    sender = parsed.from_.email if parsed.from_ else ""
    return sender.startswith(("abuse@", "fbl@", "feedbackloop@", "scomp@")) and bool(embedded)


def _complaint(reports: list[EmailMessage], embedded: list[EmailMessage | str],
               parsed: ParsedEmail) -> ComplaintInfo:
    feedback_type, recipients = "", []
    for part in reports:
        if part.get_content_type() != "message/feedback-report":
            continue
        for fields in _report_blocks(part):
            feedback_type = feedback_type or fields.get("feedback-type", "").lower()[:40]
            recipients += _addresses([fields.get("original-rcpt-to", "")])
    for item in embedded:  # Microsoft's JMRP names the complaining recipient here
        if not isinstance(item, str):
            recipients += _addresses(_raw_headers(item).get("x-hmxmroriginalrecipient", []))
    return ComplaintInfo(
        feedback_type=feedback_type,
        recipients=list(dict.fromkeys(a.email.lower()[:320] for a in recipients
                                      if a.email))[:20],
        referenced_message_ids=_referenced_ids(parsed, embedded))


def _auto_reply_reason(parsed: ParsedEmail, headers: dict[str, list[str]]) -> str:
    auto_submitted = (headers.get("auto-submitted") or [""])[0].strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return f"Auto-Submitted: {auto_submitted.split(';')[0][:40]}"
    for name in _AUTO_HEADERS:
        if name in headers:
            return f"{name} header"
    for name in ("precedence", "x-precedence"):
        value = (headers.get(name) or [""])[0].strip().lower()
        if value in ("bulk", "junk", "auto_reply", "auto-reply"):
            return f"Precedence: {value}"
    return_path = headers.get("return-path")
    if return_path and return_path[0].strip() == "<>":
        return "empty Return-Path"
    if _AUTO_SUBJECT.search(parsed.subject):
        return "auto-reply subject"
    return ""


def _delivery_report(parsed: ParsedEmail, raw: bytes, headers: dict[str, list[str]],
                     reports: list[EmailMessage], embedded: list[EmailMessage | str],
                     report_type: str) -> None:
    """Set ``bounce``, ``is_delay`` or the success-notice auto-reply flag of a delivery
    report; leave ``parsed`` alone for anything else. Cheap header checks decide whether
    the expensive classic-text scan runs."""
    dsn: list[BounceRecipient] = []
    for part in reports:
        if part.get_content_type() in DELIVERY_STATUS_TYPES:
            dsn.extend(_dsn_recipients(part))
    permanent = [r for r in dsn if _is_permanent(r)]
    if permanent:
        parsed.bounce = BounceInfo(recipients=permanent)
    elif any(_is_delay(r) for r in dsn):
        parsed.is_delay = True
    elif dsn:
        parsed.is_auto_reply, parsed.auto_reply_reason = True, "delivery notification"
    elif _looks_like_mail_system(parsed, headers):
        inline = _inline_report_recipients(parsed)
        if any(_is_permanent(r) for r in inline):
            parsed.bounce = BounceInfo(recipients=[r for r in inline if _is_permanent(r)])
            return
        if any(_is_delay(r) for r in inline):
            parsed.is_delay = True
            return
        temporary, failed = _classic_failures(raw)
        failed |= {a.email for a in _addresses(headers.get("x-failed-recipients", []))}
        delay_words = _DELAY_SUBJECT.search(parsed.subject)
        failure_subject = (bool(_FAILURE_SUBJECT.search(parsed.subject.lower()))
                           and not delay_words)
        if failed and not delay_words:
            parsed.bounce = BounceInfo(recipients=[
                _classic_details(parsed.text, address) for address in sorted(failed)])
        elif temporary and failure_subject:
            # "could not be delivered ... attempts will continue": the sender is told
            # it failed; treat it as failed (the detector calls it a warning).
            parsed.bounce = BounceInfo(recipients=[
                _classic_details(parsed.text, address) for address in sorted(temporary)])
        elif temporary or failed or delay_words:
            parsed.is_delay = True
        elif failure_subject and _own_failure_subject(parsed.subject) and (
                _sent_by_mail_system(parsed, headers)
                or ("return-path" not in headers and _machine_made(headers) and embedded)):
            # A mail system's failure notice in wording no detector knows: the sender
            # side and the subject say it; the original it returns names the recipient.
            parsed.bounce = BounceInfo(recipients=_original_recipients(parsed, embedded))
        elif (_FAILURE_TEXT.search(parsed.text[:20000])
              or report_type == "delivery-status") and (
                _from_mail_system(parsed, headers)
                or (failure_subject and _machine_made(headers))):
            parsed.bounce = BounceInfo(recipients=_original_recipients(parsed, embedded))


def classify(parsed: ParsedEmail, msg: EmailMessage, raw: bytes,
             headers: dict[str, list[str]], reports: list[EmailMessage],
             embedded: list[EmailMessage | str]) -> None:
    report_type = _report_type(headers)
    parsed.is_challenge = _is_challenge(parsed, headers)
    if not parsed.is_challenge and _is_complaint(report_type, reports, embedded, parsed):
        parsed.complaint = _complaint(reports, embedded, parsed)

    ses = None if parsed.is_challenge or parsed.is_complaint else _ses_notification(parsed)
    if ses is not None and _ses_apply(parsed, ses):
        pass  # its ids are SES's own fields; nothing below applies
    elif not parsed.is_challenge and not parsed.is_complaint:
        _delivery_report(parsed, raw, headers, reports, embedded, report_type)
        if parsed.bounce is not None:
            ids = _referenced_ids(parsed, embedded)
            parsed.bounce.referenced_message_ids = ids
            embedded_ids = [i for i in ids if i not in parsed.in_reply_to
                            and i not in parsed.references]
            parsed.bounce.original_message_id = (embedded_ids or ids or [""])[0]

    if report_type == "disposition-notification" or any(
            p.get_content_type() == "message/disposition-notification" for p in reports):
        parsed.is_auto_reply, parsed.auto_reply_reason = True, "read receipt"
    if not parsed.is_auto_reply:
        reason = _auto_reply_reason(parsed, headers)
        if reason:
            parsed.is_auto_reply, parsed.auto_reply_reason = True, reason
