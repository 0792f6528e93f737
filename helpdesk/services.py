"""Writes on tenants, memberships, invitations and the audit trail."""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from helpdesk.errors import ApplicationError
from helpdesk.models import (
    ApiKey,
    ApiScope,
    AuditEvent,
    Invitation,
    Membership,
    Role,
    Tenant,
    User,
    hash_token,
)
from helpdesk.selectors import invitation_by_token
from helpdesk.tenancy import tenant_scope, unscoped


def audit_record(
    *, tenant: Tenant, actor: User | None, action: str, target: object | None = None,
    details: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        tenant=tenant,
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target_type=type(target).__name__ if target is not None else "",
        target_id=str(getattr(target, "pk", "") or "") if target is not None else "",
        details=details or {},
    )


def tenant_create(*, slug: str, name: str, admin: User | None = None) -> Tenant:
    """Create a tenant (slug validated against the reserved words) and its first admin."""
    tenant = Tenant(slug=slug.lower(), name=name)
    tenant.full_clean()
    with transaction.atomic():
        tenant.save()
        if admin is not None:
            membership_set(tenant=tenant, user=admin, role=Role.ADMIN)
    return tenant


def membership_set(*, tenant: Tenant, user: User, role: str) -> Membership:
    """Add ``user`` to ``tenant`` with ``role``, or change the role of an existing member."""
    with tenant_scope(tenant):
        membership, created = Membership.objects.get_or_create(
            tenant=tenant, user=user, defaults={"role": role}
        )
        if not created and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
    return membership


def invitation_create(*, tenant: Tenant, email: str, role: str, invited_by: User) -> Invitation:
    """Invite ``email`` into ``tenant``; the e-mail with the link goes out on commit.

    Raises ValidationError when the address already belongs to a member.
    """
    address = email.strip().lower()
    if Membership.objects.filter(tenant=tenant, user__email__iexact=address).exists():
        raise ValidationError(f"{address} is already a member of {tenant.name}.")
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        # A fresh invitation replaces any unused one for the same address.
        Invitation.objects.filter(tenant=tenant, email=address, accepted_at__isnull=True).delete()
        invitation = Invitation.objects.create(
            tenant=tenant,
            email=address,
            role=role,
            token_hash=hash_token(token),
            invited_by=invited_by,
            expires_at=timezone.now() + settings.INVITATION_TTL,
        )
        audit_record(tenant=tenant, actor=invited_by, action="invitation.created",
                     target=invitation, details={"role": role})
        link = settings.PUBLIC_BASE_URL + reverse("invitation_accept", args=[token])
        body = render_to_string("helpdesk/invitation_email.txt", {
            "tenant": tenant, "inviter": invited_by, "link": link,
            "expires_at": invitation.expires_at,
        })
        transaction.on_commit(lambda: send_mail(
            f"You are invited to {tenant.name} on Helpdesk", body,
            settings.DEFAULT_FROM_EMAIL, [address],
        ))
    return invitation


def invitation_revoke(*, invitation: Invitation, actor: User) -> None:
    with transaction.atomic():
        audit_record(tenant=invitation.tenant, actor=actor, action="invitation.revoked",
                     target=invitation, details={"email": invitation.email})
        invitation.delete()


class InvitationError(Exception):
    """The invitation is unknown, used or expired; the message is for the user."""


def invitation_accept(*, token: str, password: str | None, user: User | None = None,
                      first_name: str = "", last_name: str = "") -> Membership:
    """Join the invitation's tenant.

    With ``user`` (already signed in as the invited address) the membership is added to
    that account; otherwise an account is created with ``password``. One use only.
    """
    with transaction.atomic():
        invitation = invitation_by_token(token=token)
        if invitation is None or not invitation.is_usable:
            raise InvitationError("This invitation link is invalid or has expired.")
        with tenant_scope(invitation.tenant):
            locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
            if locked.accepted_at is not None:
                raise InvitationError("This invitation has already been used.")
            if user is None:
                if User.objects.filter(email__iexact=invitation.email).exists():
                    raise InvitationError(
                        "An account with this address exists: sign in, then open the link again."
                    )
                user = User.objects.create_user(
                    email=invitation.email, password=password,
                    first_name=first_name, last_name=last_name,
                )
            elif user.email.lower() != invitation.email:
                raise InvitationError(
                    f"This invitation is for {invitation.email}; you are signed in as "
                    f"{user.email}."
                )
            membership = membership_set(tenant=invitation.tenant, user=user, role=invitation.role)
            locked.accepted_at = timezone.now()
            locked.save(update_fields=["accepted_at"])
            audit_record(tenant=invitation.tenant, actor=user, action="invitation.accepted",
                         target=locked)
    return membership


def invitations_purge_expired() -> int:
    """Delete unused invitations past their expiry, in every tenant. Returns the count."""
    # Unscoped: a maintenance sweep over all tenants, deleting only expired rows.
    with unscoped():
        deleted, _ = Invitation.objects.filter(
            accepted_at__isnull=True, expires_at__lt=timezone.now()
        ).delete()
    return deleted


API_KEY_USE_STAMP_SECONDS = 60


def api_key_create(*, tenant: Tenant, actor: User, name: str, scope: str
                   ) -> tuple[ApiKey, str]:
    """A new key for ``tenant``; returns the row and the key itself, which is shown once
    and never stored (only its sha256). Audited."""
    name = (name or "").strip()
    if not name:
        raise ApplicationError("name_required", "Give the key a name.", field="name")
    if scope not in ApiScope.values:
        raise ApplicationError("invalid_scope", f"Unknown scope {scope!r}.", field="scope")
    prefix = secrets.token_hex(5)
    presented = f"hd_{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        key = ApiKey.objects.create(tenant=tenant, name=name[:100], prefix=prefix,
                                    secret_hash=hash_token(presented), scope=scope,
                                    created_by=actor)
        audit_record(tenant=tenant, actor=actor, action="api_key.created", target=key,
                     details={"name": key.name, "scope": scope, "prefix": prefix})
    return key, presented


def api_key_revoke(*, key: ApiKey, actor: User) -> bool:
    """Revoke ``key`` (from the next request on); False when it was revoked already."""
    with transaction.atomic():
        revoked = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now())
        if revoked:
            audit_record(tenant=key.tenant, actor=actor, action="api_key.revoked",
                         target=key, details={"name": key.name, "prefix": key.prefix})
    return bool(revoked)


def api_key_mark_used(*, key: ApiKey) -> None:
    """Stamp ``last_used_at``, at most once a minute per key (one cheap UPDATE that
    matches nothing the rest of the time)."""
    now = timezone.now()
    if key.last_used_at and (now - key.last_used_at).total_seconds() < API_KEY_USE_STAMP_SECONDS:
        return
    # Unscoped: called before the request enters the key's tenant scope.
    with unscoped():
        ApiKey.objects.filter(pk=key.pk).exclude(
            last_used_at__gt=now - timedelta(seconds=API_KEY_USE_STAMP_SECONDS)
        ).update(last_used_at=now)
    key.last_used_at = now
