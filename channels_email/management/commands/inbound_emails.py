"""List, download and reprocess inbound emails that need attention.

    manage.py inbound_emails --tenant SLUG list [--state quarantined|failed|skipped]
    manage.py inbound_emails --tenant SLUG download ID --out FILE
    manage.py inbound_emails --tenant SLUG reprocess ID [ID ...]

Downloads and reprocessing are written to the tenant's audit trail (actor: none, the
command line).
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from channels_email.ingest import inbound_email_reprocess
from channels_email.models import InboundEmail
from channels_email.selectors import inbound_email_get, inbound_emails_needing_attention
from channels_email.services import inbound_email_raw_read
from helpdesk.models import Tenant
from helpdesk.tenancy import tenant_scope


class Command(BaseCommand):
    help = "List, download and reprocess quarantined or failed inbound emails."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True)
        sub = parser.add_subparsers(dest="verb", required=True)
        listing = sub.add_parser("list")
        listing.add_argument("--state", default="")
        download = sub.add_parser("download")
        download.add_argument("id", type=int)
        download.add_argument("--out", required=True)
        reprocess = sub.add_parser("reprocess")
        reprocess.add_argument("ids", type=int, nargs="+")

    def handle(self, *args, tenant, verb, **options):
        tenant_obj = Tenant.objects.filter(slug=tenant).first()
        if tenant_obj is None:
            raise CommandError(f"no tenant {tenant!r}")
        with tenant_scope(tenant_obj):
            if verb == "list":
                for row in inbound_emails_needing_attention(tenant=tenant_obj,
                                                            state=options["state"]):
                    self.stdout.write(f"{row.pk}\t{row.state}\t{row.received_at:%Y-%m-%d %H:%M}"
                                      f"\t{row.from_address or '-'}\t{row.reason[:120]}")
                return
            if verb == "download":
                row = self._row(tenant_obj, options["id"])
                Path(options["out"]).write_bytes(
                    inbound_email_raw_read(inbound_email=row, actor=None))
                self.stdout.write(f"wrote {row.raw_size} bytes to {options['out']}")
                return
            for pk in options["ids"]:
                row = self._row(tenant_obj, pk)
                outcome = inbound_email_reprocess(inbound_email=row, actor=None)
                if outcome is None:
                    self.stdout.write(f"{pk}\talready processed")
                    continue
                self.stdout.write(f"{pk}\t{outcome.state}\t{outcome.reason}")

    @staticmethod
    def _row(tenant, pk: int) -> InboundEmail:
        try:
            return inbound_email_get(tenant=tenant, inbound_email_id=pk)
        except InboundEmail.DoesNotExist as exc:
            raise CommandError(f"no inbound email {pk} in this tenant") from exc
