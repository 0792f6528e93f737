import functools

from helpdesk.selectors import memberships_for_user


def tenancy(request):
    """The current tenant and the user's other tenants, for the header's switcher, and the
    user's unread notification count there, and (for admins) the mailboxes that need a
    Reconnect. All are lazy (callables the template calls
    when it renders them; the count is computed once): a page that shows neither, such as
    an htmx partial, costs no query."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    tenant = getattr(request, "tenant", None)
    return {
        "current_tenant": tenant,
        "current_membership": getattr(request, "membership", None),
        "user_memberships": lambda: memberships_for_user(user=user),
        "notification_unread_count": _unread_count(tenant, user) if tenant else 0,
        "mailboxes_needing_reconnect": _needing_reconnect(tenant) if tenant else list,
    }


def _needing_reconnect(tenant):
    from channels_email.selectors import addresses_needing_reconnect

    @functools.cache
    def addresses() -> list[str]:
        return addresses_needing_reconnect(tenant=tenant)

    return addresses


def _unread_count(tenant, user):
    from tickets.notifications import notification_unread_count

    @functools.cache
    def count() -> int:
        return notification_unread_count(tenant=tenant, user=user)

    return count
