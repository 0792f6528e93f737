"""Re-encrypt every stored mailbox credential under the first key of FERNET_KEYS.

Key rotation: put the new key first in FERNET_KEYS (keep the old ones after it), deploy,
run this command, then drop the old keys. Prints how many rows were re-encrypted.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import connection, transaction

from channels_email.models import EmailConnection
from helpdesk.crypto import rotate


class Command(BaseCommand):
    help = "Re-encrypt all connection credentials under the first FERNET_KEYS key."

    def handle(self, *args, **options):
        table = EmailConnection._meta.db_table  # our own table name, never input
        done = 0
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SELECT id, credentials FROM {table} "  # noqa: S608
                           "WHERE credentials IS NOT NULL AND credentials <> '' FOR UPDATE")
            for pk, token in cursor.fetchall():
                cursor.execute(f"UPDATE {table} SET credentials = %s WHERE id = %s",  # noqa: S608
                               [rotate(token), pk])
                done += 1
        self.stdout.write(f"re-encrypted {done} credential(s) under the first key")
