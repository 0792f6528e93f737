"""Re-encrypt every stored mailbox credential under the first key of FERNET_KEYS.

Key rotation: put the new key first in FERNET_KEYS (keep the old ones after it), deploy,
run this command, then drop the old keys. Prints how many rows were re-encrypted.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from channels_email.services import connection_credentials_rotate


class Command(BaseCommand):
    help = "Re-encrypt all connection credentials under the first FERNET_KEYS key."

    def handle(self, *args, **options):
        done = connection_credentials_rotate()
        self.stdout.write(f"re-encrypted {done} credential(s) under the first key")
