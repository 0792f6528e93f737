"""Ticket list, search and timeline at size: server time through the UI and the REST API.

Run it with the project's services (embedded ones when DATABASE_URL / REDIS_URL are unset):

    .venv/bin/python -m helpdesk.embedded run -- .venv/bin/python bench/api.py

What it does, on real PostgreSQL, in one process (Django's full middleware stack, called
in process, DEBUG off and the database connection kept as production keeps it: server
time without a network or a WSGI server in front):
1. migrates a scratch database (named after DATABASE_URL's: ``<name>_bench_api``, e.g.
   hd_alice_bench_api, so runs on one server against different databases never collide;
   ``--database`` names it outright) and fills one workspace with 1,000
   tickets in bulk SQL (INSERT ... SELECT over generate_series, through the same triggers
   the product's writes go through): contacts at one per five tickets over 50 company
   domains, five teams, ten agents, a realistic status mix (most tickets Solved or
   Closed), two messages per ticket (the customer's, our delivered reply), a vocabulary
   in which some words are in most tickets, some in a few percent, some in one; then
   VACUUM ANALYZE, as autovacuum would;
2. times, signed in as an agent and with an API key of the workspace: the ticket list,
   a filtered list (one team's Open tickets), search (a mix of queries: a common word,
   a few-percent word, a word start, two words, a contact's address, a company domain,
   a word of one ticket, a word of none, a #number) and one ticket's timeline (14
   messages), UI page and API call each, N timed requests after a warm-up;
3. grows the same workspace to 100,000 tickets (the new ones interleaved in time with
   the first) and times the same requests again.
Prints p50/p95 per request kind, UI and API, at both sizes, with SQL statements per
request, and the ratio of the 100,000 figures to the 1,000 ones. The last line printed is
one JSON object with the headline figures (milliseconds).

``--smoke``: 50 and 300 tickets, 4 timed requests each, scratch database
``<name>_bench_api_smoke`` dropped afterwards; `make test` runs it (tests/bench/). Its
figures say nothing about speed; it runs ``--explain`` too. ``--explain``: EXPLAIN
(ANALYZE, BUFFERS) of each statement of the lists and the search queries at the large
size, custom and generic plan each (see explain), on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VAR = REPO / "var" / "bench"


@dataclass(frozen=True)
class Workload:
    small: int
    large: int
    repeats: int  # timed requests per request kind (each search query: repeats // 4)
    warmup: int
    suffix: str  # of the scratch database's name (see scratch_database)
    smoke: bool = False


FULL = Workload(small=1_000, large=100_000, repeats=200, warmup=20, suffix="_bench_api")
SMOKE = Workload(small=50, large=300, repeats=4, warmup=1, suffix="_bench_api_smoke",
                 smoke=True)
# PostgreSQL's limit on a database name (bytes).
NAME_MAX = 63


def scratch_database(base_url: str, workload: Workload) -> str:
    """The scratch database of a run against ``base_url``: its database's name plus the
    workload's suffix (``hd_alice`` -> ``hd_alice_bench_api``), so that runs against
    different databases of one server keep apart; ``helpdesk`` stands in for a URL that
    names none or the server's maintenance database."""
    name = urlsplit(base_url).path.lstrip("/")
    if name in ("", "postgres", "template0", "template1"):
        name = "helpdesk"
    return name[: NAME_MAX - len(workload.suffix)] + workload.suffix

# Words of the generated tickets (see seed): TOPICS in a few percent of tickets each,
# COMMON in nearly all.
TOPICS = ["refund", "invoice", "login", "password", "shipping", "delivery", "printer",
          "account", "billing", "subscription", "upgrade", "cancellation", "warranty",
          "discount", "export", "import", "integration", "calendar", "notification", "mobile"]
OBJECTS = ["request", "problem", "question", "issue", "error", "delay", "failure", "change",
           "update", "follow-up", "complaint", "report", "status", "reminder", "feedback"]
FIRST = ["Anna", "Bruno", "Chloé", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Inès",
         "Jonas", "Kira", "Luis", "Maëlle", "Nils", "Olga", "Pablo", "Quentin", "Rosa",
         "Stefan", "Tomás", "Ulla", "Viktor", "Wen", "Xavier", "Yara", "Zoë", "Amir", "Béla",
         "Carla", "Dario"]
