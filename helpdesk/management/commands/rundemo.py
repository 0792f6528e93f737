"""Run the whole product locally: migrate, seed, then web + Celery worker + beat.

Started by ``make demo`` (inside ``python -m helpdesk.embedded run``, which provides
PostgreSQL and Redis when the environment names none). Ctrl-C stops every process.
``--check`` starts everything, proves it works over HTTP and through the worker, then
stops: the demo's own smoke test.
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid

import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from helpdesk.demo import ADMIN_EMAIL, AGENT_EMAIL, DEMO_PASSWORD, seed_demo


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Command(BaseCommand):
    help = "Migrate, seed the demo data and run web + worker + beat until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", 8000)))
        parser.add_argument("--check", action="store_true",
                            help="start, verify over HTTP and through the worker, then stop")

    def handle(self, *args, port: int, check: bool, **options):
        if settings.DJANGO_ENV == "prod":
            raise CommandError("rundemo is for dev only")
        while not _port_free(port):
            port += 1
        call_command("migrate", interactive=False, verbosity=0)
        report = seed_demo()
        python = sys.executable
        commands = {
            "web": [python, "-m", "gunicorn", "helpdesk.wsgi:application",
                    "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
                    "--access-logfile", "-", "--graceful-timeout", "5"],
            "worker": [python, "-m", "celery", "-A", "helpdesk", "worker",
                       "-Q", ",".join(settings.CELERY_TASK_QUEUES_NAMES),
                       "--concurrency", "2", "--loglevel", "INFO"],
            "beat": [python, "-m", "celery", "-A", "helpdesk", "beat", "--loglevel", "INFO",
                     "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME],
        }
        env = dict(os.environ, PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")
        procs = {name: subprocess.Popen(cmd, env=env) for name, cmd in commands.items()}
        url = f"http://127.0.0.1:{port}/"
        self.stdout.write(self.style.SUCCESS(f"\nHelpdesk demo is starting at {url}"))
        self.stdout.write(f"  Demo data: {report}")
        self.stdout.write(f"  Admin: {ADMIN_EMAIL} / {DEMO_PASSWORD}  (also /admin/)")
        self.stdout.write(f"  Agent: {AGENT_EMAIL} / {DEMO_PASSWORD}")
        self.stdout.write("  Press Ctrl-C to stop everything.\n")

        stopping = False

        def stop(signum, _frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            if check:
                self._check(url, procs)
                self.stdout.write(self.style.SUCCESS("demo check passed"))
                return
            while not stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise CommandError(f"{name} exited with code {proc.returncode}")
                time.sleep(0.5)
        finally:
            self._stop(procs)

    def _stop(self, procs):
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stdout.write("demo stopped")

    def _check(self, url: str, procs) -> None:
        """Sign in as the agent, open the ticket list and a ticket, and round-trip a task
        through the worker. Raises CommandError on the first failure."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open(url + "healthz", timeout=5).read()
                break
            except OSError as exc:
                if time.monotonic() > deadline or procs["web"].poll() is not None:
                    raise CommandError(f"web never answered: {exc}") from exc
                time.sleep(0.5)
        opener.open(url + "accounts/login/", timeout=10).read()
        csrf = next(c.value for c in jar if c.name == "csrftoken")
        data = urllib.parse.urlencode({
            "username": AGENT_EMAIL, "password": DEMO_PASSWORD, "csrfmiddlewaretoken": csrf,
        }).encode()
        request = urllib.request.Request(url + "accounts/login/", data=data,
                                         headers={"Referer": url + "accounts/login/"})
        page = opener.open(request, timeout=10).read().decode()
        if "Charged twice for the November invoice" not in page:
            raise CommandError("signed-in ticket list does not show the seeded tickets")
        number = re.search(r'href="/acme/tickets/(\d+)/"', page)
        if not number:
            raise CommandError("ticket list has no ticket links")
        detail = opener.open(f"{url}acme/tickets/{number.group(1)}/", timeout=10).read().decode()
        if 'class="msg' not in detail:
            raise CommandError("ticket view shows no timeline")
        self.stdout.write("web: login, ticket list and ticket view OK")

        from helpdesk.tasks import ping

        key, value = f"demo-check:{uuid.uuid4().hex}", "pong"
        ping.delay(key=key, value=value)
        client = redis.Redis.from_url(settings.REDIS_URL)
        deadline = time.monotonic() + 60
        while client.get(key) != value.encode():
            if time.monotonic() > deadline:
                raise CommandError("the worker did not run the ping task within 60 s")
            time.sleep(0.2)
        client.delete(key)
        self.stdout.write("worker: ping task round trip OK")
        if procs["beat"].poll() is not None:
            raise CommandError("beat exited")
