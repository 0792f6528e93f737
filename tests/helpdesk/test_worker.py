"""A real Celery worker on the real Redis consumes our queues."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import redis
from django.conf import settings

from helpdesk.tasks import ping


@pytest.mark.slow
def test_worker_runs_a_task_from_the_maintenance_queue(tmp_path):
    queue_env = dict(os.environ, REDIS_URL=settings.REDIS_URL)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "helpdesk", "worker", "--pool", "solo",
         "-Q", "maintenance", "--loglevel", "WARNING", "--without-mingle", "--without-gossip"],
        env=queue_env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w"),
    )
    key = f"test-ping:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        ping.delay(key=key, value="pong")
        deadline = time.monotonic() + 60
        while client.get(key) is None and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.2)
        assert client.get(key) == b"pong"
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        client.delete(key)