LAST = ["Andersen", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "García", "Horváth",
        "Ivanova", "Jansen", "Kowalski", "Lefèvre", "Müller", "Novak", "Olsen", "Petrov",
        "Quintero", "Rossi", "Schmidt", "Takahashi", "Umarov", "Varga", "Weber", "Xu",
        "Yilmaz", "Zimmermann", "Almeida", "Brandt", "Castillo", "Dahl", "Engel", "Ferrari",
        "Gómez", "Haas", "Ibsen", "Jovanović", "Keller", "Lindqvist", "Moreau", "Nagy"]
DOMAINS = 50
TEAMS = ["Support", "Billing", "Sales", "Technical", "Returns"]
AGENTS = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _admin_execute(url: str, *statements: str) -> None:
    import psycopg

    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def seed(tenant, *, first: int, last: int, team_ids: list[int], agent_ids: list[int]) -> None:
    """Tickets numbered ``first``..``last`` (with their contacts and messages), in bulk
    SQL through the product's triggers."""
    from django.db import connection

    words = {"tenant": tenant.pk, "first": first, "last": last, "domains": DOMAINS,
             "topics": TOPICS, "objects": OBJECTS, "given": FIRST, "family": LAST,
             "teams": team_ids, "agents": agent_ids,
             "contacts_from": (first - 1) // 5 + 1, "contacts_to": last // 5}
    address = ("'person' || {c} || '@company' || ({c} %% %(domains)s) || '.example'")
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO contacts_contact (tenant_id, email, name, source, created_at,"  # noqa: S608 - constants of this file
            " updated_at) SELECT %(tenant)s, " + address.format(c="g") + ","
            " (%(given)s::text[])[1 + g %% 30] || ' ' || (%(family)s::text[])[1 + (g / 30) %% 40],"
            " 'email', now(), now()"
            " FROM generate_series(%(contacts_from)s::int, %(contacts_to)s::int) g",
            words)
        # Spread over ~35 days in a scrambled order: tickets added later interleave with
        # the first ones, so page 1 of the large workspace is not page 1 of the small.
        when = "now() - make_interval(secs => (g::bigint * 7919) %% 3000017)"
        cur.execute(
            "INSERT INTO tickets_ticket (tenant_id, number, title, description, status,"  # noqa: S608 - constants of this file
            " priority, contact_id, cc_addresses, team_id, assignee_id, tags, source_channel,"
            " routing, created_at, updated_at)"
            " SELECT %(tenant)s, g,"
            "  initcap((%(topics)s::text[])[1 + g %% 20]) || ' '"
            "  || (%(objects)s::text[])[1 + (g / 20) %% 15] || ' zq' || g || 'x',"
            "  'Hello, please help me with my ' || (%(topics)s::text[])[1 + (g / 7) %% 20]"
            "  || '. Order number ' || (700000 + g) || ' is affected since yesterday. Thank you'"
            "  || ' for your help, kind regards',"
            "  (ARRAY['new','open','open','pending','solved','solved','solved','solved',"
            "         'closed','closed'])[1 + (hashint4(g)::bigint %% 10 + 10) %% 10],"
            "  (ARRAY['low','normal','normal','normal','high','urgent'])[1 + g %% 6],"
            "  (SELECT id FROM contacts_contact WHERE tenant_id = %(tenant)s AND email = "
            + address.format(c="((g - 1) / 5 + 1)") + "),"
            "  '{}', (%(teams)s::bigint[])[1 + (hashint4(g + 1)::bigint %% 5 + 5) %% 5],"
            "  CASE WHEN g %% 5 = 0 THEN NULL ELSE (%(agents)s::bigint[])"
            "  [1 + (hashint4(g + 2)::bigint %% 10 + 10) %% 10] END,"
            "  CASE WHEN g %% 4 = 0 THEN ARRAY['vip'] ELSE '{}' END, 'email', '{}',"
            "  " + when + " - interval '1 hour', " + when
            + " FROM generate_series(%(first)s::int, %(last)s::int) g", words)
        reply = ("'Hi, thanks for writing. We are looking into your ' || (%(topics)s::text[])"
                 "[1 + (t.number / 7) %% 20] || ' right now and will come back to you today."
                 " Best, the support team'")
        for kind, author, body, at, delivery in (
            ("inbound", "t.contact_id, NULL", "t.description", "t.created_at", "''"),
            ("outbound", "NULL, t.assignee_id", reply, "t.created_at + interval '30 minutes'",
             "'delivered'"),
        ):
            cur.execute(
                "INSERT INTO tickets_message (tenant_id, ticket_id, kind, author_contact_id,"  # noqa: S608 - constants of this file
                " author_user_id, subject, body_text, body_html, created_at, delivery_status,"
                " delivery_error, attempts, message_id_header, provider_message_id,"
                " to_addresses, cc_addresses, auto_submitted)"
                " SELECT t.tenant_id, t.id, '" + kind + "', " + author + ", t.title, " + body
                + ", '', " + at + ", " + delivery + ", '', 0, '', '', '{}', '{}', false"
                " FROM tickets_ticket t"
                " WHERE t.tenant_id = %(tenant)s AND t.number BETWEEN %(first)s AND %(last)s",
                words)
        cur.execute(
            "INSERT INTO tickets_ticketsequence (tenant_id, last_number) VALUES (%s, %s)"
            " ON CONFLICT (tenant_id) DO UPDATE SET last_number = EXCLUDED.last_number",
            [tenant.pk, last])


def timeline_ticket(tenant, number: int, agent) -> None:
    """A longer conversation on ticket ``number``: 12 more messages (14 in all)."""
    from helpdesk.tenancy import tenant_scope
    from tickets.models import MessageKind, Ticket
    from tickets.services import message_add

    with tenant_scope(tenant):
        ticket = Ticket.objects.get(tenant=tenant, number=number)
        for i in range(12):
            kind = [MessageKind.INBOUND, MessageKind.NOTE, MessageKind.INBOUND][i % 3]
            message_add(ticket=ticket, kind=kind, body_text=f"Message {i} of the thread. " * 20,
                        author_contact=ticket.contact if kind == MessageKind.INBOUND else None,
                        author_user=agent if kind == MessageKind.NOTE else None)


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")


def search_terms(tenant) -> list[str]:
    """The search mix (the same strings at both sizes)."""
    return [
        "please",  # in every ticket: the newest 50 of them
        "refund",  # a topic: about 10% of tickets
        "invoi",  # a word being typed
        "shipping delay",  # two words
        "person7@company7.example",  # a contact's address
        "company13.example",  # a company's domain: 2% of tickets
        "zq42x",  # a word of one ticket
        "zq42",  # the start of a word of 1,111 tickets at 100,000 (zq42, zq420x, ...)
        "xylophone",  # a word of none
        "#42",  # a ticket's number
    ]


def measure(client, url: str, headers: dict, repeats: int, warmup: int) -> dict:
    from django.db import connection

    for _ in range(warmup):
        response = client.get(url, **headers)
        if response.status_code != 200:
            raise SystemExit(f"GET {url} answered {response.status_code}: "
                             f"{response.content[:500]!r}")
    statements = []

    def count(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        client.get(url, **headers)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url, **headers)
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"GET {url} answered {response.status_code}")
    return {"times": times, "queries": len(statements)}


