"""The settings module's profiles, checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

STRONG = "x" * 50
# The caller's own values of these never reach a booted interpreter.
TRANSPORT_ENV = ("SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
                 "SECURE_HSTS_PRELOAD", "TRUSTED_PROXY_SSL_HEADER")


def _boot(env: dict[str, str], tmp_path, code: str = (
        "from django.conf import settings;"
        "print(settings.DEBUG, bool(settings.SECRET_KEY), len(settings.FERNET_KEYS))"),
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in {"SECRET_KEY", "FERNET_KEYS", "DEBUG", "DJANGO_ENV", *TRANSPORT_ENV}}
    base.update({
        "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
        "REDIS_URL": settings.REDIS_URL,
        "HELPDESK_VAR_DIR": str(tmp_path / "var"),
    })
    base.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); " + code],
        env=base, capture_output=True, text=True, timeout=60,
    )


PROD = {"DJANGO_ENV": "prod", "SECRET_KEY": STRONG, "FERNET_KEYS": "k", "ALLOWED_HOSTS": "x"}


@pytest.mark.parametrize(("change", "complaint"), [
    ({"SECRET_KEY": ""}, "SECRET_KEY"),
    ({"SECRET_KEY": "django-insecure-" + STRONG}, "SECRET_KEY"),
    ({"FERNET_KEYS": ""}, "FERNET_KEYS"),
    ({"DEBUG": "true"}, "DEBUG"),
])
def test_prod_refuses_to_start(tmp_path, change, complaint):
    result = _boot({**PROD, **change}, tmp_path)
    assert result.returncode != 0
    assert "Refusing to start in prod" in result.stderr and complaint in result.stderr


def test_prod_starts_with_everything_set(tmp_path):
    result = _boot(PROD, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "1"]
    assert not (tmp_path / "var" / "secrets.json").exists()


def test_dev_generates_secrets_once(tmp_path):
    first = _boot({"DJANGO_ENV": "dev"}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["True", "True", "1"]
    saved = json.loads((tmp_path / "var" / "secrets.json").read_text())
    assert _boot({"DJANGO_ENV": "dev"}, tmp_path).returncode == 0
    assert json.loads((tmp_path / "var" / "secrets.json").read_text()) == saved


def test_celery_is_configured_for_safe_delivery():
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_TASK_REJECT_ON_WORKER_LOST
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert visibility > settings.CELERY_MAX_COUNTDOWN_SECONDS
    from helpdesk.celery import app

    for queue in ("webhooks", "ingest", "outbound", "maintenance"):
        route = app.amqp.router.route({}, f"{queue}.anything")
        assert route["queue"].name == queue


TRANSPORT = ("SECURE_SSL_REDIRECT", "SECURE_REDIRECT_EXEMPT", "SECURE_HSTS_SECONDS",
             "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER")


def _transport(env: dict[str, str], tmp_path) -> dict:
    """The transport settings of a fresh interpreter booted with ``env``."""
    code = ("import json; from django.conf import settings; "
            f"print(json.dumps({{n: getattr(settings, n) for n in {TRANSPORT!r}}}))")
    result = _boot(env, tmp_path, code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_prod_is_https_only_with_a_year_of_hsts(tmp_path):
    assert _transport(PROD, tmp_path) == {
        "SECURE_SSL_REDIRECT": True, "SECURE_REDIRECT_EXEMPT": ["^healthz$"],
        "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": False, "SECURE_PROXY_SSL_HEADER": None,
    }


def test_prod_transport_settings_come_from_the_environment(tmp_path):
    values = _transport({**PROD, "SECURE_SSL_REDIRECT": "false", "SECURE_HSTS_SECONDS": "60",
                         "SECURE_HSTS_INCLUDE_SUBDOMAINS": "false", "SECURE_HSTS_PRELOAD": "true",
                         "TRUSTED_PROXY_SSL_HEADER": "true"}, tmp_path)
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 60
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False
    assert values["SECURE_HSTS_PRELOAD"] is True
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_dev_stays_on_plain_http_whatever_the_environment_says(tmp_path):
    """The demo runs dev over http://127.0.0.1: nothing redirects it or pins it to https."""
    values = _transport({"DJANGO_ENV": "dev", "SECURE_SSL_REDIRECT": "true",
                         "SECURE_HSTS_SECONDS": "31536000", "TRUSTED_PROXY_SSL_HEADER": "true"},
                        tmp_path)
    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0
    assert values["SECURE_PROXY_SSL_HEADER"] is None


def test_test_profile_stays_on_plain_http():
    assert settings.DJANGO_ENV == "test"
    assert not settings.SECURE_SSL_REDIRECT
    assert settings.SECURE_HSTS_SECONDS == 0
    assert settings.SECURE_PROXY_SSL_HEADER is None


# Requests through the whole middleware stack in a prod interpreter: (path, extra headers,
# secure) -> status, Location, Strict-Transport-Security.
PROD_REQUESTS = (
    "import json; from django.test import Client; c = Client(); out = []\n"
    "for path, headers, secure in json.loads(%r):\n"
    "    r = c.get(path, headers=headers, secure=secure)\n"
    "    out.append([r.status_code, r.headers.get('Location'),"
    " r.headers.get('Strict-Transport-Security')])\n"
    "print(json.dumps(out))"
)


def _test_database_url() -> str:
    """The test database this run created (the health check queries it): the server of
    DATABASE_URL may have no database of DATABASE_URL's own name."""
    db = settings.DATABASES["default"]
    return (f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}")


def _prod_requests(env: dict[str, str], tmp_path, requests: list) -> list:
    result = _boot({**PROD, "ALLOWED_HOSTS": "testserver", "DATABASE_URL": _test_database_url(),
                    **env}, tmp_path, PROD_REQUESTS % json.dumps(requests))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_prod_redirects_http_sends_hsts_and_keeps_the_health_check_on_http(tmp_path, db):
    spoofed = {"X-Forwarded-Proto": "https"}
    login, health, hsts, spoof = _prod_requests({}, tmp_path, [
        ["/accounts/login/", {}, False],
        ["/healthz", {}, False],
        ["/healthz", {}, True],
        ["/accounts/login/", spoofed, False],
    ])
    assert login == [301, "https://testserver/accounts/login/", None]
    assert health == [200, None, None]  # no HSTS over http
    assert hsts == [200, None, "max-age=31536000; includeSubDomains"]
    assert spoof[:2] == [301, "https://testserver/accounts/login/"]  # no proxy is trusted


def test_prod_behind_a_trusted_proxy_believes_its_header(tmp_path, db):
    forwarded, direct = _prod_requests({"TRUSTED_PROXY_SSL_HEADER": "true"}, tmp_path, [
        ["/healthz", {"X-Forwarded-Proto": "https"}, False],
        ["/accounts/login/", {}, False],
    ])
    assert forwarded == [200, None, "max-age=31536000; includeSubDomains"]
    assert direct[:2] == [301, "https://testserver/accounts/login/"]
