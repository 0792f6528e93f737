"""Cross-tenant reads that are correct by construction (a user's own memberships, an
invitation found by its secret token). Everything else reads inside a tenant scope."""

from __future__ import annotations

import hmac

from django.db.models import QuerySet

from helpdesk.models import ApiKey, Invitation, Membership, Tenant, User, hash_token
from helpdesk.tenancy import unscoped


def memberships_for_user(*, user: User) -> list[Membership]:
    if not user.is_authenticated:
        return []
    # Unscoped: a user's own memberships span tenants by definition.
    with unscoped():
        return list(
            Membership.objects.filter(user=user).select_related("tenant").order_by("tenant__name")
        )


def membership_for(*, user: User, tenant_slug: str) -> Membership | None:
    """The user's membership in the tenant with that slug, or None (unknown or not a member)."""
    if not user.is_authenticated:
        return None
    # Unscoped: this lookup is what decides which scope to enter.
    with unscoped():
        return (
            Membership.objects.filter(user=user, tenant__slug=tenant_slug)
            .select_related("tenant")
            .first()
        )


def invitation_by_token(*, token: str) -> Invitation | None:
    # Unscoped: the token itself is the credential and names its tenant.
    with unscoped():
        return (
            Invitation.objects.filter(token_hash=hash_token(token))
            .select_related("tenant", "invited_by")
            .first()
        )


def tenant_members(*, tenant: Tenant) -> QuerySet[Membership]:
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("user__email")


def assignable_members(*, tenant: Tenant) -> QuerySet[Membership]:
    """The members tickets can be assigned to: those whose account is active."""
    return tenant_members(tenant=tenant).filter(user__is_active=True)


def tenant_pending_invitations(*, tenant: Tenant) -> QuerySet[Invitation]:
    return Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True).order_by(
        "-created_at"
    )


def api_key_resolve(*, presented: str) -> ApiKey | None:
    """The active key ``presented`` (``hd_<prefix>_<secret>``) is, with its tenant; None
    for anything else (malformed, unknown, revoked). One indexed lookup by prefix, then a
    constant-time comparison of the hashes."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "hd" or not parts[1] or not parts[2]:
        return None
    # Unscoped: the key is the credential and names its tenant (like an invitation token).
    with unscoped():
        key = (ApiKey.objects.filter(prefix=parts[1], revoked_at__isnull=True)
               .select_related("tenant", "created_by").first())
    if key is None or not hmac.compare_digest(key.secret_hash, hash_token(presented)):
        return None
    return key


def api_keys_for(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return (ApiKey.objects.filter(tenant=tenant).select_related("created_by")
            .order_by("revoked_at", "-created_at"))
