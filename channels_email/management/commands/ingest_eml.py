"""Store .eml files as InboundEmails of a tenant's connection and ingest them.

    manage.py ingest_eml --tenant SLUG --address ADDR [--create] [--report OUT.jsonl] PATH...

PATH is a file or a folder (read recursively, in sorted order). Each file is received
under the provider id ``file:<sha256>``, so running the command twice changes nothing.
With --create, a missing tenant and a manual connection for ADDR are made.
The last line printed is a JSON summary of counts by state.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from channels_email.ingest import inbound_email_ingest
from channels_email.mime import parse_email
from channels_email.models import EmailConnection
from channels_email.services import connection_create_manual, inbound_email_receive
from helpdesk.models import Tenant
from helpdesk.services import tenant_create
from helpdesk.tenancy import tenant_scope
from tickets.models import Ticket


def _files(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()
                                and not p.name.startswith(("_", "."))))
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"no such file or folder: {name}")
    return found


def report_line(path: Path, outcome) -> dict:
    parsed = outcome.parsed
    bounce = parsed.bounce if parsed else None
    return {
        "file": str(path),
        "state": outcome.state,
        "reason": outcome.reason,
        "ticket_number": outcome.ticket_number,
        "created_ticket": outcome.created_ticket,
        "subject": parsed.subject if parsed else "",
        "from_address": parsed.from_.email if parsed and parsed.from_ else "",
        "from_name": parsed.from_.name if parsed and parsed.from_ else "",
        "message_id": parsed.message_id if parsed else "",
        "in_reply_to": parsed.in_reply_to if parsed else [],
        "attachments": [a.filename for a in parsed.attachments] if parsed else [],
        "body_text_chars": len(parsed.text) if parsed else 0,
        "is_auto_reply": bool(parsed and parsed.is_auto_reply),
        "is_bounce": bounce is not None,
        "bounce": {
            "original_message_id": bounce.original_message_id,
            "recipient": bounce.recipients[0].recipient if bounce.recipients else "",
            "status": bounce.recipients[0].status if bounce.recipients else "",
        } if bounce else None,
    }


class Command(BaseCommand):
    help = "Store .eml files as inbound emails of a connection and ingest them."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR")
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--address", required=True, help="the connection's address")
        parser.add_argument("--create", action="store_true",
                            help="create the tenant and a manual connection when missing")
        parser.add_argument("--report", help="write one JSON line per file here")

    def handle(self, *args, paths, tenant, address, create, report, **options):
        files = _files(paths)
        tenant_obj = Tenant.objects.filter(slug=tenant.lower()).first()
        if tenant_obj is None:
            if not create:
                raise CommandError(f"no tenant {tenant!r} (use --create to make it)")
            tenant_obj = tenant_create(slug=tenant, name=tenant)
        counts: Counter[str] = Counter()
        out = open(report, "w", encoding="utf-8") if report else None  # noqa: SIM115
        try:
            with tenant_scope(tenant_obj):
                conn = EmailConnection.objects.filter(address=address.lower()).first()
                if conn is None:
                    if not create:
                        raise CommandError(f"no connection {address!r} in {tenant!r}")
                    conn = connection_create_manual(tenant=tenant_obj, address=address)
            for path in files:
                raw = path.read_bytes()
                with tenant_scope(tenant_obj):
                    row, _ = inbound_email_receive(
                        connection=conn,
                        provider_message_id=f"file:{hashlib.sha256(raw).hexdigest()}",
                        raw=raw,
                    )
                outcome = inbound_email_ingest(inbound_email_id=row.pk)
                if outcome.ticket_id and outcome.ticket_number is None:
                    with tenant_scope(tenant_obj):
                        outcome.ticket_number = (Ticket.objects.filter(pk=outcome.ticket_id)
                                                 .values_list("number", flat=True).first())
                if outcome.parsed is None:  # an earlier run ingested it; report it anyway
                    outcome.parsed = parse_email(raw)
                counts[outcome.state] += 1
                if out:
                    out.write(json.dumps(report_line(path, outcome), default=str) + "\n")
        finally:
            if out:
                out.close()
        self.stdout.write(json.dumps({"files": len(files), **dict(sorted(counts.items()))}))
