"""``manage.py mailbox_watch [--shard i/n]``: hold one IMAP IDLE per connected mailbox of
this shard and queue a sync when new mail is announced (see ``channels_email.watch``).
Run n of them with --shard 0/n ... (n-1)/n to spread the connections; SIGTERM or Ctrl-C
stops it (nothing is lost: the next watcher, or beat's sweep, syncs from the cursor)."""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand, CommandError

from channels_email.watch import MailboxWatcher


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, _, count = text.partition("/")
        shard, shards = int(index), int(count or 1)
    except ValueError:
        raise CommandError(f"--shard wants i/n, like 0/2 (got {text!r})") from None
    if shards < 1 or not 0 <= shard < shards:
        raise CommandError(f"--shard {text}: i must be between 0 and n-1")
    return shard, shards


class Command(BaseCommand):
    help = "Watch IMAP mailboxes with IDLE and queue a sync when new mail arrives."

    def add_arguments(self, parser):
        parser.add_argument("--shard", default="0/1", help="i/n: watch the i-th of n shares")
        parser.add_argument("--reload", type=float, default=10.0,
                            help="seconds between re-reads of the mailbox list")

    def handle(self, *args, shard: str, reload: float, **options):
        index, count = parse_shard(shard)
        watcher = MailboxWatcher(shard=index, shards=count, reload_seconds=reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: watcher.stop())
        self.stdout.write(f"Watching IMAP mailboxes, shard {index}/{count}.")
        self.stdout.flush()
        watcher.run()
