"""Connection health transitions on real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from channels_email import health
from channels_email.models import ConnectionStatus
from channels_email.providers import AuthError, PermanentError, RateLimited, TransientError
from helpdesk.tenancy import tenant_scope
from tests.factories import EmailConnectionFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def conn(tenant):
    with tenant_scope(tenant):
        yield EmailConnectionFactory(tenant=tenant, provider="gmail")


def test_success_records_the_sync_and_clears_errors(conn):
    health.record_error(conn, TransientError("backend error", status=500))
    assert conn.consecutive_errors == 1 and conn.status == ConnectionStatus.ACTIVE
    assert "backend error" in conn.last_error and conn.last_error_at is not None
    health.record_success(conn, synced=True)
    assert conn.consecutive_errors == 0 and conn.last_sync_at is not None
    assert conn.status == ConnectionStatus.ACTIVE


def test_invalid_grant_means_token_expired_until_reconnect(conn):
    health.record_error(conn, AuthError("Token has been expired or revoked.",
                                        reason="invalid_grant"))
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED and not health.may_call(conn)
    health.record_success(conn)  # a stray success cannot undo it
    assert conn.status == ConnectionStatus.TOKEN_EXPIRED
    health.reactivate(conn)
    assert conn.status == ConnectionStatus.ACTIVE and health.may_call(conn)


def test_a_bare_401_counts_but_keeps_the_connection_active(conn):
    health.record_error(conn, AuthError("unauthorized", status=401, reason="authError"))
    assert conn.status == ConnectionStatus.ACTIVE and conn.consecutive_errors == 1


def test_rate_limited_honours_retry_after_then_recovers(conn):
    health.record_error(conn, RateLimited("slow down", retry_after=120, status=429))
    assert conn.status == ConnectionStatus.RATE_LIMITED and not health.may_call(conn)
    assert 110 < health.wait_seconds(conn) <= 120
    conn.rate_limited_until = timezone.now() - timedelta(seconds=1)
    conn.save(update_fields=["rate_limited_until"])
    assert health.may_call(conn)
    health.record_success(conn)
    assert conn.status == ConnectionStatus.ACTIVE and conn.rate_limited_until is None


def test_rate_limited_without_retry_after_backs_off_exponentially(conn):
    waits = []
    for _ in range(4):
        health.record_error(conn, RateLimited("quota", status=403))
        waits.append(health.wait_seconds(conn))
    assert all(w > 0 for w in waits)
    assert waits[3] > health.BACKOFF_BASE_SECONDS * 4  # 4th failure: between 120 and 240 s


def test_backoff_is_jittered_and_capped():
    values = {round(health.backoff_seconds(3), 3) for _ in range(20)}
    assert len(values) > 1 and all(60 <= v <= 120 for v in values)
    assert health.backoff_seconds(50) <= health.BACKOFF_CAP_SECONDS


def test_disconnect_wins_and_wipes_credentials(conn):
    conn.credentials = {"access_token": "ya29.secret", "refresh_token": "1//secret"}
    conn.save()
    health.record_disconnected(conn)
    health.record_success(conn)
    health.record_error(conn, RateLimited("late answer", retry_after=5))
    conn.refresh_from_db()
    assert conn.status == ConnectionStatus.DISCONNECTED and conn.credentials is None
    assert not health.may_call(conn)


def test_errors_are_stored_without_credentials(conn):
    health.record_error(conn, PermanentError(
        'refused: {"access_token": "ya29.a0AfH6", "refresh_token": "1//0gabc"} '
        "Authorization: Bearer ya29.zzz code=4/0AX4XfWh-abcdefghijk"))
    for secret in ("ya29", "1//0gabc", "4/0AX4XfWh"):
        assert secret not in conn.last_error
    assert "refused" in conn.last_error


def test_rotate_credentials_re_encrypts_under_the_new_first_key(conn, settings):
    from cryptography.fernet import Fernet, InvalidToken
    from django.core.management import call_command
    from django.db import connection as db

    from helpdesk import crypto

    old = settings.FERNET_KEYS[0]
    conn.credentials = {"access_token": "ya29.secret", "refresh_token": "1//secret"}
    conn.save()
    new = Fernet.generate_key().decode()
    settings.FERNET_KEYS = [new, old]
    crypto._fernet.cache_clear()
    call_command("rotate_credentials")
    with db.cursor() as cursor:
        cursor.execute("SELECT credentials FROM channels_email_emailconnection WHERE id = %s",
                       [conn.pk])
        token = cursor.fetchone()[0]
    assert Fernet(new.encode()).decrypt(token.encode())  # readable with the new key alone
    with pytest.raises(InvalidToken):
        Fernet(old.encode()).decrypt(token.encode())
    settings.FERNET_KEYS = [new]
    crypto._fernet.cache_clear()
    conn.refresh_from_db()
    assert conn.credentials["refresh_token"] == "1//secret"
    crypto._fernet.cache_clear()
