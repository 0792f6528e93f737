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
    # TenantMiddleware has read them already on a workspace's pages.
    memberships = getattr(request, "user_memberships", None)
    from channels_email.selectors import addresses_needing_reconnect
    from tickets.notifications import notification_unread_count

    return {
        "current_tenant": tenant,
        "current_membership": getattr(request, "membership", None),
        "user_memberships": (lambda: memberships) if memberships is not None
                            else lambda: memberships_for_user(user=user),
        "notification_unread_count":
            _once(notification_unread_count, tenant=tenant, user=user) if tenant else 0,
        "mailboxes_needing_reconnect":
            _once(addresses_needing_reconnect, tenant=tenant) if tenant else list,
    }


def _once(selector, **kwargs):
    """``selector(**kwargs)`` as a callable the template calls: run on first use only."""
    return functools.cache(functools.partial(selector, **kwargs))
