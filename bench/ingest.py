"""Ingest benchmark: the project's inbound pipeline against the shared reference step.

Run it with the project's services (embedded ones when DATABASE_URL / REDIS_URL are unset):

    .venv/bin/python -m helpdesk.embedded run -- .venv/bin/python bench/ingest.py

What it does, all on real PostgreSQL, in one process:
1. generates the workload with ../shared/bench/gen_corpus.py --n 2000 --seed 42
   (60% new threads, 40% replies) into ./var/bench/corpus (reused when present);
2. migrates a scratch database (<name>_bench) and ingests every email in arrival order
   through the same services the worker calls (inbound_email_receive stores the raw MIME
   and the row; inbound_email_ingest parses, threads and writes), timed and counted from
   raw bytes in hand to the final commit; SQL statements are counted per email except
   BEGIN/COMMIT/SAVEPOINT/RELEASE, commits are explicit commits plus autocommitted writes
   (and, of those, the ones that wait for the WAL flush);
3. checks the tickets against the corpus manifest (one ticket per thread, no split and
   no mixed thread);
4. runs ../shared/bench/reference_pipeline.py --json on another scratch database in the
   same run, and prints the ratio;
5. repeats step 2 in a tenant pre-filled with 100,000 tickets (each with a message and its
   thread reference).
The last line printed is one JSON object with the headline figures.

``--smoke``: the same steps on a tiny workload (40 emails, a 500-ticket pre-fill, its own
corpus folder and scratch databases, dropped afterwards), in seconds; `make test` runs it
(tests/bench/) so that a refactor that breaks the benchmark fails CI. Its figures say
nothing about speed. ``--profile N``: where the time goes over the first N emails.
Needs ../shared/bench/ beside the clone (or HELPDESK_SHARED_BENCH) and exits with a
message naming the folder when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
SHARED_BENCH = Path(os.environ.get("HELPDESK_SHARED_BENCH") or REPO.parent / "shared" / "bench")
VAR = REPO / "var" / "bench"
SEED = 42
IGNORED_SQL = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE", "ROLLBACK")




@dataclass(frozen=True)
class Workload:
    """How much to ingest, and where its corpus and scratch databases live."""

    emails: int
    prefill: int
    corpus: Path
    database: str
    smoke: bool = False


FULL = Workload(emails=2000, prefill=100_000, corpus=VAR / "corpus", database="helpdesk_bench")
SMOKE = Workload(emails=40, prefill=500, corpus=VAR / "smoke" / "corpus",
                 database="helpdesk_bench_smoke", smoke=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _admin_execute(url: str, *statements: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def scratch_database(url: str, name: str) -> str:
    """Drop and create database ``name`` on the server of ``url``; return its URL."""
    _admin_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                   f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def drop_database(url: str, name: str) -> None:
    """Drop scratch database ``name`` (a smoke run leaves nothing behind)."""
    _admin_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_shared_bench() -> None:
    """Exit with a message naming the folder when the shared workload is not there."""
    missing = [name for name in ("gen_corpus.py", "reference_pipeline.py")
               if not (SHARED_BENCH / name).is_file()]
    if missing:
        sys.exit(f"bench/ingest.py needs the shared workload generator and reference step "
                 f"({', '.join(missing)}) in {SHARED_BENCH}: put ../shared/bench beside the "
                 "clone (CI has it there) or set HELPDESK_SHARED_BENCH")


def ensure_corpus(workload: Workload) -> None:
    manifest = workload.corpus / "_manifest.jsonl"
    if manifest.exists() and sum(1 for _ in manifest.open()) == workload.emails:
        return
    log(f"generating {workload.emails} emails (seed {SEED}) into {workload.corpus}")
    subprocess.run([sys.executable, str(SHARED_BENCH / "gen_corpus.py"),
                    "--n", str(workload.emails), "--seed", str(SEED),
                    "--out", str(workload.corpus)], check=True, stdout=subprocess.DEVNULL)


def load_corpus(corpus: Path) -> tuple[list[bytes], list[dict]]:
    names = sorted(p for p in corpus.iterdir() if p.suffix == ".eml")
    manifest = [json.loads(line) for line in (corpus / "_manifest.jsonl").open()]
    return [p.read_bytes() for p in names], manifest


def run_reference(url: str, workload: Workload) -> dict:
    parts = urlsplit(scratch_database(url, workload.database + "_reference"))
    dsn = (f"host={parts.hostname} port={parts.port or 5432} dbname={parts.path[1:]} "
           f"user={parts.username or 'postgres'}"
           + (f" password={parts.password}" if parts.password else ""))
    scratch = workload.corpus.parent
    env = dict(os.environ, BENCH_CORPUS=str(workload.corpus), BENCH_PG_DSN=dsn,
               BENCH_MEDIA=str(scratch / "reference_media"),
               BENCH_RESULTS=str(scratch / "results"))
    out = subprocess.run([sys.executable, str(SHARED_BENCH / "reference_pipeline.py"), "--json"],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class StatementCounter:
    """Counts SQL statements and commits on Django's default connection, and of the
    commits those that do not wait for the WAL flush (helpdesk.sql.NO_FLUSH_WAIT)."""

    def __init__(self, connection):
        from helpdesk.sql import NO_FLUSH_WAIT

        self.connection = connection
        self.no_wait_marker = NO_FLUSH_WAIT
        self.statements = 0
        self.commits = 0
        self.commits_no_wait = 0
        original_commit = connection._commit

        def counting_commit(*args, **kwargs):
            self.commits += 1
            return original_commit(*args, **kwargs)

        connection._commit = counting_commit
        connection.execute_wrappers.append(self)

    def __call__(self, execute, sql, params, many, context):
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if head not in IGNORED_SQL:
            self.statements += 1
            if not self.connection.in_atomic_block and head in ("INSERT", "UPDATE", "DELETE"):
                self.commits += 1  # autocommitted write
                self.commits_no_wait += self.no_wait_marker in sql
        return execute(sql, params, many, context)

    def take(self) -> tuple[int, int, int]:
        values = (self.statements, self.commits, self.commits - self.commits_no_wait)
        self.statements = self.commits = self.commits_no_wait = 0
        return values


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (the PostgreSQL backend serving us), or 0
    when /proc cannot tell (another machine, another user's server)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def prefill(tenant, count: int) -> None:
    """``count`` tickets, each with one message and its thread reference, in bulk SQL."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO contacts_contact (tenant_id, email, name, source, created_at, updated_at)"
            " SELECT %s, 'prefill' || g || '@customers.example', 'Customer ' || g, 'email',"
            " now(), now() FROM generate_series(1, 2000) g", [tenant.pk])
        cur.execute(
            "INSERT INTO tickets_ticket (tenant_id, number, title, description, status, priority,"
            " contact_id, cc_addresses, tags, source_channel, routing, created_at, updated_at)"
            " SELECT %s, g, 'Earlier question ' || g, 'Body of ticket ' || g,"
            " (ARRAY['new','open','pending','solved','closed'])[1 + g %% 5], 'normal',"
            " (SELECT min(id) FROM contacts_contact WHERE tenant_id = %s) + g %% 2000, '{}', '{}',"
            " 'email', '{}', now() - (g || ' minutes')::interval,"
            " now() - (g || ' minutes')::interval FROM generate_series(1, %s) g",
            [tenant.pk, tenant.pk, count])
        cur.execute(
            "INSERT INTO tickets_message (tenant_id, ticket_id, kind, author_contact_id, subject,"
            " body_text, body_html, created_at, delivery_status, delivery_error, attempts,"
            " message_id_header, provider_message_id, to_addresses, cc_addresses,"
            " auto_submitted)"
            " SELECT tenant_id, id, 'inbound', contact_id, title, description, '', created_at,"
            " '', '', 0, '', '', '{}', '{}', false FROM tickets_ticket WHERE tenant_id = %s",
            [tenant.pk])
        cur.execute(
            "INSERT INTO channels_email_emailthreadref (tenant_id, message_id_header, ticket_id,"
            " message_id, created_at) SELECT tenant_id, 'prefill-' || id || '@customers.example',"
            " ticket_id, id, created_at FROM tickets_message WHERE tenant_id = %s", [tenant.pk])
        cur.execute(
            "INSERT INTO tickets_ticketsequence (tenant_id, last_number) VALUES (%s, %s)",
            [tenant.pk, count])
        cur.execute("ANALYZE")


