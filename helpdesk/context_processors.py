from helpdesk.selectors import memberships_for_user


def tenancy(request):
    """The current tenant and the user's other tenants, for the header's switcher."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "current_tenant": getattr(request, "tenant", None),
        "current_membership": getattr(request, "membership", None),
        "user_memberships": lambda: memberships_for_user(user=user),
    }
