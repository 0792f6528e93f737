"""Tenant scoping (DESIGN.md house rule 3), built on django-scopes.

Contract:
- Every tenant-owned model inherits ``TenantOwnedModel``: it carries ``tenant`` itself and
  its default manager raises ``ScopeError`` on any query unless a tenant scope is active.
  Inside ``tenant_scope(t)`` every query on such a model is filtered to ``t``.
- The scope is entered by ``TenantMiddleware`` for ``/<tenant_slug>/...`` URLs, and by
  tasks and commands from the row they load (``tenant_scope(row.tenant)``).
- ``unscoped()`` is for the few cross-tenant reads that are correct by construction
  (resolving a user's memberships, the operators' admin site, tests' set-up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db import models
from django_scopes import ScopedManager, get_scope, scope, scopes_disabled
from django_scopes.exceptions import ScopeError

if TYPE_CHECKING:
    from helpdesk.models import Tenant

__all__ = [
    "ScopeError",
    "TenantOwnedModel",
    "active_tenant",
    "tenant_scope",
    "unscoped",
]


class _TenantManagerBase(models.Manager):
    """The scoped manager's base: ``create`` and ``bulk_create`` skip building the scope's
    filter (django-scopes lets them through without a scope anyway: a new row names its
    tenant itself), which costs more than a small INSERT on the ingest path."""

    def _unfiltered(self) -> models.QuerySet:
        return models.QuerySet(model=self.model, using=self._db, hints=self._hints)

    def create(self, **kwargs):
        return self._unfiltered().create(**kwargs)

    def bulk_create(self, objs, *args, **kwargs):
        return self._unfiltered().bulk_create(objs, *args, **kwargs)


class TenantOwnedModel(models.Model):
    """Abstract base for every row that belongs to a tenant."""

    # No index of its own: every tenant-owned model has an index or unique constraint that
    # starts with tenant (tests/helpdesk/test_tenancy.py checks), which serves the same
    # lookups; a redundant index only costs writes.
    tenant = models.ForeignKey("helpdesk.Tenant", on_delete=models.CASCADE, related_name="+",
                               db_index=False)

    objects = ScopedManager(_TenantManagerBase, tenant="tenant")

    class Meta:
        abstract = True


@contextlib.contextmanager
def tenant_scope(tenant: Tenant) -> Iterator[Tenant]:
    """Run the block with every tenant-owned query restricted to ``tenant``."""
    with scope(tenant=tenant):
        yield tenant


def unscoped():
    """Lift the tenant scope for a block; each use must say why in a comment."""
    return scopes_disabled()


def active_tenant() -> Tenant | None:
    """The tenant of the active scope, or None."""
    current = get_scope()
    if not current.get("_enabled", False):
        return None
    return current.get("tenant")


def require_admin(request, doing: str = "do this") -> None:
    """PermissionDenied (403) unless the request's member is an admin of its workspace;
    views look their object up first, so another workspace's object stays a 404."""
    if not request.membership.is_admin:
        raise PermissionDenied(f"Only workspace admins can {doing}.")
