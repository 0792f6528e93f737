from __future__ import annotations

import pytest

from helpdesk.models import Role
from helpdesk.tenancy import tenant_scope
from tests.factories import MembershipFactory, TenantFactory, UserFactory


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    """Files written by a test go to its own folder, never ./var/media."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(tmp_path / "media")}},
    }


@pytest.fixture
def tenant(db):
    return TenantFactory()


@pytest.fixture
def other_tenant(db):
    return TenantFactory()


@pytest.fixture
def agent(tenant):
    user = UserFactory()
    MembershipFactory(tenant=tenant, user=user, role=Role.AGENT)
    return user


@pytest.fixture
def admin_user(tenant):
    user = UserFactory()
    MembershipFactory(tenant=tenant, user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def agent_client(client, agent):
    client.force_login(agent)
    return client


@pytest.fixture
def scoped(tenant):
    """Run the test body inside the tenant's scope."""
    with tenant_scope(tenant):
        yield tenant

# The Google sandbox (a real subprocess over HTTP) for any test folder that needs it.
# The real Dovecot + SMTP submission server (sandbox/mailserver.py) for IMAP tests.
from tests.mail_support import mail_server, mailboxes  # noqa: E402, F401
from tests.sandbox_support import (  # noqa: E402, F401
    connect,
    sandbox,
    sandbox_ca_file,
    sandbox_https_url,
    sandbox_server,
    sandbox_url,
    sandbox_var,
)
