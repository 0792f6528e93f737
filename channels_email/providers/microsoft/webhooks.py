"""Graph change and lifecycle notifications (``/webhooks/microsoft/graph/`` and
``.../lifecycle/``), PROVIDERS.md sections 5.2 to 5.4.

- ``?validationToken=...`` (the handshake Graph runs on both URLs while a subscription is
  created): answered first, before the body is read or anything is checked, with exactly
  the decoded token (the channel answers it 200 ``text/plain``).
- Otherwise the body is ``{"value": [...]}``; each item names its subscription, whose
  connection and ``clientState`` secret ``lookup`` finds (the whole batch in one lookup:
  its SQL statements and Redis round trips do not grow with the number of items). An
  item of an unknown subscription, or whose ``clientState`` differs (compared in constant
  time), is dropped and logged; the others still count, and the answer is 202 either way
  (Graph would retry anything else for hours). A body that is not such JSON: 400.
- A change notification (``changeType: created``) asks for a sync of its connection; the
  message id it names is not trusted for anything: the delta sync finds the messages.
- Lifecycle events: ``reauthorizationRequired`` (the token behind the subscription is
  about to lapse) and ``subscriptionRemoved`` ask the channel to renew the subscription in
  a task (a fresh token, then PATCH; a 404 there recreates it) and catch up with delta;
  ``missed`` asks for a catch-up sync.
"""

from __future__ import annotations

import json
import logging

from channels_email.providers.base import Accepted, ConnectionLookup, Handshake, Rejected

logger = logging.getLogger(__name__)

RENEW_EVENTS = frozenset({"reauthorizationRequired", "subscriptionRemoved"})
SYNC_EVENTS = frozenset({"missed"})
MAX_ITEMS = 1000


def handle(provider: str, hook: str, request, lookup: ConnectionLookup
           ) -> Handshake | Accepted | Rejected:
    token = request.GET.get("validationToken")
    if token is not None:
        return Handshake(token)
    try:
        body = json.loads(request.body)
        items = body["value"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return Rejected(400, "malformed notification body")
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        return Rejected(400, "malformed notification body")
    checked: list[tuple[str, dict]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        subscription = item.get("subscriptionId")
        if not isinstance(subscription, str) or not subscription or len(subscription) > 255 \
                or "\x00" in subscription:
            logger.info("webhook.microsoft.malformed_item hook=%s", hook)
            continue
        checked.append((subscription, item))
    # Every subscription of the batch at once: one cache read, at most one SQL statement.
    owners = lookup.by_subscriptions(provider, {s: None for s, _ in checked})
    sync: dict[int, None] = {}
    renew: dict[int, None] = {}
    for subscription, item in checked:
        owner = owners.get(subscription)
        if owner is None:
            logger.info("webhook.microsoft.unknown_subscription subscription=%s", subscription)
            continue
        if not owner.matches(item.get("clientState")):
            logger.warning("webhook.microsoft.client_state_mismatch subscription=%s "
                           "connection=%s", subscription, owner.connection_id)
            continue
        event = item.get("lifecycleEvent")
        if event in RENEW_EVENTS:
            logger.info("webhook.microsoft.lifecycle event=%s connection=%s", event,
                        owner.connection_id)
            renew[owner.connection_id] = None
        elif event in SYNC_EVENTS or event is None:
            if event:
                logger.info("webhook.microsoft.lifecycle event=%s connection=%s", event,
                            owner.connection_id)
            sync[owner.connection_id] = None
        else:
            logger.info("webhook.microsoft.unknown_lifecycle_event event=%r", event)
    return Accepted(tuple(c for c in sync if c not in renew), status=202,
                    renew_ids=tuple(renew))
