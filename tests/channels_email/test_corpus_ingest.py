"""Every real-world email of ../shared/corpus/ goes through the whole pipeline."""

from __future__ import annotations

import csv

import pytest

from channels_email.ingest import inbound_email_ingest
from channels_email.services import connection_create_manual, inbound_email_receive
from helpdesk.tenancy import tenant_scope
from tests.channels_email.corpus import CORPUS, corpus_files, needs_corpus

NEVER_A_TICKET = {"bounce", "delay", "auto_reply", "challenge", "complaint"}


def expectations() -> dict[str, str]:
    path = CORPUS / "bounce_expectations.csv"
    if not path.exists():
        return {}
    with path.open() as fh:
        return {row["file"]: row["verdict"] for row in csv.DictReader(fh)}


FILES = corpus_files()
VERDICTS = expectations()


@needs_corpus
@pytest.mark.django_db
@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_email_ingests_with_a_final_state(path, tenant):
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="support@helpdesk-test.example")
        row, _ = inbound_email_receive(connection=conn, provider_message_id=path.name,
                                       raw=path.read_bytes())
    outcome = inbound_email_ingest(inbound_email_id=row.pk)
    assert outcome.state in {"processed", "skipped", "quarantined"}, outcome.reason
    if outcome.state != "processed":
        assert outcome.reason
    row.refresh_from_db()
    assert row.state == outcome.state and row.raw.read() == path.read_bytes()
    verdict = VERDICTS.get(str(path.relative_to(CORPUS)))
    if verdict in NEVER_A_TICKET:
        assert not outcome.created_ticket, f"{verdict} became ticket {outcome.ticket_number}"
    if verdict == "bounce":
        assert outcome.reason.startswith("bounce:") or outcome.state == "quarantined"
