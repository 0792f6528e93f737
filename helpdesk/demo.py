"""The demo data set: two workspaces with people, teams, a flow, contacts, a mailbox and
threads.

``seed_demo()`` is idempotent: users, teams, flows, contacts and the mailbox are matched by
their natural keys, and a workspace's tickets are only created while it has none.

It writes only what the product could have written itself, through its own services:
tickets as email ingest creates them (the opening mail tells the team and the assignee,
once), later customer mail as ``message_add`` appends it, notes with ``note_add``, and
agent replies with ``reply_create`` then ``deliver``, the send path the worker runs. Acme's
mailbox (``DEMO_MAILBOX``) was connected once and is disconnected now, so each seeded reply
ends Failed ("reconnect needed, then retry") with its recipient; connecting that address
through the Google sandbox reconnects the mailbox, and Retry then delivers the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from channels_email import providers
from channels_email.connect import connection_disconnect
from channels_email.models import ConnectionStatus, EmailConnection, RoutingMode
from channels_email.outbound import deliver, reply_create
from contacts.models import ContactSource
from contacts.services import contact_get_or_create
from helpdesk.models import Role, Tenant, User
from helpdesk.services import membership_set, tenant_create
from helpdesk.tenancy import tenant_scope
from routing.models import Flow, Rule, Team, TeamMember
from tickets.models import (
    DeliveryStatus,
    Message,
    MessageKind,
    SourceChannel,
    Ticket,
    TicketPriority,
    TicketStatus,
)
from tickets.services import message_add, note_add, ticket_create, ticket_update

DEMO_PASSWORD = "demo-pass-2026"
ADMIN_EMAIL = "admin@acme.example"
AGENT_EMAIL = "agent@acme.example"
# Acme's mailbox, of the provider whose sandbox picker suggests it (rundemo tells it so):
# Gmail's.
DEMO_MAILBOX = "support@acme.example"


@dataclass(frozen=True)
class SeedReport:
    tenants: int
    users: int
    teams: int
    flows: int
    contacts: int
    mailboxes: int
    tickets: int
    messages: int

    def __str__(self) -> str:
        # "1 flow", "2 flows": the field names are the plurals ("mailboxes": "mailbox").
        def name(plural: str, count: int) -> str:
            if count != 1:
                return plural
            return plural.removesuffix("es" if plural.endswith("xes") else "s")

        return ", ".join(f"{v} {name(k, v)}" for k, v in self.__dict__.items())


CUSTOMERS = [
    ("Maria Lopez", "maria.lopez@example.com"),
    ("Dev Patel", "dev@northwind.example"),
    ("Chen Wei", "chen.wei@example.org"),
    ("Amelia Brooks", "amelia@brooks-design.example"),
    ("Jonas Berg", "jonas.berg@example.net"),
    ("Fatima Khan", "fatima@khan-consulting.example"),
]

# (customer index, subject, team, status, priority, assignee?, thread of (kind, text))
THREADS = [
    (0, "Charged twice for the November invoice", "Billing", TicketStatus.OPEN,
     TicketPriority.HIGH, "agent",
     [(MessageKind.INBOUND, "Hi, my card was charged twice for invoice INV-2041. "
                            "Could you refund one of them?\n\nThanks, Maria"),
      (MessageKind.NOTE, "Stripe shows two captures 40 seconds apart; refunding the second."),
      (MessageKind.OUTBOUND, "Hi Maria, sorry about that. The duplicate charge is refunded; "
                             "it shows on your statement within 5 business days."),
      (MessageKind.INBOUND, "Great, thank you for the quick answer!")]),
    (1, "Cannot connect the API: 401 on every request", "Technical", TicketStatus.NEW,
     TicketPriority.URGENT, None,
     [(MessageKind.INBOUND, "Since this morning every call returns 401 Unauthorized, with a "
                            "key that worked yesterday. Our integration is down.")]),
    (2, "How do I export my data?", "Technical", TicketStatus.PENDING, TicketPriority.LOW,
     "agent",
     [(MessageKind.INBOUND, "Is there a way to export all my projects as CSV?"),
      (MessageKind.OUTBOUND, "Yes: Settings > Export. Would a JSON export work for you too?")]),
    (3, "Invoice address change", "Billing", TicketStatus.SOLVED, TicketPriority.NORMAL,
     "admin",
     [(MessageKind.INBOUND, "Please put our new address on future invoices: 12 Harbour Road."),
      (MessageKind.OUTBOUND, "Done: the next invoice carries the new address.")]),
    (4, "Feature request: dark mode", None, TicketStatus.NEW, TicketPriority.LOW, None,
     [(MessageKind.INBOUND, "Any plans for a dark theme? My eyes would thank you.")]),
    (5, "Upgrade to the annual plan", "Billing", TicketStatus.OPEN, TicketPriority.NORMAL,
     "admin",
     [(MessageKind.INBOUND, "We would like to move to yearly billing. What is the price for "
                            "12 seats?")]),
    (1, "Webhook deliveries delayed", "Technical", TicketStatus.CLOSED, TicketPriority.HIGH,
     "agent",
     [(MessageKind.INBOUND, "Webhooks arrive 10 minutes late since yesterday."),
      (MessageKind.OUTBOUND, "A queue backlog on our side; it is cleared now."),
      (MessageKind.INBOUND, "Confirmed, all good now.")]),
]


def _user(email: str, first: str, last: str, *, superuser: bool = False) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(email=email, password=DEMO_PASSWORD, first_name=first,
                                        last_name=last, is_staff=superuser,
                                        is_superuser=superuser)
    return user


def _tenant(slug: str, name: str) -> Tenant:
    return Tenant.objects.filter(slug=slug).first() or tenant_create(slug=slug, name=name)


def seed_demo() -> SeedReport:
    """Create (or complete) the demo workspaces. Refuses to run in prod."""
    if settings.DJANGO_ENV == "prod":
        raise ImproperlyConfigured("The demo seed never runs in prod")
    with transaction.atomic():
        admin = _user(ADMIN_EMAIL, "Ada", "Admin", superuser=True)
        agent = _user(AGENT_EMAIL, "Sam", "Agent")
        acme = _tenant("acme", "Acme Support")
        globex = _tenant("globex", "Globex Service Desk")
        membership_set(tenant=acme, user=admin, role=Role.ADMIN)
        membership_set(tenant=acme, user=agent, role=Role.AGENT)
        membership_set(tenant=globex, user=admin, role=Role.ADMIN)
        people = {"admin": admin, "agent": agent}

        with tenant_scope(acme):
            teams = {}
            for name, members in (("Billing", [admin, agent]), ("Technical", [agent])):
                team = Team.objects.filter(tenant=acme, name=name).first() or \
                    Team.objects.create(tenant=acme, name=name)
                for member in members:
                    if not TeamMember.objects.filter(team=team, user=member).exists():
                        TeamMember.objects.create(tenant=acme, team=team, user=member)
                teams[name] = team
            flow = Flow.objects.filter(tenant=acme, name="Triage").first()
            if flow is None:
                flow = Flow.objects.create(tenant=acme, name="Triage",
                                           description="Sort incoming mail by topic.",
                                           fallback_team=teams["Technical"])
                Rule.objects.create(
                    tenant=acme, flow=flow, position=1, name="Invoices go to Billing",
                    match="any",
                    conditions=[{"field": "subject", "op": "contains", "value": "invoice"},
                                {"field": "body", "op": "contains", "value": "refund"}],
                    actions=[{"type": "assign_team", "value": teams["Billing"].pk},
                             {"type": "add_tag", "value": "billing"}],
                    stop_processing=True,
                )
                Rule.objects.create(
                    tenant=acme, flow=flow, position=2, name="Outages are urgent",
                    conditions=[{"field": "subject", "op": "matches",
                                 "value": r"(?i)\b(down|outage|401|500)\b"}],
                    actions=[{"type": "set_priority", "value": "urgent"}],
                )
            mailbox = _mailbox(acme, flow, admin)
            contacts = [
                contact_get_or_create(tenant=acme, email=email, name=name,
                                      source=ContactSource.EMAIL)[0]
                for name, email in CUSTOMERS
            ]
            if not Ticket.objects.filter(tenant=acme).exists():
                for idx, subject, team, status, priority, who, thread in THREADS:
                    _thread(acme, contacts[idx], subject, teams.get(team), status, priority,
                            people.get(who), thread, agent, mailbox)

        with tenant_scope(globex):
            customer, _ = contact_get_or_create(tenant=globex, email="homer@example.com",
                                                name="Homer Simpson", source=ContactSource.EMAIL)
            if not Ticket.objects.filter(tenant=globex).exists():
                _thread(globex, customer, "Reactor console shows a warning light", None,
                        TicketStatus.NEW, TicketPriority.HIGH, None,
                        [(MessageKind.INBOUND, "The red light is blinking again. Is that bad?")],
                        admin, None)
    return demo_report()


def _mailbox(tenant: Tenant, flow: Flow, admin: User) -> EmailConnection:
    """Acme's mailbox, routed by the Triage flow: connected once (no credentials are kept
    for it here) and disconnected by its admin, as ``connection_disconnect`` leaves one."""
    mailbox = EmailConnection.objects.filter(tenant=tenant, address=DEMO_MAILBOX).first()
    if mailbox is None:
        mailbox = EmailConnection.objects.create(
            tenant=tenant, provider=providers.demo_seeded_provider(), address=DEMO_MAILBOX,
            display_name="Acme Support", status=ConnectionStatus.ACTIVE,
            routing_mode=RoutingMode.FLOW, routing_flow=flow)
        connection_disconnect(connection=mailbox, actor=admin)
    return mailbox


def _thread(tenant, contact, subject, team, status, priority, assignee, thread, replier,
            mailbox):
    """One ticket as the product records it: the opening mail creates the ticket (its
    team and assignee are told once, by ``ticket_create``), the rest is appended in
    order, and the agent's final status is set like the ticket page sets it."""
    ticket = ticket_create(tenant=tenant, title=subject, contact=contact,
                           description=thread[0][1], team=team, priority=priority,
                           assignee=assignee, source_channel=SourceChannel.EMAIL,
                           email_connection=mailbox)
    author = assignee or replier
    for position, (kind, text) in enumerate(thread):
        if kind == MessageKind.INBOUND:
            # The opening mail is the ticket's creation (no "customer replied" on top of
            # "new ticket"), as ingest writes it.
            message_add(ticket=ticket, kind=kind, body_text=text, subject=subject,
                        author_contact=contact, touch=position > 0)
        elif kind == MessageKind.NOTE:
            note_add(ticket=ticket, author=author, body_text=text)
        else:
            reply = reply_create(ticket=ticket, author=author, body_text=text)
            if any(k == MessageKind.INBOUND for k, _ in thread[position + 1:]):
                # The customer answered it: it went out while the mailbox was connected.
                Message.objects.filter(pk=reply.pk).update(
                    delivery_status=DeliveryStatus.DELIVERED, delivery_error="")
            else:
                deliver(reply.pk)  # the mailbox is disconnected now: Failed, with the reason
    if status != ticket.status:
        ticket.refresh_from_db()
        ticket_update(ticket=ticket, status=status, priority=ticket.priority,
                      team=ticket.team, assignee=ticket.assignee, actor=author)


def demo_report() -> SeedReport:
    from contacts.models import Contact
    from helpdesk.tenancy import unscoped
    from tickets.models import Message

    slugs = ["acme", "globex"]
    # Unscoped: a read-only count across the two demo workspaces.
    with unscoped():
        return SeedReport(
            tenants=Tenant.objects.filter(slug__in=slugs).count(),
            users=User.objects.filter(email__in=[ADMIN_EMAIL, AGENT_EMAIL]).count(),
            teams=Team.objects.filter(tenant__slug__in=slugs).count(),
            flows=Flow.objects.filter(tenant__slug__in=slugs).count(),
            contacts=Contact.objects.filter(tenant__slug__in=slugs).count(),
            mailboxes=EmailConnection.objects.filter(tenant__slug__in=slugs).count(),
            tickets=Ticket.objects.filter(tenant__slug__in=slugs).count(),
            messages=Message.objects.filter(tenant__slug__in=slugs).count(),
        )
