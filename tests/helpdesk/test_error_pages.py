"""Our own 403, 404 and 500 pages with DEBUG off: styled (our stylesheet, no inline
script or style, so the CSP lets them render as meant), never Django's technical pages."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import include, path


def _boom(request):
    raise RuntimeError("a bug in a view")


# A URL map with one failing view beside the real ones (ROOT_URLCONF in the 500 test).
urlpatterns = [path("boom/", _boom), path("", include("helpdesk.urls"))]

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _debug_off(settings):
    settings.DEBUG = False


def styled(page: str) -> None:
    assert "/static/css/app.css" in page and "/static/favicon.svg" in page
    assert "<script>" not in page and "style=" not in page
    assert "Django" not in page and "Traceback" not in page


def test_an_unknown_page_is_our_404(client, admin_user, tenant):
    client.force_login(admin_user)
    for url in ("/no-such-workspace/tickets/", "/a/b/c/d/"):
        answer = client.get(url)
        assert answer.status_code == 404, url
        styled(answer.content.decode())
        assert "<h1>Not found</h1>" in answer.content.decode()
    answer = client.get(f"/{tenant.slug}/tickets/99999/")
    page = answer.content.decode()
    assert answer.status_code == 404
    styled(page)
    assert "<h1>Not found</h1>" in page and "Tickets</a>" in page  # the nav is there


def test_a_page_for_admins_is_our_403_for_an_agent(client, agent, tenant):
    client.force_login(agent)
    answer = client.get(f"/{tenant.slug}/settings/email/")
    assert answer.status_code == 403
    page = answer.content.decode()
    styled(page)
    assert "<h1>Not allowed</h1>" in page and "manage email channels" in page


def test_a_server_error_is_our_500_without_a_database_or_context(settings):
    settings.ROOT_URLCONF = __name__
    answer = Client(raise_request_exception=False).get("/boom/")
    assert answer.status_code == 500
    page = answer.content.decode()
    styled(page)
    assert "<h1>Something went wrong</h1>" in page and "a bug in a view" not in page


def test_favicon_ico_leads_to_the_icon_the_pages_name(client):
    answer = client.get("/favicon.ico")
    assert answer.status_code == 301 and answer["Location"].endswith("favicon.svg")
