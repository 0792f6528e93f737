"""How a message's body is shown in the ticket view.

- HTML bodies are sanitised again on display (they were sanitised at ingest; a policy
  change then applies to old mail too), and ``cid:`` images point at the message's own
  inline attachments, raster types only, through the workspace-checked download view.
- Text bodies show the new part of the message; quoted history and signature fold away
  behind a toggle (``mime.reply_part``).
"""

from __future__ import annotations

import re

from django import template
from django.urls import reverse
from django.utils.html import escape, format_html, strip_tags
from django.utils.safestring import mark_safe

from channels_email.mime import reply_part
from channels_email.sanitize import sanitize_html
from tickets.models import RASTER_IMAGE_TYPES

register = template.Library()
CID_SRC = re.compile(r'src="cid:([^"]+)"', re.IGNORECASE)


BLOCKQUOTE_TAG = re.compile(r"<(/?)blockquote\b[^>]*>", re.IGNORECASE)


def _split_html_quote(html: str) -> tuple[str, str]:
    """(new part, quoted history) of a stored HTML body, each sanitised (once) for display,
    split before its first ``<blockquote>`` (how Gmail, Apple Mail and Thunderbird quote
    what they answer).

    The quote is "" (nothing folds) when there is no blockquote, nothing before it, or
    text after it ends: answers written between quoted paragraphs must stay in view. The
    cut may fall inside open elements: sanitising each part rebalances its tags."""
    first, depth, end = None, 0, None
    for match in BLOCKQUOTE_TAG.finditer(html):
        if match.group(1):
            depth -= 1
            if depth == 0:
                end = match.end()
                break
        else:
            first = match.start() if first is None else first
            depth += 1
    if first is None or end is None or not strip_tags(html[:first]).strip() \
            or strip_tags(html[end:]).strip():
        return sanitize_html(html), ""
    return sanitize_html(html[:first]), sanitize_html(html[first:])


@register.simple_tag(takes_context=True)
def message_body(context, message):
    ticket = context["ticket"]
    tenant = context["current_tenant"]
    if message.body_html:
        attachments = {a.content_id: a for a in message.attachments.all() if a.content_id}

        def resolve(match: re.Match) -> str:
            attachment = attachments.get(match.group(1))
            if attachment is None or attachment.content_type not in RASTER_IMAGE_TYPES:
                return 'src=""'
            url = reverse("tickets:attachment", kwargs={
                "tenant_slug": tenant.slug, "number": ticket.number,
                "attachment_id": attachment.pk})
            return f'src="{escape(url)}?inline=1"'

        new, quoted = _split_html_quote(message.body_html)
        if quoted:
            return mark_safe(  # noqa: S308 - each part sanitised again on its own
                f'<div class="body html">{CID_SRC.sub(resolve, new)}</div>'
                f'<details class="quoted"><summary>Show quoted text</summary>'
                f'<div class="body html">{CID_SRC.sub(resolve, quoted)}</div></details>')
        return mark_safe(f'<div class="body html">{CID_SRC.sub(resolve, new)}</div>')  # noqa: S308
    text = message.body_text or ""
    new = reply_part(text) if message.kind == "inbound" else text
    if new and new.strip() != text.strip():
        return mark_safe(
            f'<div class="body">{escape(new)}</div>'
            f'<details class="quoted"><summary>Show quoted text</summary>'
            f'<div class="body">{escape(text)}</div></details>')
    return mark_safe(f'<div class="body">{escape(text)}</div>')


DMARC_LABELS = {
    "pass": ("dmarc-pass", "DMARC pass", "The sender's domain vouches for this mail."),
    "fail": ("dmarc-fail", "DMARC fail",
             "The sender's domain did not vouch for this mail: the From address may be "
             "forged. Be careful with links, attachments and requests for data."),
}


@register.simple_tag
def dmarc_badge(message):
    """The sender's DMARC verdict (from the receiving server's Authentication-Results) on
    an inbound message; a fail stands out. Nothing when the mail carried no verdict."""
    inbound = next(iter(message.inbound_emails.all()), None)
    verdict = (inbound.details or {}).get("dmarc", "none") if inbound else "none"
    if verdict not in DMARC_LABELS:
        return ""
    css, label, title = DMARC_LABELS[verdict]
    return format_html('<span class="badge {}" title="{}">{}</span>', css, title, label)


@register.filter
def unread_label(count: int) -> str:
    """An unread count as shown: the selector stops counting at its cap ("99+")."""
    from tickets.notifications import UNREAD_COUNT_CAP

    return f"{UNREAD_COUNT_CAP - 1}+" if count >= UNREAD_COUNT_CAP else str(count)


@register.filter
def routing_action(action: dict) -> str:
    """One action of the ticket's routing trace in words: what the engine noted it did
    ("assigned to team Billing"), else the editor's label and value ("Add tag billing")."""
    from routing.forms import ACTION_LABELS

    if action.get("note"):
        return str(action["note"])[:1].upper() + str(action["note"])[1:]
    value = action.get("value")
    label = ACTION_LABELS.get(action.get("type"), action.get("type"))
    return f"{label} {value}" if value is not None else str(label)
