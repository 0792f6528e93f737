"""``manage.py inbound_smtp [--host H] [--port P] [--max-bytes N]``: the SMTP server that
receives mail forwarded to forwarding mailboxes' generated addresses (see
``channels_email.providers.forwarding.smtp``). Runs until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from channels_email.providers.forwarding.smtp import InboundSMTPServer


class Command(BaseCommand):
    help = "Receive mail forwarded to forwarding mailboxes' generated addresses (SMTP)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.INBOUND_SMTP_HOST,
                            help="Address to listen on (default INBOUND_SMTP_HOST, "
                                 f"{settings.INBOUND_SMTP_HOST})")
        parser.add_argument("--port", type=int, default=settings.INBOUND_SMTP_PORT,
                            help="Port (default INBOUND_SMTP_PORT, "
                                 f"{settings.INBOUND_SMTP_PORT})")
        parser.add_argument("--max-bytes", type=int, default=settings.INBOUND_SMTP_MAX_BYTES,
                            help="Largest message accepted (SIZE; larger ones get 552)")

    def handle(self, *args, host, port, max_bytes, **options):
        server = InboundSMTPServer(host, port, max_bytes=max_bytes).start()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write(f"Inbound SMTP server on {host}:{port} for "
                          f"*@{settings.INBOUND_EMAIL_DOMAIN} (up to {max_bytes} bytes)",
                          ending="\n")
        self.stdout.flush()
        try:
            stop.wait()
        finally:
            server.stop()
