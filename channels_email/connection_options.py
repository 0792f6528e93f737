"""Connection settings an admin sets per mailbox (seed 002's "Connection Settings"), kept
with the mailbox's settings (``credentials["options"]``) and honoured by every task
through ``health.may_call`` / ``health.wait_seconds``:

- ``max_tries``: after this many failed calls in a row the connection waits
  ``cool_off_minutes`` after its last error before it is tried again (0: no limit; the
  health block's "Failing" flag is a separate, fixed count);
- ``skip_times``: daily windows ("02:00-04:00"; one may wrap past midnight) in the
  mailbox's ``time_zone`` (default: the server's) when nothing is fetched or sent;
- the connection timeout (``timeout_ms``) is the provider's, read with its settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.utils import timezone

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_skip_times(text: str) -> list[tuple[time, time]]:
    """"02:00-04:00, 13:00-13:30" -> windows; ValueError saying which part is wrong."""
    windows = []
    for part in filter(None, (p.strip() for p in re.split(r"[,;\n]", text or ""))):
        match = _WINDOW.match(part)
        if not match:
            raise ValueError(f"{part!r} is not a time window like 02:00-04:00")
        h1, m1, h2, m2 = map(int, match.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise ValueError(f"{part!r} is not a time of day")
        if (h1, m1) == (h2, m2):
            raise ValueError(f"{part!r} is empty")
        windows.append((time(h1, m1), time(h2, m2)))
    return windows


def format_skip_times(windows: list[tuple[time, time]]) -> str:
    return ", ".join(f"{a:%H:%M}-{b:%H:%M}" for a, b in windows)


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or settings.TIME_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone (like Europe/Berlin)") from None


@dataclass(frozen=True)
class ConnectionOptions:
    max_tries: int = 0
    cool_off_minutes: int = 0
    skip_times: tuple[tuple[time, time], ...] = ()
    time_zone: str = ""

    @classmethod
    def of(cls, connection) -> ConnectionOptions:
        data = (connection.credentials or {}).get("options") or {}
        try:
            return cls(max_tries=int(data.get("max_tries") or 0),
                       cool_off_minutes=int(data.get("cool_off_minutes") or 0),
                       skip_times=tuple(parse_skip_times(data.get("skip_times") or "")),
                       time_zone=str(data.get("time_zone") or ""))
        except ValueError:
            return cls()  # stored by our own form: never bad; ignore rather than block

    def skip_wait(self, now: datetime) -> float:
        """Seconds until the skip window ``now`` is in ends (0: not in one)."""
        if not self.skip_times:
            return 0.0
        try:
            local = now.astimezone(zone(self.time_zone))
        except ValueError:
            return 0.0
        for start, end in self.skip_times:
            day = local.date()
            begin = datetime.combine(day, start, local.tzinfo)
            finish = datetime.combine(day, end, local.tzinfo)
            if end <= start:  # wraps past midnight
                if local.time() >= start:
                    finish += timedelta(days=1)
                else:
                    begin -= timedelta(days=1)
            if begin <= local < finish:
                return (finish - local).total_seconds()
        return 0.0

    def cool_off_wait(self, connection, now: datetime) -> float:
        if not self.max_tries or connection.consecutive_errors < self.max_tries or \
                connection.last_error_at is None:
            return 0.0
        until = connection.last_error_at + timedelta(minutes=self.cool_off_minutes)
        return max(0.0, (until - now).total_seconds())


def wait_seconds(connection, now: datetime | None = None) -> float:
    """How long the connection's own settings say to wait before the next call."""
    options = ConnectionOptions.of(connection)
    now = now or timezone.now()
    return max(options.skip_wait(now), options.cool_off_wait(connection, now))
