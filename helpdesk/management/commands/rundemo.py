"""Run the whole product locally: migrate, seed, then the provider sandbox, web, Celery
worker and beat. The sandbox stands in for Google (OAuth consent, Gmail, Pub/Sub push to
our webhook) and Microsoft (sign-in and consent over its TLS listener, Graph): an admin
can connect a Gmail or a Microsoft 365 mailbox and deliver customer mail from its page.
How each provider is wired to the sandbox comes from the provider (``sandbox_demo``).

Started by ``make demo`` (inside ``python -m helpdesk.embedded run``, which provides
PostgreSQL and Redis when the environment names none). Ctrl-C stops every process.
The demo runs with DEBUG off, as newcomers should judge it (our own error pages, never
Django's technical ones); whitenoise serves the static files from their source folders
outside prod, so nothing is collected first. One "Ready" line with the address and the
sign-ins is printed once web, worker and beat all answer.
``--check`` starts everything, proves it works over HTTP and through the worker, then
stops: the demo's own smoke test.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from channels_email import providers
from channels_email.providers.base import OAUTH_MAILBOX, Capability
from helpdesk.coordination import redis_client
from helpdesk.demo import ADMIN_EMAIL, AGENT_EMAIL, DEMO_MAILBOX, DEMO_PASSWORD, seed_demo

# The demo's IMAP mailbox on the local Dovecot, and a customer who writes to it.
DEMO_IMAP_USER = "help@imap.demo"
DEMO_IMAP_CUSTOMER = "customer@imap.demo"
DEMO_IMAP_PASSWORD = "demo-imap-password"
# The demo's forwarding mailbox: Acme forwards this support address to a generated one.
DEMO_FORWARDED = "hello@acme.example"


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
        forwarded = self._forwarding_mailbox()
        smtp_port = settings.INBOUND_SMTP_PORT
        while not _port_free(smtp_port):
            smtp_port += 1
        self._smtp_port = smtp_port
        python = sys.executable
        commands = {
            "web": [python, "-m", "gunicorn", "helpdesk.wsgi:application",
                    "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
                    "--access-logfile", "-", "--graceful-timeout", "20"],
            "worker": [python, "-m", "celery", "-A", "helpdesk", "worker",
                       "-Q", ",".join(settings.CELERY_TASK_QUEUES_NAMES),
                       "--concurrency", "2", "--loglevel", "INFO"],
            "beat": [python, "-m", "celery", "-A", "helpdesk", "beat", "--loglevel", "INFO",
                     "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME],
            # IMAP IDLE as push for IMAP/SMTP mailboxes (channels_email/watch.py).
            "watcher": [python, "manage.py", "mailbox_watch"],
            # Mail forwarded to forwarding mailboxes (channels_email/providers/forwarding/).
            "inbound_smtp": [python, "manage.py", "inbound_smtp", "--host", "127.0.0.1",
                             "--port", str(smtp_port)],
        }
        public = f"http://127.0.0.1:{port}"
        sandbox_proc, info, demos = self._start_sandbox(public)
        sandbox_url = info["url"].rstrip("/")
        env = dict(os.environ, PUBLIC_BASE_URL=public, SANDBOX_URL=sandbox_url, DEBUG="false",
                   SANDBOX_HTTPS_URL=info["https_url"], SANDBOX_CA_FILE=info["ca_file"])
        for _, demo in demos:
            env.update(demo.env)
        procs = {"sandbox": sandbox_proc}
        imap_note = "IMAP demo mail server: not started (install dovecot-imapd dovecot-lmtpd)"
        mail_proc, mail_info = self._start_mailserver()
        self._mail_info = mail_info
        if mail_proc is not None:
            procs["mailserver"] = mail_proc
            env["IMAP_EXTRA_CA_FILE"] = mail_info["ca_file"]
            imap_note = (f"IMAP demo mail server: host 127.0.0.1, IMAP SSL/TLS port "
                         f"{mail_info['imaps_port']}, SMTP STARTTLS port "
                         f"{mail_info['submission_port']}, user {DEMO_IMAP_USER}, password "
                         f"{DEMO_IMAP_PASSWORD} (Add Email Account > IMAP/SMTP); a customer "
                         f"mailbox {DEMO_IMAP_CUSTOMER}, same password, to write from in a "
                         "mail client (this server refuses mail to any other address)")
        started = time.time()
        # Each child in a session of its own: Ctrl-C reaches rundemo only, which stops
        # each child once (gunicorn's gthread workers hang when the terminal's SIGINT and
        # their master's signal both reach them) and then ends its whole group.
        procs.update({name: subprocess.Popen(cmd, env=env, start_new_session=True)
                      for name, cmd in commands.items()})
        url = f"http://127.0.0.1:{port}/"
        self.stdout.write(f"Starting the demo ({report}): web, worker, beat, the mailbox "
                          "watcher, the inbound SMTP server, the provider sandbox and the "
                          "demo mail server...")
        self._stopping = False

        def stop(signum, _frame):
            self._stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            if not self._wait_ready(url, procs, started):
                return  # Ctrl-C while starting
            offered = ", ".join(f"{demo.mailbox} ({provider.label})"
                                for provider, demo in demos if demo.mailbox)
            self.stdout.write(self.style.SUCCESS(
                f"Ready: {url}  sign in as {ADMIN_EMAIL} (admin) or {AGENT_EMAIL} (agent), "
                f"password {DEMO_PASSWORD}; provider sandbox {sandbox_url}/_sandbox/ (connect "
                f"{offered} under Email channels); Ctrl-C stops everything"))
            self.stdout.write(imap_note)
            self.stdout.write(
                f"Forwarding demo: {DEMO_FORWARDED} forwards to {forwarded}; the inbound SMTP "
                f"server on 127.0.0.1:{smtp_port} makes a ticket of mail sent there, e.g. "
                f"swaks --server 127.0.0.1:{smtp_port} --from you@example.com --to "
                f"{forwarded} (any other address is refused)")
            if check:
                self._check(url, procs, sandbox_url, demos)
                self.stdout.write(self.style.SUCCESS("demo check passed"))
                return
            while not self._stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise CommandError(f"{name} exited with code {proc.returncode}")
                time.sleep(0.5)
        finally:
            self._stop(procs)

    def _wait_ready(self, url: str, procs, started: float, timeout: float = 90) -> bool:
        """True once the web answers /healthz, the worker has run a ping task and beat
        has written its schedule; False on Ctrl-C meanwhile; CommandError when one of them
        exits or is not there in ``timeout`` seconds."""
        from helpdesk.tasks import ping

        deadline = time.monotonic() + timeout
        key, value = f"demo-ready:{uuid.uuid4().hex}", "pong"
        client = redis_client()
        ping.delay(key=key, value=value)
        schedule = settings.CELERY_BEAT_SCHEDULE_FILENAME
        waiting = {"web", "worker", "beat", "inbound_smtp"}
        while waiting and not self._stopping:
            for name in ("web", "worker", "beat", "watcher", "inbound_smtp", "sandbox"):
                if procs[name].poll() is not None:
                    raise CommandError(f"{name} exited with code {procs[name].returncode}")
            if "web" in waiting:
                try:
                    urllib.request.urlopen(url + "healthz", timeout=5).read()
                    waiting.discard("web")
                except OSError:
                    pass
            if "inbound_smtp" in waiting and not _port_free(self._smtp_port):
                waiting.discard("inbound_smtp")
            if "worker" in waiting and client.get(key) == value.encode():
                client.delete(key)
                waiting.discard("worker")
            # Beat writes its schedule file (shelve: one of these suffixes) once its
            # scheduler is set up.
            if "beat" in waiting and any(
                    os.path.exists(schedule + suffix)
                    and os.path.getmtime(schedule + suffix) >= started - 1
                    for suffix in ("", ".db", ".dat", ".dir")):
                waiting.discard("beat")
            if waiting and time.monotonic() > deadline:
                raise CommandError(f"not answering after {timeout:.0f} s: "
                                   + ", ".join(sorted(waiting)))
            time.sleep(0.3)
        return not waiting

    def _start_sandbox(self, public: str) -> tuple[subprocess.Popen, dict, list]:
        """Start the sandbox on free ports and point it at this demo as each provider
        says (its ``sandbox_demo``: our app with its callback, push targets, a mailbox);
        its server.json and the providers' demos."""
        info = settings.VAR_DIR / "sandbox" / "server.json"
        info.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "sandbox", "--port", "0"],
                                cwd=settings.BASE_DIR, start_new_session=True)
        deadline = time.monotonic() + 30
        while not info.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise CommandError("the provider sandbox did not start")
            time.sleep(0.1)
        server = json.loads(info.read_text())
        sandbox_url = server["url"].rstrip("/")
        demos = providers.sandbox_demos(public_url=public, sandbox=server,
                                        suggested=(DEMO_MAILBOX,))
        for _, demo in demos:
            for path, body in demo.calls:
                request = urllib.request.Request(sandbox_url + path, method="POST",
                                                 data=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json"})
                urllib.request.urlopen(request, timeout=10).read()
        return proc, server, demos

    def _start_mailserver(self) -> tuple[subprocess.Popen | None, dict]:
        """Dovecot and its SMTP submission server (sandbox/mailserver.py) with one demo
        mailbox and one customer, when Dovecot is installed; (None, {}) otherwise."""
        from sandbox.mailserver import dovecot_available

        if not dovecot_available():
            return None, {}
        root = settings.VAR_DIR / "mailserver"
        info = root / "server.json"
        info.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.mailserver", "--root", str(root),
             "--user", f"{DEMO_IMAP_USER}:{DEMO_IMAP_PASSWORD}",
             "--user", f"{DEMO_IMAP_CUSTOMER}:{DEMO_IMAP_PASSWORD}"],
            cwd=settings.BASE_DIR, start_new_session=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not info.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise CommandError("the demo mail server (Dovecot) did not start")
            time.sleep(0.1)
        return proc, json.loads(info.read_text())

    def _stop(self, procs):
        """SIGTERM each child once, wait (gunicorn's graceful timeout is 20 s), then kill
        whatever is left of each child's process group (a worker its master lost)."""
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 25
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its session's pgid is its pid
            except ProcessLookupError:
                pass  # the whole group has exited: the usual case
        self.stdout.write("demo stopped")

    @staticmethod
    def _signed_in(url: str, email: str):
        """A cookie-keeping opener signed in as ``email``, the login page's answer, and a
        ``post(target, fields, referer)`` that sends the CSRF token along."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def post(target: str, fields: dict | list, referer: str):
            csrf = next(c.value for c in jar if c.name == "csrftoken")
            data = urllib.parse.urlencode(
                [*(fields.items() if isinstance(fields, dict) else fields),
                 ("csrfmiddlewaretoken", csrf)], doseq=True).encode()
            request = urllib.request.Request(target, data=data, headers={"Referer": referer})
            return opener.open(request, timeout=20)

        login = url + "accounts/login/"
        opener.open(login, timeout=10).read()
        page = post(login, {"username": email, "password": DEMO_PASSWORD}, login)
        return opener, page.read().decode(), post

    def _check(self, url: str, procs, sandbox_url: str, demos) -> None:
        """Sign in as the agent, open the ticket list and a ticket, and round-trip a task
        through the worker. Raises CommandError on the first failure."""
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "healthz", timeout=5).read()
                break
            except OSError as exc:
                if time.monotonic() > deadline or procs["web"].poll() is not None:
                    raise CommandError(f"web never answered: {exc}") from exc
                time.sleep(0.5)
        opener, page, _ = self._signed_in(url, AGENT_EMAIL)
        if "Charged twice for the November invoice" not in page:
            raise CommandError("signed-in ticket list does not show the seeded tickets")
        number = re.search(r'href="/acme/tickets/(\d+)/"', page)
        if not number:
            raise CommandError("ticket list has no ticket links")
        detail = opener.open(f"{url}acme/tickets/{number.group(1)}/", timeout=10).read().decode()
        if 'class="msg' not in detail:
            raise CommandError("ticket view shows no timeline")
        try:
            opener.open(url + "acme/no-such-page/", timeout=10).read()
            raise CommandError("a missing page did not answer 404")
        except urllib.error.HTTPError as missing:
            if missing.code != 404 or b"DEBUG = True" in missing.read():
                raise CommandError("a missing page shows Django's technical 404 (DEBUG is "
                                   "on)") from missing
        self.stdout.write("web: login, ticket list, ticket view and a plain 404 OK")

        from helpdesk.tasks import ping

        key, value = f"demo-check:{uuid.uuid4().hex}", "pong"
        ping.delay(key=key, value=value)
        client = redis_client()
        deadline = time.monotonic() + 60
        while client.get(key) != value.encode():
            if time.monotonic() > deadline:
                raise CommandError("the worker did not run the ping task within 60 s")
            time.sleep(0.2)
        client.delete(key)
        self.stdout.write("worker: ping task round trip OK")
        if procs["beat"].poll() is not None:
            raise CommandError("beat exited")
        for provider, demo in demos:
            if providers.can(provider.name, Capability.OAUTH_SIGN_IN):
                self._check_connect(url, sandbox_url, provider, demo)
        self._check_demo_mailbox(url, sandbox_url)
        if "mailserver" in procs:
            self._check_imap(url, self._mail_info)
        self._check_forwarding(url)

    @staticmethod
    def _forwarding_mailbox() -> str:
        """The generated address of Acme's demo forwarding mailbox (created once)."""
        from channels_email.models import ConnectionStatus, EmailConnection
        from channels_email.services import connection_create_forwarding
        from helpdesk.models import Tenant
        from helpdesk.tenancy import tenant_scope

        name = next(p.name for p in providers.enabled()
                    if Capability.FORWARDED in p.capabilities)
        acme = Tenant.objects.get(slug="acme")
        with tenant_scope(acme):
            conn = (EmailConnection.objects.filter(provider=name, address=DEMO_FORWARDED)
                    .exclude(status=ConnectionStatus.DISCONNECTED).first()) or \
                connection_create_forwarding(tenant=acme, actor=None, provider=name,
                                             address=DEMO_FORWARDED,
                                             display_name="Acme Support")
        return conn.inbound_address

    def _check_forwarding(self, url: str) -> None:
        """The forwarding path: an unknown address is refused at RCPT, and an email sent
        by SMTP to the demo's generated address becomes a ticket (server -> worker)."""
        import smtplib

        forwarded = self._forwarding_mailbox()
        subject = f"Forwarding demo check {uuid.uuid4().hex[:8]}"
        raw = (f"From: Dana Customer <dana@customer.example>\r\nTo: {DEMO_FORWARDED}\r\n"
               f"Subject: {subject}\r\nMessage-ID: <{uuid.uuid4().hex}@customer.example>"
               "\r\n\r\nForwarded to you.\r\n").encode()
        with smtplib.SMTP("127.0.0.1", self._smtp_port, timeout=20) as smtp:
            smtp.ehlo()
            smtp.mail("dana@customer.example")
            code, _ = smtp.rcpt(f"nobody@{settings.INBOUND_EMAIL_DOMAIN}")
            if code != 550:
                raise CommandError(f"the inbound SMTP server answered {code} to an unknown "
                                   "address (550 expected)")
            smtp.rset()
            smtp.sendmail("dana@customer.example", [forwarded], raw)
        opener, _, _ = self._signed_in(url, ADMIN_EMAIL)
        _wait_for_ticket(opener, f"{url}acme/tickets/?view=unassigned", subject,
                         "the forwarded email")
        self.stdout.write("forwarding: unknown address refused at RCPT, email -> ticket OK")

    def _check_connect(self, url: str, sandbox_url: str, provider, demo) -> None:
        """A provider's path as an admin walks it, against the sandbox: connect (sign-in
        and consent), route to a team, and, for a provider with the whole mailbox, deliver
        a customer email and see the ticket appear (push -> webhook -> worker). The
        check's mailbox is disconnected afterwards."""
        opener, _, post = self._signed_in(url, ADMIN_EMAIL)
        channels = url + "acme/settings/email/"
        opener.open(channels, timeout=10).read()
        mailbox = f"demo-check-{uuid.uuid4().hex[:8]}@{demo.check_domain}"
        if demo.new_mailbox:
            self._sandbox(sandbox_url, "/_sandbox/mailboxes",
                          {"email": mailbox, **demo.new_mailbox})
        consent = post(f"{channels}connect/{provider.name}/", {}, channels)  # the sandbox
        auth = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(consent.geturl()).query))
        fields = provider.sandbox_consent(auth, mailbox)
        landed = opener.open(urllib.request.Request(
            consent.geturl().split("?")[0], data=urllib.parse.urlencode(fields).encode()),
            timeout=20)  # Allow -> our callback -> the new connection's routing page
        page, where = landed.read().decode(), landed.geturl()
        team = re.search(r'<option value="(\d+)">Billing</option>', page)
        if not re.search(r"/acme/settings/email/\d+/$", where) or not team:
            raise CommandError(f"{provider.label} connect did not reach the routing page "
                               f"({where})")
        connection_id = re.search(r"/email/(\d+)/$", where).group(1)
        if not OAUTH_MAILBOX <= provider.capabilities:
            post(f"{channels}{connection_id}/disconnect/", {}, channels).read()
            self.stdout.write(f"{provider.name}: connect (sign-in only here) OK")
            return
        post(where, {"display_name": "Acme Support", "routing_mode": "team",
                     "routing_team": team.group(1)}, where).read()
        subject = f"Demo check {uuid.uuid4().hex[:8]}"
        request = urllib.request.Request(
            sandbox_url + "/_sandbox/deliver", method="POST",
            data=json.dumps({"to": mailbox, "from": "Dana Customer <dana@example.net>",
                             "subject": subject, "body": "Is anyone there?"}).encode(),
            headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        _wait_for_ticket(opener, f"{url}acme/tickets/?team={team.group(1)}", subject,
                         "the sandbox email")
        post(f"{channels}{connection_id}/disconnect/", {}, channels).read()
        self.stdout.write(f"{provider.name}: connect, route to a team, sandbox email -> "
                          "ticket OK")

    def _check_imap(self, url: str, info: dict) -> None:
        """The IMAP path as an admin walks it, against the demo's Dovecot: Test
        connection, Save, then a customer's email delivered to the mailbox becomes a
        ticket through IDLE (watcher -> worker). Disconnected afterwards."""
        from sandbox.mailserver import MailServer

        opener, _, post = self._signed_in(url, ADMIN_EMAIL)
        channels = url + "acme/settings/email/"
        form = {"address": DEMO_IMAP_USER, "imap_host": "127.0.0.1", "imap_security": "ssl",
                "imap_port": info["imaps_port"], "username": DEMO_IMAP_USER,
                "password": DEMO_IMAP_PASSWORD, "smtp_security": "starttls",
                "smtp_port": info["submission_port"], "folder": "INBOX",
                "sent_folder": "Sent", "append_sent": "on", "after_import": "leave",
                "sync_start_at": time.strftime("%Y-%m-%d")}
        add = channels + "add/imap/"
        opener.open(add, timeout=10).read()
        try:
            post(add, {**form, "action": "test"}, add).read()
        except urllib.error.HTTPError as failed:
            said = re.findall(r'role="alert">(.*?)</div>', failed.read().decode(), re.S)
            raise CommandError(f"IMAP Test connection failed against the demo Dovecot: "
                               f"{said}") from failed
        saved = post(add, {**form, "action": "save"}, add)
        where = saved.geturl()
        if not re.search(r"/acme/settings/email/\d+/$", where):
            raise CommandError(f"IMAP save did not reach the mailbox page ({where})")
        subject = f"IMAP demo check {uuid.uuid4().hex[:8]}"
        server = MailServer(settings.VAR_DIR / "mailserver")
        server.ports.lmtp = info["lmtp_port"]
        server.deliver((f"From: Dana Customer <{DEMO_IMAP_CUSTOMER}>\r\nTo: {DEMO_IMAP_USER}"
                        f"\r\nSubject: {subject}\r\n\r\nIs anyone there?\r\n").encode(),
                       DEMO_IMAP_USER)
        deadline = time.monotonic() + 60
        queue = f"{url}acme/tickets/?view=unassigned"
        while subject not in opener.open(queue, timeout=10).read().decode():
            if time.monotonic() > deadline:
                raise CommandError("the IMAP email did not become a ticket within 60 s")
            time.sleep(0.5)
        connection_id = re.search(r"/email/(\d+)/$", where).group(1)
        post(f"{channels}{connection_id}/disconnect/", {}, channels).read()
        self.stdout.write("imap: Test connection, save, email -> ticket OK")

    @staticmethod
    def _sandbox(sandbox_url: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(sandbox_url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=10).read())

    def _check_demo_mailbox(self, url: str, sandbox_url: str) -> None:
        """The demo's own story: the picker suggests the seeded mailbox, connecting it
        reconnects it, Retry delivers a seeded reply through the sandbox, and the
        customer's answer to it (the sandbox's Reply as the customer) threads into the
        same ticket. The mailbox is disconnected again afterwards."""
        opener, _, post = self._signed_in(url, ADMIN_EMAIL)
        channels = url + "acme/settings/email/"
        opener.open(channels, timeout=10).read()
        seeded = providers.get(providers.demo_seeded_provider())
        picker = post(f"{channels}connect/{seeded.name}/", {}, channels)
        if f"{DEMO_MAILBOX}</button> <small>suggested</small>" not in picker.read().decode():
            raise CommandError(f"the sandbox's account picker does not suggest {DEMO_MAILBOX}")
        auth = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(picker.geturl()).query))
        fields = seeded.sandbox_consent(auth, DEMO_MAILBOX)
        opener.open(urllib.request.Request(
            picker.geturl().split("?")[0], data=urllib.parse.urlencode(fields).encode()),
            timeout=20).read()  # Allow -> our callback -> the seeded connection, reconnected

        # Ticket 3 ("How do I export my data?"): its reply waits for the customer, so it
        # Failed on the disconnected mailbox (the ones a customer answered are Delivered).
        ticket = f"{url}acme/tickets/3/"
        page = opener.open(ticket, timeout=10).read().decode()
        retry = re.search(r'hx-post="(/acme/tickets/3/messages/\d+/retry/)"', page)
        if not retry:
            raise CommandError("the seeded reply on ticket 3 has no Retry")
        before = {m["id"] for m in self._sandbox(
            sandbox_url, f"/_sandbox/sent?mailbox={DEMO_MAILBOX}")["messages"]}
        post(url + retry.group(1).lstrip("/"), {}, ticket).read()
        deadline = time.monotonic() + 60
        while True:
            sent = [m for m in self._sandbox(
                sandbox_url, f"/_sandbox/sent?mailbox={DEMO_MAILBOX}")["messages"]
                if m["id"] not in before]
            if sent:
                break
            if time.monotonic() > deadline:
                raise CommandError("Retry did not send the seeded reply within 60 s")
            time.sleep(0.5)
        answer = f"JSON works for us too, thanks ({uuid.uuid4().hex[:8]})"
        self._sandbox(sandbox_url, "/_sandbox/reply",
                      {"mailbox": DEMO_MAILBOX, "id": sent[0]["id"], "body": answer})
        deadline = time.monotonic() + 60
        while answer not in opener.open(ticket, timeout=10).read().decode():
            if time.monotonic() > deadline:
                raise CommandError("the customer's answer did not thread into ticket 3 "
                                   "within 60 s")
            time.sleep(0.5)
        listing = opener.open(channels, timeout=10).read().decode()
        connection = re.search(rf'href="/acme/settings/email/(\d+)/">{re.escape(DEMO_MAILBOX)}<',
                               listing)
        if connection:
            post(f"{channels}{connection.group(1)}/disconnect/", {}, channels).read()
        self.stdout.write(f"demo mailbox: {DEMO_MAILBOX} suggested and reconnected, a seeded "
                          "reply retried and delivered, the customer's answer threaded OK")


def _wait_for_ticket(opener, queue: str, subject: str, what: str) -> None:
    """Until the ticket list page ``queue`` shows ``subject`` (60 s at most)."""
    deadline = time.monotonic() + 60
    while subject not in opener.open(queue, timeout=10).read().decode():
        if time.monotonic() > deadline:
            raise CommandError(f"{what} did not become a ticket within 60 s")
        time.sleep(0.5)