def ingest_all(tenant_slug: str, raws: list[bytes], prefilled: int = 0) -> dict:
    from django.db import connection

    from channels_email.ingest import inbound_email_ingest
    from channels_email.models import RoutingMode
    from channels_email.services import connection_create_manual, inbound_email_receive
    from helpdesk.services import tenant_create
    from helpdesk.tenancy import tenant_scope
    from routing.models import Team

    tenant = tenant_create(slug=tenant_slug, name=tenant_slug)
    with tenant_scope(tenant):
        team = Team.objects.create(tenant=tenant, name="Support")
        conn = connection_create_manual(tenant=tenant, address="support@company.example",
                                        routing_mode=RoutingMode.TEAM, routing_team=team)
    if prefilled:
        log(f"pre-filling {tenant_slug} with {prefilled:,} tickets")
        prefill(tenant, prefilled)
    counter = StatementCounter(connection)
    statements, commits, waiting, states = [], [], [], {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    backend_cpu, client_cpu = process_cpu_s(backend_pid), time.process_time()
    start = time.perf_counter()
    for i, raw in enumerate(raws):
        with tenant_scope(tenant):
            row, _ = inbound_email_receive(connection=conn, provider_message_id=f"bench-{i}",
                                           raw=raw)
        outcome = inbound_email_ingest(inbound_email_id=row.pk)
        states[outcome.state] = states.get(outcome.state, 0) + 1
        s, c, w = counter.take()
        statements.append(s)
        commits.append(c)
        waiting.append(w)
    wall = time.perf_counter() - start
    backend_cpu = process_cpu_s(backend_pid) - backend_cpu
    client_cpu = time.process_time() - client_cpu
    connection.execute_wrappers.remove(counter)
    return {"tenant": tenant, "connection": conn, "emails_per_s": len(raws) / wall, "wall_s": wall,
            "states": states, "sql_per_email_median": statistics.median(statements),
            "sql_per_email_max": max(statements),
            "commits_per_email_median": statistics.median(commits),
            "flush_waiting_commits_per_email_median": statistics.median(waiting),
            "cpu_ms_client_per_email": client_cpu * 1000 / len(raws),
            "cpu_ms_pg_backend_per_email": backend_cpu * 1000 / len(raws)}


def release(conn) -> None:
    """One mailbox is connected in one tenant at a time: free it for the next tenant."""
    from helpdesk.tenancy import unscoped

    with unscoped():
        type(conn).objects.filter(pk=conn.pk).update(status="disconnected")


def check_threading(tenant, manifest: list[dict]) -> dict:
    from channels_email.mime import normalize_message_id
    from channels_email.models import EmailThreadRef
    from helpdesk.tenancy import tenant_scope

    with tenant_scope(tenant):
        mid_to_ticket = dict(EmailThreadRef.objects.filter(message__isnull=False)
                             .values_list("message_id_header", "ticket_id"))
    by_thread: dict[int, set] = {}
    ticket_threads: dict[object, set] = {}
    for m in manifest:
        ticket = mid_to_ticket.get(normalize_message_id(m["message_id"]))
        by_thread.setdefault(m["thread"], set()).add(ticket)
        ticket_threads.setdefault(ticket, set()).add(m["thread"])
    result = {
        "expected_tickets": len(by_thread),
        "messages_stored": sum(1 for m in manifest
                               if normalize_message_id(m["message_id"]) in mid_to_ticket),
        "threads_split": sum(1 for s in by_thread.values() if len(s) > 1),
        "tickets_mixing_threads": sum(1 for t, s in ticket_threads.items() if len(s) > 1),
    }
    result["ok"] = (result["messages_stored"] == len(manifest) and result["threads_split"] == 0
                    and result["tickets_mixing_threads"] == 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny workload in seconds (CI); figures say nothing about speed")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="profile the first N emails instead of benchmarking")
    parser.add_argument("--reference-first", action="store_true",
                        help="run the reference step before ours (alternate runs with and "
                             "without it, so neither always gets the warmer machine)")
    args = parser.parse_args()
    workload = SMOKE if args.smoke else FULL
    base_url = os.environ.get("DATABASE_URL")
    if not base_url:
        sys.exit("run me through `python -m helpdesk.embedded run --` or set DATABASE_URL")
    require_shared_bench()
    ensure_corpus(workload)
    raws, manifest = load_corpus(workload.corpus)
    os.environ["DATABASE_URL"] = scratch_database(base_url, workload.database)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")
    os.environ["MEDIA_ROOT"] = str(workload.corpus.parent / "media")
    # As the worker runs in production: with DEBUG on, Django also records every query.
    os.environ["DEBUG"] = "false"
    # A Redis key namespace of this run's own: the per-sender loop counters of an earlier
    # run (same connection ids in a fresh scratch database, within the 10-minute window)
    # would otherwise count against this one, and skip mail as a loop after a few runs.
    os.environ["CACHE_KEY_PREFIX"] = f"bench-ingest-{os.getpid()}-{time.time_ns()}"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    try:
        run(args, workload, base_url, raws, manifest)
    finally:
        forget_redis_keys()


def forget_redis_keys() -> None:
    """Delete the keys this run wrote under its own prefix."""
    from helpdesk.coordination import redis_client, redis_key

    client = redis_client()
    keys = list(client.scan_iter(match=redis_key("*"), count=1000))
    if keys:
        client.delete(*keys)


def run(args, workload: Workload, base_url: str, raws: list[bytes], manifest: list[dict]) -> None:
    if args.profile:
        # Where the time goes: cProfile over the first N emails, top functions by own and
        # cumulative time, plus the SQL of one new-ticket email and one reply.
        import cProfile
        import pstats

        from django.db import connection

        count = args.profile
        timings: dict[str, list[float]] = {}
        backend_cpu: dict[str, float] = {}
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend_pid = cursor.fetchone()[0]

        def timed(execute, sql, params, many, context):
            # Wall time, and the backend's CPU (whole clock ticks: right on average over
            # many statements, not for one).
            started, cpu = time.perf_counter(), process_cpu_s(backend_pid)
            try:
                return execute(sql, params, many, context)
            finally:
                key = " ".join(sql.split())[:150]
                timings.setdefault(key, []).append(time.perf_counter() - started)
                backend_cpu[key] = (backend_cpu.get(key, 0.0)
                                    + process_cpu_s(backend_pid) - cpu)

        with connection.execute_wrapper(timed):
            result = ingest_all("profile", raws[:count])
        print(f"{result['emails_per_s']:.1f} emails/s without the profiler; SQL by total time "
              "(wall, then PostgreSQL backend CPU):")
        for key, values in sorted(timings.items(), key=lambda kv: -sum(kv[1]))[:25]:
            print(f"{sum(values) * 1000:8.1f} ms {backend_cpu[key] * 1000:8.1f} ms "
                  f"{len(values):6d}x  {key}")
        release(result["connection"])
        profiler = cProfile.Profile()
        profiler.enable()
        result = ingest_all("profile2", raws[:count])
        profiler.disable()
        log(f"{result['emails_per_s']:.1f} emails/s under the profiler")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(
            r"/(channels_email|tickets|contacts|routing|helpdesk)/", 40)
        return
    if args.reference_first:
        log("running the reference pipeline on the corpus")
        reference = run_reference(base_url, workload)
    log(f"ingesting {len(raws)} emails")
    ours = ingest_all("bench", raws)
    threading_result = check_threading(ours["tenant"], manifest)
    if not args.reference_first:
        log("running the reference pipeline on the same corpus")
        reference = run_reference(base_url, workload)
    release(ours["connection"])
    log(f"ingesting again into a tenant with {workload.prefill:,} tickets")
    big = ingest_all("bench-prefilled", raws, prefilled=workload.prefill)
    threading_big = check_threading(big["tenant"], manifest)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if workload.smoke:
        from django.db import connections

        connections.close_all()
        for name in (workload.database, workload.database + "_reference"):
            drop_database(base_url, name)

    ratio = ours["emails_per_s"] / reference["emails_per_s"]
    print(f"emails:              {len(raws)} ({ours['states']})")
    print(f"ours:                {ours['emails_per_s']:.1f} emails/s")
    print(f"reference pipeline:  {reference['emails_per_s']:.1f} emails/s  (ratio {ratio:.2f})")
    print(f"SQL per email:       median {ours['sql_per_email_median']}, "
          f"max {ours['sql_per_email_max']}")
    print(f"commits per email:   median {ours['commits_per_email_median']} (waiting for the WAL "
          f"flush: {ours['flush_waiting_commits_per_email_median']}; reference: 1, waiting)")
    print(f"CPU per email:       {ours['cpu_ms_client_per_email']:.2f} ms in this process, "
          f"{ours['cpu_ms_pg_backend_per_email']:.2f} ms in the PostgreSQL backend "
          f"(reference: {reference.get('cpu_ms_client_per_email', 0):.2f} + "
          f"{reference.get('cpu_ms_pg_backend_per_email', 0):.2f})")
    print(f"threading:           {threading_result}")
    print(f"with {workload.prefill:,} tickets: {big['emails_per_s']:.1f} emails/s "
          f"({big['emails_per_s'] / ours['emails_per_s']:.2f}x), threading "
          f"{threading_big if not threading_big['ok'] else True} ({big['states']})")
    print(f"peak RSS:            {peak_rss_mb:.0f} MB")
    if workload.smoke:
        print("smoke run:           a tiny workload; these figures say nothing about speed")
    print(json.dumps({
        "smoke": workload.smoke,
        "emails": len(raws),
        "emails_per_s": round(ours["emails_per_s"], 1),
        "reference_emails_per_s": round(reference["emails_per_s"], 1),
        "ratio": round(ratio, 3),
        "order": "reference first" if args.reference_first else "ours first",
        "sql_per_email_median": ours["sql_per_email_median"],
        "sql_per_email_max": ours["sql_per_email_max"],
        "commits_per_email_median": ours["commits_per_email_median"],
        "flush_waiting_commits_per_email_median": ours["flush_waiting_commits_per_email_median"],
        "cpu_ms_per_email": round(ours["cpu_ms_client_per_email"]
                                  + ours["cpu_ms_pg_backend_per_email"], 2),
        "reference_cpu_ms_per_email": round(reference.get("cpu_ms_client_per_email", 0)
                                            + reference.get("cpu_ms_pg_backend_per_email", 0), 2),
        "threading_ok": threading_result["ok"] and threading_big["ok"],
        "prefilled_tickets": workload.prefill,
        "emails_per_s_prefilled": round(big["emails_per_s"], 1),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }))


if __name__ == "__main__":
    main()
