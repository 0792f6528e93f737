"""The embedded PostgreSQL and Redis, started in a scratch folder of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, psycopg, redis, json;"
    "c = psycopg.connect(os.environ['DATABASE_URL']);"
    "v = c.execute('show server_version').fetchone()[0];"
    "r = redis.Redis.from_url(os.environ['REDIS_URL']); r.set('k', 'v');"
    "print(json.dumps({'pg': v, 'redis': r.get('k').decode(),"
    " 'db': os.environ['DATABASE_URL'], 'rd': os.environ['REDIS_URL']}))"
)


@pytest.mark.slow
def test_run_starts_real_servers_and_stops_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env["HELPDESK_VAR_DIR"] = str(tmp_path / "var")
    result = subprocess.run(
        [sys.executable, "-m", "helpdesk.embedded", "run", "--", sys.executable, "-c", PROBE],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["pg"].split(".")[0].isdigit() and seen["redis"] == "v"
    assert seen["db"].startswith("postgres://postgres@127.0.0.1:")
    assert (tmp_path / "var" / "postgres" / "PG_VERSION").exists()
    status = subprocess.run([sys.executable, "-m", "helpdesk.embedded", "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "postgres: down" in status.stdout and "redis:    down" in status.stdout


def test_run_uses_configured_servers_without_starting_any(tmp_path):
    env = dict(os.environ, DATABASE_URL="postgres://nobody@127.0.0.1:1/x",
               REDIS_URL="redis://127.0.0.1:1/0", HELPDESK_VAR_DIR=str(tmp_path / "var"))
    result = subprocess.run(
        [sys.executable, "-m", "helpdesk.embedded", "run", "--", sys.executable, "-c",
         "import os; print(os.environ['DATABASE_URL'], os.environ['REDIS_URL'])"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.split() == ["postgres://nobody@127.0.0.1:1/x", "redis://127.0.0.1:1/0"]
    assert not (tmp_path / "var" / "postgres").exists()
