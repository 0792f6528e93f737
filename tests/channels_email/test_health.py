"""Connection health transitions on real PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from channels_email import health
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.providers import AuthError, PermanentError, RateLimited, TransientError
from channels_email.selectors import NOT_SYNCING_AFTER, connection_health
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


# ---------------------------------------------------------------- what the health page says


def _stale_sync(conn, minutes: int) -> None:
    """The last successful sync was ``minutes`` ago (a row as an old sync left it)."""
    EmailConnection.objects.filter(pk=conn.pk).update(
        last_sync_at=timezone.now() - timedelta(minutes=minutes))
    conn.refresh_from_db()


def _labels(conn) -> list[str]:
    return [flag.label for flag in connection_health(conn).flags]


@pytest.mark.parametrize("error", [
    TransientError("backend error", status=500),
    AuthError("unauthorized", status=401, reason="authError"),  # refresh keeps failing
    RateLimited("quota", retry_after=30, status=429),
    PermanentError("bad request", status=400),
], ids=["transient", "auth", "rate-limited", "permanent"])
def test_no_successful_sync_for_15_minutes_while_errors_come_says_not_syncing(conn, error):
    with tenant_scope(conn.tenant):
        _stale_sync(conn, NOT_SYNCING_AFTER.seconds // 60 - 5)
        health.record_error(conn, error)
        assert "Not syncing" not in _labels(conn)  # a recent sync: errors are not enough
        _stale_sync(conn, NOT_SYNCING_AFTER.seconds // 60 + 5)
        assert conn.consecutive_errors == 1  # far below the Failing threshold
        flags = connection_health(conn).flags
        assert [f.label for f in flags] == ["Not syncing"] and flags[0].tone == "bad"
        since = timezone.localtime(conn.last_sync_at).strftime("%H:%M")
        assert f"no successful sync since {conn.last_sync_at:%Y-%m-%d} {since}" \
            in flags[0].detail
        health.record_success(conn, synced=True)
        assert "Not syncing" not in _labels(conn)
        assert connection_health(conn).last_error_past


def test_a_mailbox_that_never_synced_counts_from_when_it_was_connected(conn):
    with tenant_scope(conn.tenant):
        health.record_error(conn, TransientError("backend error", status=500))
        assert "Not syncing" not in _labels(conn)  # connected a moment ago
        EmailConnection.objects.filter(pk=conn.pk).update(
            created_at=timezone.now() - timedelta(hours=1))
        conn.refresh_from_db()
        assert conn.last_sync_at is None and "Not syncing" in _labels(conn)


def test_quiet_without_errors_is_not_a_failure(conn):
    with tenant_scope(conn.tenant):
        _stale_sync(conn, 120)  # nothing new to fetch for two hours is fine
        assert _labels(conn) == []
        health.record_error(conn, TransientError("backend error", status=500))
        health.record_disconnected(conn)
        assert "Not syncing" not in _labels(conn)  # Disconnected says it all


def test_each_status_has_its_own_colour():
    tones = {status: connection_health(EmailConnectionFactory.build(status=status)).tone
             for status in ConnectionStatus.values}
    assert tones == {"active": "ok", "rate_limited": "warn", "token_expired": "bad",
                     "disconnected": "bad"}


def _block(page: str, address: str) -> str:
    """The health block of the mailbox ``address`` on a rendered page."""
    start = page.index(address)
    return page[page.index('<dl class="health">', start):page.index("</dl>", start)]


def test_list_and_mailbox_page_show_the_same_health_block(client, tenant, admin_user, conn):
    client.force_login(admin_user)
    with tenant_scope(tenant):
        _stale_sync(conn, 30)
        health.record_error(conn, RateLimited("quota exhausted", retry_after=600, status=429))
        until = timezone.localtime(conn.rate_limited_until).strftime("%H:%M")
    listing = client.get(f"/{tenant.slug}/settings/email/").content.decode()
    detail = client.get(f"/{tenant.slug}/settings/email/{conn.pk}/").content.decode()
    block = _block(listing, conn.address)
    assert block == _block(detail, conn.address)
    assert '<span class="badge tone-warn">Rate Limited</span>' in block
    assert f"until {until}" in block
    assert '<span class="badge tone-bad">Not syncing</span>' in block
    # Last sync and last error each with their age.
    assert "RateLimited: quota exhausted" in block
    assert len(re.findall(r"(?:just now| ago)</time>", block)) == 2
    assert "1 in a row" in block and "Watch expires" in block
    assert "Past" not in block

    with tenant_scope(tenant):
        health.record_success(conn, synced=True)
    block = _block(client.get(f"/{tenant.slug}/settings/email/").content.decode(),
                   conn.address)
    assert '<span class="badge tone-ok">Active</span>' in block
    assert '<span class="last-error past"><span class="badge tone-past">Past</span>' in block
    assert "a sync has worked since" in block and "Not syncing" not in block

    with tenant_scope(tenant):
        health.record_error(conn, AuthError("Token has been expired or revoked.",
                                            reason="invalid_grant"))
    block = _block(client.get(f"/{tenant.slug}/settings/email/{conn.pk}/").content.decode(),
                   conn.address)
    assert '<span class="badge tone-bad">Token Expired</span>' in block
    assert "last-error past" not in block  # the newest error is no history


def test_ages_read_as_words():
    from channels_email.selectors import age_in_words

    now = timezone.now()
    assert age_in_words(None, now) == ""
    assert age_in_words(now - timedelta(seconds=20), now) == "just now"
    assert age_in_words(now - timedelta(minutes=5), now) == "5\xa0minutes ago"
    assert age_in_words(now - timedelta(days=2, hours=3), now) == "2\xa0days, 3\xa0hours ago"
