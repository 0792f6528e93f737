"""The Redis client the workers coordinate through (locks, coalescing marks, counters),
one connection pool per process, and the key namespace they share with the cache
(``CACHE_KEY_PREFIX``, so that two deployments on one Redis never meet)."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def redis_key(*parts: object) -> str:
    """``<prefix>:part:part...``"""
    return ":".join([settings.CACHES["default"]["KEY_PREFIX"], *map(str, parts)])
