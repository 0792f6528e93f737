"""Nothing outside ``channels_email/providers/`` (and the sandbox, settings, migrations and
tests) branches on a provider's name (DESIGN.md section 10): no identifier naming one
(``GOOGLE_CLIENT_ID``, ``gmail_configured``), no string literal that is one or a path of
one (``"gmail"``, ``"/webhooks/google/pubsub/"``), no comparison of ``provider`` with
``"manual"``, in the app's Python and templates. Prose (comments, docstrings that
explain a provider's behaviour) may name them."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = ("channels_email", "helpdesk", "tickets", "contacts", "routing")
ALLOWED = ("channels_email/providers/", "sandbox/", "/migrations/", "helpdesk/settings")
# The demo (helpdesk/demo.py, rundemo) names no provider either: its sandbox wiring, the
# seeded mailbox's provider and the consent its --check posts come from the registry.
SMOKE_TESTS: tuple[str, ...] = ()
NAMES = ("gmail", "google", "microsoft", "outlook", "graph")
NAME_IN_IDENTIFIER = re.compile(r"gmail|google", re.IGNORECASE)
_ANY = "|".join(NAMES)
NAME_IN_LITERAL = re.compile(rf"^(?:{_ANY})$|/(?:{_ANY})/", re.IGNORECASE)
MANUAL_COMPARISON = re.compile(r"provider\W{0,3}\s*(?:==|!=|=|__in)\s*[\"']manual[\"']")
TEMPLATE_LEAK = re.compile(rf"[\"'](?:{_ANY}|manual)[\"']|/(?:{_ANY})/|GOOGLE_|GMAIL_",
                           re.IGNORECASE)


def _app_files(suffix: str) -> list[Path]:
    files = []
    for app in (*APPS, "templates"):
        for path in (ROOT / app).rglob(f"*{suffix}"):
            relative = path.relative_to(ROOT).as_posix()
            if not any(part in relative for part in ALLOWED):
                files.append(path)
    return files


def _python_leaks(path: Path) -> list[str]:
    text = path.read_text()
    found = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        value = token.string
        if token.type == tokenize.NAME and NAME_IN_IDENTIFIER.search(value):
            found.append(f"{token.start[0]}: identifier {value}")
        elif token.type == tokenize.STRING:
            literal = value.lstrip("rbuRBUfF")
            if literal[:3] in ('"""', "'''"):
                continue  # a docstring or other prose
            if NAME_IN_LITERAL.search(literal.strip("\"'")):
                found.append(f"{token.start[0]}: literal {value}")
    for number, line in enumerate(text.splitlines(), 1):
        if MANUAL_COMPARISON.search(line):
            found.append(f"{number}: {line.strip()}")
    return found


def test_no_provider_name_outside_the_providers_package():
    leaks = []
    for path in _app_files(".py"):
        relative = path.relative_to(ROOT).as_posix()
        if relative not in SMOKE_TESTS:
            leaks += [f"{relative}:{leak}" for leak in _python_leaks(path)]
    for path in _app_files(".html"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if TEMPLATE_LEAK.search(line):
                leaks.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    assert leaks == []


def test_the_check_finds_a_leak():
    """The scanner itself catches the shapes it looks for."""
    sample = Path(__file__).with_name("_leak_sample.py")
    sample.write_text('if conn.provider == "manual" or settings.GOOGLE_CLIENT_ID:\n'
                      '    url = "webhooks/google/pubsub/"\n'
                      'kind = "gmail"  # a comment naming Gmail is fine\n')
    try:
        leaks = _python_leaks(sample)
    finally:
        sample.unlink()
    assert [leak.split(":")[0] for leak in leaks] == ["1", "2", "3", "1"]


@pytest.mark.django_db
def test_a_provider_left_out_of_the_settings_is_off(client, admin_user, tenant, settings):
    """EMAIL_PROVIDERS decides: without Gmail there is no Gmail button, its connect URL
    and its webhook are 404, and a connection of it stays, shown without Reconnect."""
    from urllib.parse import urlsplit

    from tests.factories import EmailConnectionFactory

    client.force_login(admin_user)
    settings.GOOGLE_CLIENT_ID = "configured.apps.googleusercontent.com"
    EmailConnectionFactory(tenant=tenant, provider="gmail", address="old@acme.test",
                           status="token_expired")
    sign_in = urlsplit(settings.GOOGLE_AUTH_URI)
    origin = f"{sign_in.scheme}://{sign_in.netloc}"
    answer = client.get(f"/{tenant.slug}/settings/email/")
    page = answer.content.decode()
    assert "Gmail: Authorize with Google" in page and "/reconnect/" in page
    assert origin in answer["Content-Security-Policy"]

    settings.EMAIL_PROVIDERS = ["channels_email.providers.manual.ManualProvider"]
    answer = client.get(f"/{tenant.slug}/settings/email/")
    page = answer.content.decode()
    assert "Authorize with Google" not in page and "old@acme.test" in page
    assert "/reconnect/" not in page and "/disconnect/" not in page
    assert origin not in answer["Content-Security-Policy"]
    assert client.post(f"/{tenant.slug}/settings/email/connect/gmail/").status_code == 404
    assert client.post("/webhooks/google/pubsub/", data=b"{}",
                       content_type="application/json").status_code == 404
