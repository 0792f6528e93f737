"""Keep the garbage collector's full collections short in a web process.

CPython's full (generation 2) collection walks every container object the process tracks
and stops all of the process's threads while it does. A warmed-up web worker (Django,
the URLconf and middleware, Celery and kombu, the provider client libraries, connection
pools: about 145,000 objects) took 20 to 145 ms for one on this project's 2-core
machine, and 90 to 590 ms under gunicorn while other processes loaded the machine; one
comes every few thousand requests, and every request in flight on that worker waits:
that is what the webhooks' p99 was made of. Nearly all of those objects live as long as
the process, so once the worker is warm they are moved to the permanent generation
(``gc.freeze()``), which later collections skip; those then walk only what was
allocated since (about 3,000 objects: a millisecond or so).

``install()`` (called by the WSGI entry point) freezes after the 1st, 100th and 1,000th
request of the process: the first request of a kind imports and builds what it uses
lazily (the Celery app and its producer pool, a provider's module), so the later points
pick up what the first one could not have seen. Before each freeze the young generations
are collected (short: only recent objects), so little garbage is frozen; a frozen object
is still freed by reference counting when the last reference goes, only a reference
cycle among frozen objects is never collected. After the last point the receiver
disconnects itself.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading

from django.core.signals import request_finished

logger = logging.getLogger(__name__)

FREEZE_AFTER_REQUESTS = (1, 100, 1000)
_DISPATCH_UID = "helpdesk.gc_freeze"


class _Schedule:
    def __init__(self, points: tuple[int, ...]):
        self.points = frozenset(points)
        self.last = max(points)
        self.count = itertools.count(1)  # next() is atomic under the GIL
        self.lock = threading.Lock()

    def __call__(self, **_kwargs) -> None:
        n = next(self.count)
        if n not in self.points:
            return
        with self.lock:
            gc.collect(1)
            gc.freeze()
        logger.debug("gc.frozen requests=%s objects=%s", n, gc.get_freeze_count())
        if n >= self.last:
            request_finished.disconnect(dispatch_uid=_DISPATCH_UID)


def install(points: tuple[int, ...] = FREEZE_AFTER_REQUESTS) -> None:
    """Freeze the tracked objects after each of the ``points``-th finished requests of
    this process (a second call replaces the first one's schedule)."""
    request_finished.disconnect(dispatch_uid=_DISPATCH_UID)
    request_finished.connect(_Schedule(tuple(points)), dispatch_uid=_DISPATCH_UID,
                             weak=False)
