"""In-app notifications for agents: who hears about which ticket, and the reads behind the
header's unread badge and the notifications page.

Contract:
- Only members of the ticket's tenant are told (``helpdesk.Membership``, checked in the
  very statement that writes): a team member or assignee who left the workspace hears
  nothing. The acting agent is never told about what they did themselves.
- Each writer costs ONE SQL statement (an INSERT ... SELECT), or none when there is
  nobody to tell. The hot paths go further: ``tickets.services.ticket_create`` and
  ``ticket_touch_for_inbound`` fold the INSERT into their own statement as a
  data-modifying CTE, using the ``*_insert_sql`` builders below (zero extra statements).
- Writers bind the tenant themselves (hand-written SQL does not pass through the scoped
  manager); table names come from model metadata, values always go through parameters.
  Readers take the tenant explicitly and go through the scoped manager.
- Notifications are rows in the caller's transaction: they commit or roll back with the
  change they describe. Nothing is dispatched (no task, no mail).
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from helpdesk.models import Membership, Tenant, User
from routing.models import TeamMember
from tickets.models import Notification, NotificationKind, Ticket

# The badge shows "99+" beyond this: counting stops there, so the count stays cheap for an
# agent who never reads (an index-only scan of at most this many entries).
UNREAD_COUNT_CAP = 100

_INSERT = (f"INSERT INTO {Notification._meta.db_table} "
           "(tenant_id, user_id, ticket_id, kind, created_at)")


def _execute(query: str, params: list) -> int:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.rowcount


# ------------------------------------------------------------------ statement builders


def new_ticket_insert_sql(*, tenant_id: int, team_id: int | None, assignee_id: int | None,
                          actor_id: int | None, ticket_id_sql: str,
                          ticket_id_params: list | None = None,
                          team_kind: str = NotificationKind.TEAM_TICKET
                          ) -> tuple[str, list] | None:
    """An INSERT ... SELECT telling a new ticket's people, or None when there is nobody.

    The team's members get ``team_kind`` (TEAM_TICKET; TEAM_TRANSFER for a ticket moved
    to the team); an assignee set at the same time (e.g. by routing) gets ASSIGNED
    instead, once, whether or not they are in the team; the actor gets nothing.
    ``ticket_id_sql`` yields the ticket's id: ``"%s"`` (with ``ticket_id_params``), or
    ``"(SELECT id FROM t)"`` inside a CTE whose ``t`` inserts the ticket."""
    if assignee_id is not None and assignee_id == actor_id:
        assignee_id = None
    if team_id is None and assignee_id is None:
        return None
    if assignee_id is None:
        kind_sql, kind_params = "%s", [str(team_kind)]
    else:
        kind_sql = "CASE WHEN r.user_id = %s THEN %s ELSE %s END"
        kind_params = [assignee_id, NotificationKind.ASSIGNED.value, str(team_kind)]
    sources, source_params = [], []
    if team_id is not None:
        sources.append(f"SELECT tm.user_id FROM {TeamMember._meta.db_table} tm "  # noqa: S608
                       "WHERE tm.tenant_id = %s AND tm.team_id = %s")
        source_params += [tenant_id, team_id]
    if assignee_id is not None:
        sources.append("SELECT %s::bigint")
        source_params.append(assignee_id)
    query = (
        f"{_INSERT} SELECT %s, r.user_id, {ticket_id_sql}, {kind_sql}, now() "  # noqa: S608
        f"FROM ({' UNION '.join(sources)}) r(user_id) "
        f"JOIN {Membership._meta.db_table} m ON m.tenant_id = %s AND m.user_id = r.user_id"
    )
    params = [tenant_id, *(ticket_id_params or []), *kind_params, *source_params, tenant_id]
    if actor_id is not None:
        query += " WHERE r.user_id <> %s"
        params.append(actor_id)
    return query, params


def customer_reply_insert_sql(*, ticket_rows: str) -> tuple[str, list]:
    """An INSERT ... SELECT telling the assignee of each ticket row in ``ticket_rows`` (a
    FROM item with the ticket's ``id``, ``tenant_id`` and ``assignee_id``, e.g. the
    UPDATE ... RETURNING of a CTE) that the customer replied. Unassigned tickets and
    assignees outside the tenant produce no row."""
    query = (
        f"{_INSERT} SELECT tk.tenant_id, tk.assignee_id, tk.id, %s, now() "  # noqa: S608
        f"FROM {ticket_rows} tk JOIN {Membership._meta.db_table} m "
        "ON m.tenant_id = tk.tenant_id AND m.user_id = tk.assignee_id"
    )
    return query, [NotificationKind.CUSTOMER_REPLY.value]


def _one_user_insert(*, ticket: Ticket, user_id: int, kind: str) -> int:
    # The membership row is the recipient: no row (not a member) means no notification.
    query = (
        f"{_INSERT} SELECT m.tenant_id, m.user_id, %s, %s, now() "  # noqa: S608
        f"FROM {Membership._meta.db_table} m WHERE m.tenant_id = %s AND m.user_id = %s"
    )
    return _execute(query, [ticket.pk, kind, ticket.tenant_id, user_id])


# ------------------------------------------------------------------ services


def notifications_for_team_ticket(*, ticket: Ticket, actor: User | None = None) -> int:
    """Tell the members of ``ticket``'s team (and its assignee, as ASSIGNED) about a new
    ticket, except ``actor``. One statement, none without a team or assignee. Returns the
    number of notifications written. ``ticket_create`` does the same inside its INSERT."""
    built = new_ticket_insert_sql(
        tenant_id=ticket.tenant_id, team_id=ticket.team_id, assignee_id=ticket.assignee_id,
        actor_id=actor.pk if actor else None, ticket_id_sql="%s", ticket_id_params=[ticket.pk])
    return _execute(*built) if built else 0


def notifications_for_team_transfer(*, ticket: Ticket, actor: User | None = None,
                                    reassigned: bool = False) -> int:
    """Tell the members of the team ``ticket`` was just moved to (and its assignee, as
    ASSIGNED, when ``reassigned`` in the same change), except ``actor``. One statement."""
    built = new_ticket_insert_sql(
        tenant_id=ticket.tenant_id, team_id=ticket.team_id,
        assignee_id=ticket.assignee_id if reassigned else None,
        actor_id=actor.pk if actor else None, ticket_id_sql="%s", ticket_id_params=[ticket.pk],
        team_kind=NotificationKind.TEAM_TRANSFER)
    return _execute(*built) if built else 0


def notification_for_assignment(*, ticket: Ticket, actor: User | None = None) -> int:
    """Tell ``ticket``'s assignee it was assigned to them, unless they assigned it to
    themselves or it is unassigned (then no statement). One INSERT ... SELECT."""
    if ticket.assignee_id is None or (actor is not None and actor.pk == ticket.assignee_id):
        return 0
    return _one_user_insert(ticket=ticket, user_id=ticket.assignee_id,
                            kind=NotificationKind.ASSIGNED)


def notification_for_customer_reply(*, ticket: Ticket) -> int:
    """Tell ``ticket``'s assignee, if any, that the customer replied. One INSERT ... SELECT
    (none when unassigned). ``ticket_touch_for_inbound`` does the same inside its UPDATE."""
    if ticket.assignee_id is None:
        return 0
    return _one_user_insert(ticket=ticket, user_id=ticket.assignee_id,
                            kind=NotificationKind.CUSTOMER_REPLY)


def notifications_mark_read(*, tenant: Tenant, user: User,
                            ids: Iterable[int] | None = None,
                            ticket_id: int | None = None) -> int:
    """Mark ``user``'s unread notifications in ``tenant`` read: those in ``ids``, or those
    about the ticket ``ticket_id`` (the agent is looking at it), or all. Ids of other
    users or tenants are ignored. One UPDATE; returns its count."""
    unread = Notification.objects.filter(tenant=tenant, user=user, read_at__isnull=True)
    if ids is not None:
        unread = unread.filter(pk__in=list(ids))
    if ticket_id is not None:
        unread = unread.filter(ticket_id=ticket_id)
    with transaction.atomic(savepoint=False):
        return unread.update(read_at=timezone.now())


def notification_open(*, tenant: Tenant, user: User, notification_id: int) -> int:
    """The agent opens a notification: mark it read, with every other unread one of theirs
    about the same ticket (they are about to see it all), and return the ticket's number.
    Raises Notification.DoesNotExist for an unknown id or someone else's (one 404)."""
    # Looked up before any write: a miss raises without spoiling the caller's transaction.
    ticket_id, number = (
        Notification.objects.filter(tenant=tenant, user=user, pk=notification_id)
        .values_list("ticket_id", "ticket__number").get()
    )
    notifications_mark_read(tenant=tenant, user=user, ticket_id=ticket_id)
    return number


# ------------------------------------------------------------------ selectors


def notification_unread_count(*, tenant: Tenant, user: User, cap: int = UNREAD_COUNT_CAP) -> int:
    """How many unread notifications ``user`` has in ``tenant``, counting at most ``cap``
    (one query on the partial index ``notification_unread``)."""
    unread = Notification.objects.filter(tenant=tenant, user=user, read_at__isnull=True)
    return unread.order_by()[:cap].count()


def notification_list(*, tenant: Tenant, user: User, limit: int = 50) -> QuerySet[Notification]:
    """``user``'s latest notifications in ``tenant``, newest first, with the ticket's number
    and title joined in (one query for any number of rows)."""
    return (
        Notification.objects.filter(tenant=tenant, user=user)
        .select_related("ticket")
        .only("id", "kind", "created_at", "read_at", "ticket__id", "ticket__number",
              "ticket__title")
        .order_by("-created_at", "-id")[:limit]
    )
