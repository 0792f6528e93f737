"""The settings module's profiles, checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

STRONG = "x" * 50


def _boot(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in {"SECRET_KEY", "FERNET_KEYS", "DEBUG", "DJANGO_ENV"}}
    base.update({
        "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
        "REDIS_URL": settings.REDIS_URL,
        "HELPDESK_VAR_DIR": str(tmp_path / "var"),
    })
    base.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings;"
         "print(settings.DEBUG, bool(settings.SECRET_KEY), len(settings.FERNET_KEYS))"],
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
