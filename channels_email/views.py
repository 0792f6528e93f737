"""Admin pages of the email channel: emails that need attention (quarantined or failed),
their raw download and reprocessing. Tenant admins only; runs in the tenant scope."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from channels_email.ingest import inbound_email_ingest
from channels_email.models import InboundEmail, InboundState
from channels_email.selectors import inbound_email_get, inbound_emails_needing_attention
from channels_email.services import inbound_email_raw_read, inbound_email_reset_for_reprocess


def _admin_row(request, inbound_email_id: int) -> InboundEmail:
    try:
        row = inbound_email_get(tenant=request.tenant, inbound_email_id=inbound_email_id)
    except InboundEmail.DoesNotExist as exc:
        raise Http404("No such email") from exc
    if not request.membership.is_admin:
        raise PermissionDenied("Only workspace admins can do this.")
    return row


def inbound_attention_list(request):
    if not request.membership.is_admin:
        raise PermissionDenied("Only workspace admins can see this page.")
    state = request.GET.get("state", "")
    page = Paginator(inbound_emails_needing_attention(tenant=request.tenant, state=state),
                     50).get_page(request.GET.get("page"))
    return render(request, "channels_email/inbound_attention.html",
                  {"page": page, "state": state, "states": InboundState.choices})


def inbound_raw_download(request, inbound_email_id: int):
    row = _admin_row(request, inbound_email_id)
    data = inbound_email_raw_read(inbound_email=row, actor=request.user)
    response = HttpResponse(data, content_type="message/rfc822")
    response["Content-Disposition"] = f'attachment; filename="inbound-{row.pk}.eml"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@require_POST
def inbound_reprocess(request, inbound_email_id: int):
    row = _admin_row(request, inbound_email_id)
    if inbound_email_reset_for_reprocess(inbound_email=row, actor=request.user):
        outcome = inbound_email_ingest(inbound_email_id=row.pk)
        level = messages.SUCCESS if outcome.state == InboundState.PROCESSED else messages.WARNING
        messages.add_message(request, level, f"Email {row.pk} reprocessed: {outcome.state}"
                             + (f" ({outcome.reason})" if outcome.reason else ""))
    else:
        messages.info(request, f"Email {row.pk} is already processed.")
    return redirect("channels_email:attention", tenant_slug=request.tenant.slug)
