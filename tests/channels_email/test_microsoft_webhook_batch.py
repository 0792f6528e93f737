"""A Graph notification POST carries a batch (``value`` holds up to 1,000 items): its
cost in SQL statements and Redis round trips does not grow with the batch, only its task
publishes do (one per connection that had no sync pending). Real view, PostgreSQL and
Redis; connections stored directly (no sign-in needed to be notified)."""

from __future__ import annotations

import json
import uuid

import pytest
import redis.client
from django.db import connection as db

from channels_email import webhooks as channel_webhooks
from channels_email.models import ConnectionStatus, EmailConnection
from channels_email.sync import push_mark, push_unmark
from channels_email.tasks import sync_connection
from helpdesk.coordination import redis_client, redis_key
from helpdesk.tenancy import tenant_scope
from tests.channels_email.graph_support import NOTIFY_PATH

pytestmark = pytest.mark.django_db


def subscribed(tenant, count: int) -> list[EmailConnection]:
    run = uuid.uuid4().hex[:8]
    with tenant_scope(tenant):
        return [EmailConnection.objects.create(
            tenant=tenant, provider="microsoft", address=f"box{i}-{run}@contoso.test",
            status=ConnectionStatus.ACTIVE, cursor="since:2026-01-01T00:00:00Z",
            subscription_id=f"sub-{run}-{i}", subscription_secret=f"secret-{run}-{i}-" + "s" * 40)
            for i in range(count)]


def item(conn: EmailConnection, client_state: str | None = None) -> dict:
    return {"subscriptionId": conn.subscription_id, "changeType": "created",
            "clientState": conn.subscription_secret if client_state is None else client_state,
            "resource": "Users/u/Messages/m", "tenantId": "t"}


def forget_caches(conns: list[EmailConnection]) -> None:
    for conn in conns:
        channel_webhooks.forget_subscription("microsoft", conn.subscription_id)


def pending(conn: EmailConnection) -> bool:
    return bool(redis_client().exists(redis_key("sync-pending", conn.pk)))


class Cost:
    """SQL statements and Redis round trips (a pipeline is one) of what runs inside."""

    def __init__(self, monkeypatch):
        self.sql = 0
        self.redis: list[str] = []
        execute, pipeline = redis.client.Redis.execute_command, redis.client.Pipeline.execute

        def count_command(client, *args, **kwargs):
            self.redis.append(str(args[0]))
            return execute(client, *args, **kwargs)

        def count_pipeline(pipe, *args, **kwargs):
            self.redis.append("pipeline")
            return pipeline(pipe, *args, **kwargs)

        monkeypatch.setattr(redis.client.Redis, "execute_command", count_command)
        monkeypatch.setattr(redis.client.Pipeline, "execute", count_pipeline)

    def __call__(self, execute, sql, params, many, context):
        self.sql += 1
        return execute(sql, params, many, context)

    def post(self, client, items: list[dict]):
        self.sql, self.redis = 0, []
        with db.execute_wrapper(self):
            answer = client.post(NOTIFY_PATH, data=json.dumps({"value": items}),
                                 content_type="application/json")
        assert answer.status_code == 202
        publishes = self.redis.count("LPUSH")  # kombu's publish of one task
        return self.sql, len(self.redis) - publishes, publishes


@pytest.mark.parametrize("cold", [True, False], ids=["cold-caches", "warm-caches"])
def test_a_batch_costs_the_same_statements_and_round_trips_whatever_its_size(
        client, tenant, monkeypatch, cold):
    small, large = subscribed(tenant, 2), subscribed(tenant, 60)
    # This process's first publish connects to the broker and declares the queue.
    Cost(monkeypatch).post(client, [item(c) for c in subscribed(tenant, 1)])
    if not cold:  # one notification each first: the owners are in the caches
        Cost(monkeypatch).post(client, [item(c) for c in small + large])
        for conn in small + large:
            push_unmark(conn.pk)
    else:
        forget_caches(small + large)
    cost = Cost(monkeypatch)
    small_cost = cost.post(client, [item(c) for c in small])
    large_cost = cost.post(client, [item(c) for c in large] + [item(c) for c in large[:5]])
    # Cold: one SELECT for the whole batch (and one cache read, one cache write, one
    # pipeline of marks); warm: nothing but the marks. One publish per connection.
    assert small_cost[:2] == large_cost[:2] == ((1, 3) if cold else (0, 1))
    assert (small_cost[2], large_cost[2]) == (2, 60)
    assert all(pending(c) for c in small + large)
    # The same batch again: every connection has a sync pending, so nothing is published.
    assert cost.post(client, [item(c) for c in large]) == (0, 1, 0)


def test_in_one_batch_wrong_secrets_and_unknown_subscriptions_drop_only_their_items(
        client, tenant, monkeypatch):
    good, forged, gone = subscribed(tenant, 3)
    with tenant_scope(tenant):
        EmailConnection.objects.filter(pk=gone.pk).update(status=ConnectionStatus.DISCONNECTED)
    forget_caches([good, forged, gone])
    sql, _, publishes = Cost(monkeypatch).post(client, [
        item(forged, "x" * len(forged.subscription_secret)), item(forged, ""),
        {**item(good), "subscriptionId": "not-ours"}, item(gone), item(good), item(good)])
    assert (sql, publishes) == (1, 1)
    assert pending(good) and not pending(forged) and not pending(gone)


def test_a_publish_that_fails_mid_batch_takes_back_the_marks_not_queued(
        client, tenant, monkeypatch):
    conns = subscribed(tenant, 4)
    already = conns[0]
    push_mark(already.pk)  # a sync is pending: not published, its mark stays
    sent: list[int] = []
    publish = sync_connection.apply_async

    def broker_fails_on_the_second(*args, **kwargs):
        if len(sent) == 1:
            raise ConnectionError("broker gone")
        sent.append(kwargs["kwargs"]["connection_id"])
        return publish(*args, **kwargs)

    monkeypatch.setattr(sync_connection, "apply_async", broker_fails_on_the_second)
    answer = client.post(NOTIFY_PATH, data=json.dumps({"value": [item(c) for c in conns]}),
                         content_type="application/json")
    assert answer.status_code == 503  # Graph retries the batch
    assert sent == [conns[1].pk]
    assert [pending(c) for c in conns] == [True, True, False, False]
    monkeypatch.setattr(sync_connection, "apply_async", publish)
    # Graph's retry: the two whose marks were taken back are published now, only they.
    assert Cost(monkeypatch).post(client, [item(c) for c in conns])[2] == 2
    assert all(pending(c) for c in conns)
