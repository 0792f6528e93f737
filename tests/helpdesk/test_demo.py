"""The demo seed and the demo itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.core.management import call_command

from helpdesk.demo import AGENT_EMAIL, demo_report
from helpdesk.models import User


@pytest.mark.django_db
def test_seed_twice_creates_what_it_says_once(client, capsys):
    call_command("seed_demo")
    first = demo_report()
    call_command("seed_demo")
    assert demo_report() == first
    assert (first.tenants, first.users, first.teams, first.flows) == (2, 2, 2, 1)
    assert first.contacts == 7 and first.tickets == 8 and first.messages == 15
    assert "8 tickets" in capsys.readouterr().out

    client.force_login(User.objects.get(email=AGENT_EMAIL))
    listing = client.get("/acme/tickets/").content.decode()
    assert "Charged twice for the November invoice" in listing
    ticket = client.get("/acme/tickets/1/").content.decode()
    assert "my card was charged twice" in ticket and "msg note" in ticket
    assert client.get("/globex/tickets/").status_code == 404  # the agent is not in Globex


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_rundemo_check_brings_up_web_worker_and_beat(django_db_blocker):
    """`make demo`'s command end to end: migrate, seed, gunicorn + worker + beat, then a
    sign-in, the ticket list, a ticket and a task through the worker, then a clean stop.
    It runs against the test database so that the developer's demo data is untouched."""
    from django.db import connection

    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    url = f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env = dict(os.environ, DATABASE_URL=url, DJANGO_ENV="dev", DEBUG="false")
    result = subprocess.run(
        [sys.executable, "manage.py", "rundemo", "--check", "--port", "8790"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo check passed" in result.stdout
    assert "gmail: connect, route to a team, sandbox email -> ticket OK" in result.stdout
    assert "demo stopped" in result.stdout