def p(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_size(ctx: dict, workload: Workload, label: str) -> dict:
    tenant, team = ctx["tenant"], ctx["team"]
    ui, api = ctx["ui"], ctx["api"]
    slug = f"/{tenant.slug}/tickets/"
    kinds = {
        "list": (f"{slug}?view=all", "/api/v1/tickets/"),
        "filtered": (f"{slug}?view=all&status=open&team={team}",
                     f"/api/v1/tickets/?status=open&team={team}"),
        "timeline": (f"{slug}{ctx['timeline']}/",
                     f"/api/v1/tickets/{ctx['timeline']}/timeline/"),
    }
    out: dict = {}
    for kind, (ui_url, api_url) in kinds.items():
        for side, client, url, headers in (("ui", ui, ui_url, {}),
                                           ("api", api, api_url, ctx["bearer"])):
            result = measure(client, url, headers, workload.repeats, workload.warmup)
            out[f"{kind}_{side}"] = result
    from urllib.parse import quote

    per_term = max(2, workload.repeats // 4)
    for side, client, base, headers in (("ui", ui, f"{slug}?view=all&q=", {}),
                                        ("api", api, "/api/v1/tickets/?q=", ctx["bearer"])):
        times, queries, worst = [], 0, {}
        for term in search_terms(tenant):
            result = measure(client, base + quote(term), headers, per_term,
                             max(1, workload.warmup // 4))
            times += result["times"]
            queries = max(queries, result["queries"])
            worst[term] = p(result["times"], 95)
        out[f"search_{side}"] = {"times": times, "queries": queries, "per_term_p95": worst}
    log(f"\n== {label} tickets ==")
    for name, result in out.items():
        log(f"{name:14} p50 {p(result['times'], 50):7.1f} ms   p95 {p(result['times'], 95):7.1f}"
            f" ms   {result['queries']} SQL")
        if "per_term_p95" in result:
            log("    p95 by query: " + ", ".join(f"{t!r} {v:.1f}"
                                                 for t, v in result["per_term_p95"].items()))
    return out


def explain(tenant, team) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement the list and search run, twice: as
    planned for the values at hand (a custom plan) and as PostgreSQL plans it once a
    prepared statement has gone generic (psycopg prepares a statement after
    ``prepare_threshold`` runs; after five more, PostgreSQL may keep one plan for any
    parameter values). Search runs two statements: the matches counted up to SEARCH_FEW,
    then the page (by id below it, by the condition above)."""
    from django.core.exceptions import EmptyResultSet
    from django.db import connection

    from helpdesk.tenancy import tenant_scope
    from tickets.selectors import search_matches, ticket_list

    cases = [("list", {}), ("filtered", {"status": "open", "team_id": team})]
    cases += [(f"search {t!r}", {"search": t}) for t in search_terms(tenant)]
    connection.ensure_connection()
    raw = connection.connection
    with tenant_scope(tenant):
        for name, filters in cases:
            statements = []
            if "search" in filters:
                statements.append(("matches", search_matches(tenant=tenant,
                                                             term=filters["search"])))
            statements.append(("page", ticket_list(tenant=tenant, **filters)[:51]))
            for part, queryset in statements:
                try:
                    sql, params = queryset.query.sql_with_params()
                except EmptyResultSet:
                    log(f"\n-- {name}, {part}: no statement (nothing can match)")
                    continue
                for mode in ("force_custom_plan", "force_generic_plan"):
                    log(f"\n-- {name}, {part} ({mode.removeprefix('force_')})\n"
                        + _explain(raw, sql, params, mode))


def _explain(raw, sql: str, params, mode: str) -> str:
    """EXPLAIN ANALYZE of a prepared ``sql`` (Django's %s placeholders) executed with
    ``params`` under plan_cache_mode ``mode``."""
    from psycopg import sql as pgsql

    numbered = iter(range(1, len(params) + 1))
    statement = re.sub(r"%(s|%)", lambda m: f"${next(numbered)}" if m[1] == "s" else "%",
                       sql)
    values = ", ".join(pgsql.Literal(v).as_string(raw) for v in params)
    raw.execute(f"SET plan_cache_mode = {mode}", prepare=False)
    raw.execute(f"PREPARE bench_explain AS {statement}", prepare=False)
    try:
        rows = raw.execute("EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_explain"
                           + (f"({values})" if params else ""), prepare=False).fetchall()
    finally:
        raw.execute("DEALLOCATE bench_explain", prepare=False)
        raw.execute("RESET plan_cache_mode", prepare=False)
    return "\n".join(row[0] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny workload in seconds (CI); figures say nothing about speed")
    parser.add_argument("--explain", action="store_true",
                        help="EXPLAIN ANALYZE of the list and search queries at the large size")
    parser.add_argument("--database", metavar="NAME",
                        help="the scratch database (dropped and created anew; default: "
                             "DATABASE_URL's database name + _bench_api, or "
                             "+ _bench_api_smoke with --smoke)")
    args = parser.parse_args()
    workload = SMOKE if args.smoke else FULL
    base_url = os.environ.get("DATABASE_URL")
    if not base_url:
        sys.exit("run me through `python -m helpdesk.embedded run --` or set DATABASE_URL")
    database = args.database or scratch_database(base_url, workload)
    if database == urlsplit(base_url).path.lstrip("/"):
        sys.exit(f"--database {database} is DATABASE_URL's own database; "
                 "the bench drops its scratch database, name another")
    if len(database.encode()) > NAME_MAX or '"' in database:
        sys.exit(f"--database {database!r}: not a usable PostgreSQL database name "
                 f"(at most {NAME_MAX} bytes, no double quote)")
    log(f"scratch database {database}")
    _admin_execute(base_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)',
                   f'CREATE DATABASE "{database}"')
    os.environ["DATABASE_URL"] = urlunsplit(urlsplit(base_url)._replace(path=f"/{database}"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")
    os.environ["MEDIA_ROOT"] = str(VAR / ("smoke/api" if workload.smoke else "api") / "media")
    os.environ["DEBUG"] = "false"  # as in production: no query log, no debug pages
    os.environ["CONN_MAX_AGE"] = "60"  # as in production: one connection, kept open
    os.environ["API_RATE_LIMIT_PER_MINUTE"] = "1000000"  # the bench is one client, fast
    try:
        figures = run(workload, args)
    finally:
        if workload.smoke:
            from django.db import connections

            connections.close_all()
            _admin_execute(base_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    print(json.dumps(figures))


def run(workload: Workload, args) -> dict:
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from helpdesk.models import Role, User
    from helpdesk.services import api_key_create, membership_set, tenant_create
    from helpdesk.tenancy import tenant_scope
    from routing.models import Team

    call_command("migrate", verbosity=0)
    tenant = tenant_create(slug="bench", name="Bench")
    agents = [User.objects.create_user(email=f"agent{i}@helpdesk.example", first_name="Agent",
                                       last_name=str(i)) for i in range(AGENTS)]
    for i, agent in enumerate(agents):
        membership_set(tenant=tenant, user=agent, role=Role.ADMIN if i == 0 else Role.AGENT)
    with tenant_scope(tenant):
        teams = [Team.objects.create(tenant=tenant, name=name) for name in TEAMS]
        _, key = api_key_create(tenant=tenant, actor=agents[0], name="bench", scope="read")
    team_ids, agent_ids = [t.pk for t in teams], [a.pk for a in agents]
    ui = Client()
    ui.force_login(agents[0])
    ctx = {"tenant": tenant, "team": team_ids[1], "ui": ui, "api": Client(),
           "bearer": {"HTTP_AUTHORIZATION": f"Bearer {key}"}, "timeline": 42}

    started = time.perf_counter()
    seed(tenant, first=1, last=workload.small, team_ids=team_ids, agent_ids=agent_ids)
    timeline_ticket(tenant, ctx["timeline"], agents[0])
    vacuum()
    log(f"seeded {workload.small:,} tickets in {time.perf_counter() - started:.1f} s")
    small = run_size(ctx, workload, f"{workload.small:,}")

    started = time.perf_counter()
    seed(tenant, first=workload.small + 1, last=workload.large, team_ids=team_ids,
         agent_ids=agent_ids)
    vacuum()
    seed_s = time.perf_counter() - started
    log(f"grew the workspace to {workload.large:,} tickets in {seed_s:.1f} s "
        f"({(workload.large - workload.small) / seed_s:,.0f} tickets/s with 2 messages each)")
    if args.explain or workload.smoke:  # the smoke run keeps --explain from rotting
        explain(tenant, ctx["team"])
    large = run_size(ctx, workload, f"{workload.large:,}")

    figures: dict = {"smoke": workload.smoke, "small_tickets": workload.small,
                     "large_tickets": workload.large, "timed_requests": workload.repeats}
    log(f"\n== {workload.large:,} vs {workload.small:,} (p95 ratio) ==")
    worst_p95, worst_ratio = 0.0, 0.0
    for name in small:
        a, b = p(small[name]["times"], 95), p(large[name]["times"], 95)
        figures[f"{name}_p50_ms_small"] = round(p(small[name]["times"], 50), 2)
        figures[f"{name}_p95_ms_small"] = round(a, 2)
        figures[f"{name}_p50_ms_large"] = round(p(large[name]["times"], 50), 2)
        figures[f"{name}_p95_ms_large"] = round(b, 2)
        figures[f"{name}_sql_large"] = large[name]["queries"]
        worst_p95, worst_ratio = max(worst_p95, b), max(worst_ratio, b / a)
        log(f"{name:14} {b / a:5.2f}x")
    figures["worst_p95_ms_large"] = round(worst_p95, 2)
    figures["worst_p95_ratio"] = round(worst_ratio, 2)
    return figures


if __name__ == "__main__":
    main()
