"""A real IMAP/SMTP server pair for dev and tests: Debian's Dovecot (IMAP with STARTTLS,
IMAPS, LMTP) started in a directory of its own, unprivileged, with its own users and TLS
certificate, and an aiosmtpd submission server (AUTH, STARTTLS or implicit TLS) that
delivers into Dovecot over LMTP.

Nothing here is a fake of IMAP: the channel's IMAP provider talks to a real Dovecot, and
its SMTP client to a real SMTP server, over loopback TCP.

- ``MailServer(root).start()``: writes the config, a CA and a server certificate for
  127.0.0.1/localhost (``ca_file`` is what a client must trust), and starts Dovecot in the
  foreground as an unprivileged user (the current one; ``dovecot`` or ``nobody`` when we
  are root, as Dovecot's login processes refuse root) on free loopback ports.
- ``add_user`` / ``set_password`` edit the passwd-file (Dovecot re-reads it on change);
  ``deliver`` hands a message to Dovecot's LMTP (mail arriving from outside);
  ``append`` stores one in a folder by IMAP; ``set_uidvalidity`` resets a folder's
  UIDVALIDITY through doveadm (what a server restore or migration does).
- The submission server accepts mail from a signed-in user for any local user and refuses
  other recipients at RCPT (550). ``fail_next_data(code, text)`` makes the next DATA
  answer with that reply; ``save_sent`` makes it file a copy in the sender's Sent folder
  itself (as Gmail and Microsoft 365 do), otherwise the client must APPEND it.
- ``python -m sandbox.mailserver [--root DIR] [--user ADDR:PASSWORD ...]`` runs both until
  Ctrl-C and writes ``server.json`` (ports, CA file) into the root (the demo uses it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from imapclient import IMAPClient

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
HOST = "127.0.0.1"


def dovecot_available() -> bool:
    return Path(DOVECOT).exists() and Path("/usr/lib/dovecot/imap").exists() and Path(
        "/usr/lib/dovecot/lmtp").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None, log: Path, seconds: float = 20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("dovecot exited:\n" + (log.read_text() if log.exists() else ""))
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open:\n" + (log.read_text() if log.exists()
                                                            else ""))


def _run_user() -> pwd.struct_passwd:
    """Who Dovecot runs as: ourselves, unless we are root (then an unprivileged user)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("dovecot", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user to run Dovecot as")


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost signed by it; returns
    (ca_file, cert_file, key_file)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Helpdesk sandbox mail CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


CONFIG = """\
# Written by sandbox/mailserver.py: a Dovecot of its own, unprivileged, loopback only.
base_dir = {root}/run
state_dir = {root}/state
instance_name = helpdesk-{port_imap}
protocols = imap lmtp
listen = {host}
log_path = {root}/dovecot.log
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests sign in with wrong passwords on purpose: no failure delay, and loopback is exempt
# from the per-address auth penalty (which would slow every later sign-in).
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
mail_max_userip_connections = 100
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={root}/mail/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = subscribe
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port_imap}
  }}
  inet_listener imaps {{
    port = {port_imaps}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {port_lmtp}
  }}
}}
service anvil {{
  chroot =
}}
service auth-worker {{
  user = {user}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


@dataclass
class Ports:
    imap: int = 0  # plain, with STARTTLS
    imaps: int = 0  # implicit TLS
    lmtp: int = 0
    submission: int = 0  # STARTTLS (587-like)
    submissions: int = 0  # implicit TLS (465-like)


class _Submission:
    """The aiosmtpd handler: RCPT only for local users, DATA delivered over LMTP."""

    def __init__(self, server: MailServer):
        self.server = server

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):  # noqa: N802
        if address.lower() not in self.server.users:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp, session, envelope):  # noqa: N802
        with self.server.lock:
            fault = self.server.data_faults.pop(0) if self.server.data_faults else None
        if fault:
            return fault
        raw = envelope.original_content or envelope.content
        self.server.deliver(raw, envelope.rcpt_tos, mail_from=envelope.mail_from or "")
        login = getattr(session, "auth_data", None)
        sender = login.login.decode() if isinstance(login, LoginPassword) else ""
        if self.server.save_sent and sender:
            self.server.append(sender, raw, "Sent", flags=("\\Seen",))
        with self.server.lock:
            self.server.submitted.append((sender, list(envelope.rcpt_tos), raw))
        return "250 2.0.0 Ok: queued"


class MailServer:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="helpdesk-mail-"))
        self.users: dict[str, str] = {}
        self.ports = Ports()
        self.proc: subprocess.Popen | None = None
        self.controllers: list[Controller] = []
        self.lock = threading.Lock()
        self.data_faults: list[str] = []
        self.submitted: list[tuple[str, list[str], bytes]] = []
        self.save_sent = False
        self._passwd_stamp = 0
        self.ca_file = self.root / "ca.pem"
        self._account = _run_user()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, ports: Ports | None = None) -> MailServer:
        if not dovecot_available():
            raise RuntimeError("Dovecot is not installed: apt-get install dovecot-imapd "
                               "dovecot-lmtpd (make test does it when it can)")
        self.ports = ports or Ports(imap=free_port(), imaps=free_port(), lmtp=free_port(),
                                    submission=free_port(), submissions=free_port())
        for folder in ("run", "state", "mail"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        make_certificates(self.root)
        self._write_passwd()
        user = self._account
        (self.root / "dovecot.conf").write_text(CONFIG.format(
            root=self.root, host=HOST, user=user.pw_name,
            group=_group_name(user.pw_gid), port_imap=self.ports.imap,
            port_imaps=self.ports.imaps, port_lmtp=self.ports.lmtp))
        self._own_tree()
        log = self.root / "dovecot.log"
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")], **self._as_account(),
            stdout=(self.root / "dovecot.out").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        for port in (self.ports.imap, self.ports.imaps, self.ports.lmtp):
            _wait_port(port, self.proc, log)
        self._start_submission()
        return self

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()
        self.controllers = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def info(self) -> dict:
        return {"host": HOST, "imap_port": self.ports.imap, "imaps_port": self.ports.imaps,
                "lmtp_port": self.ports.lmtp, "submission_port": self.ports.submission,
                "submissions_port": self.ports.submissions, "ca_file": str(self.ca_file),
                "users": sorted(self.users)}

    def _as_account(self) -> dict:
        if os.geteuid() != 0:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid,
                "extra_groups": []}

    def _own_tree(self) -> None:
        if os.geteuid() != 0:
            return
        # Dovecot's processes run as the unprivileged account: it owns its tree, and
        # every folder above must let it through.
        self.root.chmod(0o755)
        for path in [self.root, *self.root.rglob("*")]:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)
        for parent in self.root.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)

    # -- users ---------------------------------------------------------------------------
    def add_user(self, address: str, password: str) -> None:
        """Add (or change) a user; once running, returns when Dovecot knows it (it notices
        a changed passwd-file within about a second: add users before ``start`` when you
        can)."""
        if self.users.get(address.lower()) == password:
            return
        self.users[address.lower()] = password
        if self.proc is None:
            return
        self._write_passwd()
        deadline = time.monotonic() + 5
        while True:
            try:
                self.imap(address).logout()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def reset_user(self, address: str) -> None:
        """Empty the user's mailboxes (a new home: new UIDVALIDITY values too). Only while
        no session of that user is open."""
        shutil.rmtree(self.root / "mail" / address.lower(), ignore_errors=True)

    def set_password(self, address: str, password: str) -> None:
        self.add_user(address, password)

    def _write_passwd(self) -> None:
        path = self.root / "passwd"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{a}:{{PLAIN}}{p}\n" for a, p in self.users.items()))
        if os.geteuid() == 0:
            os.chown(tmp, self._account.pw_uid, self._account.pw_gid)
        tmp.replace(path)
        # Dovecot re-reads a passwd-file whose mtime changed, compared in whole seconds:
        # each write moves it on by at least one second (into the future if need be).
        self._passwd_stamp = max(int(time.time()), self._passwd_stamp + 1)
        os.utime(path, (self._passwd_stamp, self._passwd_stamp))

    # -- mail ----------------------------------------------------------------------------
    def deliver(self, raw: bytes, to: list[str] | str, mail_from: str = "") -> None:
        """Deliver ``raw`` to local mailboxes through Dovecot's LMTP (mail from outside)."""
        recipients = [to] if isinstance(to, str) else list(to)
        if not mail_from:  # the envelope sender of ordinary mail is its author
            author = BytesHeaderParser().parsebytes(raw).get("From", "")
            mail_from = parseaddr(str(author))[1]
        with smtplib.LMTP(HOST, self.ports.lmtp, timeout=10) as lmtp:
            lmtp.sendmail(mail_from or "<>", recipients, raw)

    def imap(self, address: str) -> IMAPClient:
        client = IMAPClient(HOST, port=self.ports.imap, ssl=False, timeout=10)
        client.login(address, self.users[address.lower()])
        return client

    def append(self, address: str, raw: bytes, folder: str = "INBOX",
               flags: tuple = ()) -> None:
        client = self.imap(address)
        try:
            client.append(folder, raw, flags=flags)
        finally:
            client.logout()

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        client = self.imap(address)
        try:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [fetched[uid][b"BODY[]"] for uid in sorted(fetched)]
        finally:
            client.logout()

    def flags(self, address: str, folder: str = "INBOX") -> list[tuple]:
        client = self.imap(address)
        try:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            fetched = client.fetch(uids, ["FLAGS"]) if uids else {}
            return [fetched[uid][b"FLAGS"] for uid in sorted(fetched)]
        finally:
            client.logout()

    def set_uidvalidity(self, address: str, folder: str, value: int) -> None:
        self.doveadm("mailbox", "update", "-u", address, "--uid-validity", str(value), folder)

    def doveadm(self, *args: str) -> str:
        answer = subprocess.run([DOVEADM, "-c", str(self.root / "dovecot.conf"), *args],
                                capture_output=True, text=True, timeout=30,
                                **self._as_account())
        if answer.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)}: {answer.stderr.strip()}")
        return answer.stdout

    def fail_next_data(self, reply: str) -> None:
        """The next DATA answers ``reply`` (e.g. "451 4.3.0 Try again later")."""
        with self.lock:
            self.data_faults.append(reply)

    # -- submission ----------------------------------------------------------------------
    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode(errors="replace").lower()
            if self.users.get(login) == auth_data.password.decode(errors="replace"):
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    def _start_submission(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.root / "cert.pem", self.root / "key.pem")
        handler = _Submission(self)
        common = {"hostname": HOST, "authenticator": self._authenticate,
                  "auth_exclude_mechanism": ["CRAM-MD5"],
                  "server_hostname": "localhost", "ready_timeout": 10}
        starttls = Controller(handler, port=self.ports.submission, tls_context=context,
                              require_starttls=True, auth_require_tls=True, **common)
        # Implicit TLS: the session is encrypted from the start (aiosmtpd's TLS check
        # knows only STARTTLS, so it is not asked here).
        implicit = Controller(handler, port=self.ports.submissions, ssl_context=context,
                              auth_require_tls=False, **common)
        for controller in (starttls, implicit):
            controller.start()
            self.controllers.append(controller)


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.mailserver")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--user", action="append", default=[],
                        help="ADDRESS:PASSWORD of a mailbox (repeatable)")
    parser.add_argument("--save-sent", action="store_true",
                        help="the submission server files a copy in the sender's Sent")
    args = parser.parse_args(argv)
    if args.root is not None and args.root.exists():
        shutil.rmtree(args.root / "run", ignore_errors=True)
    server = MailServer(args.root)
    for spec in args.user:
        address, _, password = spec.partition(":")
        server.add_user(address, password)
    server.save_sent = args.save_sent
    server.start()
    (server.root / "server.json").write_text(json.dumps(server.info()))
    print(json.dumps(server.info()), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            if server.proc is None or server.proc.poll() is not None:
                break
    finally:
        server.stop()


if __name__ == "__main__":
    main()
