"""A real Celery worker on the real Redis runs the ingest task against PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connection

from channels_email.models import InboundEmail
from channels_email.services import connection_create_manual, inbound_email_receive
from channels_email.tasks import process_inbound_email
from helpdesk.tenancy import tenant_scope
from tests.channels_email.mail_builder import build_email
from tests.factories import TenantFactory
from tickets.models import Ticket


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_worker_ingests_enqueued_emails(tmp_path):
    tenant = TenantFactory()
    with tenant_scope(tenant):
        conn = connection_create_manual(tenant=tenant, address="help@company.example")
        rows = [
            inbound_email_receive(connection=conn, provider_message_id=f"w{i}", raw=raw)[0]
            for i, raw in enumerate([
                build_email(message_id="<w1@c.example>"),
                build_email(message_id="<w2@c.example>", in_reply_to="<w1@c.example>"),
            ])
        ]
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    env = dict(os.environ, DATABASE_URL=f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
               REDIS_URL=settings.REDIS_URL, MEDIA_ROOT=settings.STORAGES["default"]["OPTIONS"]
               ["location"])
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "helpdesk", "worker", "--pool", "solo", "-Q",
         "ingest", "--loglevel", "INFO", "--without-mingle", "--without-gossip"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    try:
        for row in rows:
            process_inbound_email.delay(inbound_email_id=row.pk)
        deadline = time.monotonic() + 90
        with tenant_scope(tenant):
            while (InboundEmail.objects.filter(state="processed").count() < 2
                   and time.monotonic() < deadline):
                assert worker.poll() is None, log.read_text()
                time.sleep(0.3)
            assert InboundEmail.objects.filter(state="processed").count() == 2, log.read_text()
            assert Ticket.objects.count() == 1
            assert Ticket.objects.get().messages.count() == 2
    finally:
        worker.terminate()
        worker.wait(timeout=30)
