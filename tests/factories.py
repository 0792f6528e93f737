"""factory_boy factories for every model. They create rows without a tenant scope
(django-scopes allows create()); read them back inside ``tenant_scope``."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import factory
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from contacts.models import Contact, ContactSource
from helpdesk.models import AuditEvent, Invitation, Membership, Role, Tenant, User, hash_token
from routing.models import Flow, Rule, Team, TeamMember
from tickets.models import Attachment, Message, MessageKind, Ticket
from tickets.services import next_ticket_number

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@agents.example")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant{n}")
    name = factory.Sequence(lambda n: f"Tenant {n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.AGENT


class InvitationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Invitation
        exclude = ["token"]

    tenant = factory.SubFactory(TenantFactory)
    email = factory.Sequence(lambda n: f"invitee{n}@agents.example")
    role = Role.AGENT
    token = factory.Sequence(lambda n: f"token-{n}")
    token_hash = factory.LazyAttribute(lambda o: hash_token(o.token))
    expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=7))


class AuditEventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AuditEvent

    tenant = factory.SubFactory(TenantFactory)
    action = "test.event"


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contact

    tenant = factory.SubFactory(TenantFactory)
    email = factory.Sequence(lambda n: f"customer{n}@example.com")
    name = factory.Faker("name")
    source = ContactSource.EMAIL


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Team {n}")


class TeamMemberFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TeamMember

    team = factory.SubFactory(TeamFactory)
    tenant = factory.SelfAttribute("team.tenant")
    user = factory.SubFactory(UserFactory)


class FlowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Flow

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"Flow {n}")


class RuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Rule

    flow = factory.SubFactory(FlowFactory)
    tenant = factory.SelfAttribute("flow.tenant")
    name = factory.Sequence(lambda n: f"Rule {n}")
    conditions = factory.LazyFunction(
        lambda: [{"field": "subject", "op": "contains", "value": "refund"}]
    )
    actions = factory.LazyFunction(lambda: [{"type": "add_tag", "value": "billing"}])


class TicketFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Ticket

    tenant = factory.SubFactory(TenantFactory)
    contact = factory.SubFactory(ContactFactory, tenant=factory.SelfAttribute("..tenant"))
    title = factory.Sequence(lambda n: f"Ticket subject {n}")
    description = "Please help."

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        # Numbers come from the same sequence the service uses.
        with transaction.atomic():
            kwargs.setdefault("number", next_ticket_number(tenant=kwargs["tenant"]))
            return super()._create(model_class, *args, **kwargs)


class MessageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Message

    ticket = factory.SubFactory(TicketFactory)
    tenant = factory.SelfAttribute("ticket.tenant")
    kind = MessageKind.INBOUND
    author_contact = factory.SelfAttribute("ticket.contact")
    body_text = factory.Faker("paragraph")


class AttachmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Attachment
        exclude = ["content"]

    message = factory.SubFactory(MessageFactory)
    tenant = factory.SelfAttribute("message.tenant")
    content = b"%PDF-1.4 test"
    filename = "invoice.pdf"
    content_type = "application/pdf"
    size = factory.LazyAttribute(lambda o: len(o.content))
    sha256 = factory.LazyAttribute(lambda o: hashlib.sha256(o.content).hexdigest())
    file = factory.LazyAttribute(lambda o: ContentFile(o.content, name=o.filename))


class EmailConnectionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "channels_email.EmailConnection"

    tenant = factory.SubFactory(TenantFactory)
    provider = "manual"
    address = factory.Sequence(lambda n: f"support{n}@company.example")
    display_name = "Support"


class InboundEmailFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "channels_email.InboundEmail"
        exclude = ["content"]

    connection = factory.SubFactory(EmailConnectionFactory)
    tenant = factory.SelfAttribute("connection.tenant")
    provider_message_id = factory.Sequence(lambda n: f"provider-{n}")
    content = b"From: a@example.com\r\nSubject: hi\r\nMessage-ID: <x@example.com>\r\n\r\nhello\r\n"
    raw = factory.LazyAttribute(lambda o: ContentFile(o.content, name="raw.eml"))
    raw_size = factory.LazyAttribute(lambda o: len(o.content))


class EmailThreadRefFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "channels_email.EmailThreadRef"

    ticket = factory.SubFactory(TicketFactory)
    tenant = factory.SelfAttribute("ticket.tenant")
    message_id_header = factory.Sequence(lambda n: f"ref-{n}@example.com")
