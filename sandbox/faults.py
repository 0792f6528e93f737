"""Fault switches: each is "the next N matching requests" (count) or "until cleared".

A fault is a dict stored in the state::

    {"id": 3, "kind": "too_many_requests", "count": 2 | None, "mailbox": "a@x" | None,
     "target": "gmail" | "token" | "any", "retry_after": 7, "delay": 2.5, "status": 503}

Kinds:
  user_rate_limit    403 usageLimits/userRateLimitExceeded (Gmail API)
  rate_limit         403 usageLimits/rateLimitExceeded (Gmail API)
  too_many_requests  429 RESOURCE_EXHAUSTED with Retry-After (Gmail API)
  server_error       500 backendError (or "status": 502/503/504) (Gmail API by default)
  invalid_argument   400 invalidArgument "Invalid To header" (Gmail API): a permanent refusal
  slow               sleep "delay" seconds, then answer normally (Gmail API by default)
  slow_after_send    messages.send stores (sends) the message, then holds its answer "delay"
                     seconds: the window in which a client that dies (or times out) does
                     not learn that Gmail accepted the mail
  invalid_grant      refresh_token grant answers 400 invalid_grant (token endpoint)
  expired_history    users.history.list answers 404 notFound (Gmail API)
  push_duplicate     each push notification is delivered twice (same messageId)
  push_reorder       pushes are held reorder_hold_seconds and delivered newest first
                     (Pub/Sub pushes and Graph change notifications alike)
  mailbox_concurrency  429 ApplicationThrottled with Retry-After (Graph: over the 4
                     concurrent requests per app per mailbox)
  expired_delta      the next Graph delta call answers 410 SyncStateNotFound

Graph answers the Gmail kinds too when the fault says ``"target": "graph"``:
too_many_requests (429 TooManyRequests + Retry-After), server_error (status 500/502/503/504;
503 with Retry-After), slow.

Microsoft's token endpoint (target "ms_token"):
  idle_refresh_token Microsoft refresh answers invalid_grant AADSTS700082 (90 days idle)
  interaction_required  Microsoft refresh answers interaction_required AADSTS50076 (MFA)
  consent_required   Microsoft code or refresh answers invalid_grant AADSTS65001
"""

from __future__ import annotations

KINDS = {
    "user_rate_limit": "gmail",
    "rate_limit": "gmail",
    "too_many_requests": "gmail",
    "server_error": "gmail",
    "invalid_argument": "gmail",
    "slow": "gmail",
    "slow_after_send": "send",
    "invalid_grant": "token",
    "expired_history": "history",
    "push_duplicate": "push",
    "push_reorder": "push",
    "mailbox_concurrency": "graph",
    "expired_delta": "delta",
    # Microsoft's token endpoint (target "ms_token"; invalid_grant, slow and server_error
    # apply there too with that target)
    "idle_refresh_token": "ms_token",
    "interaction_required": "ms_token",
    "consent_required": "ms_token",
}


class FaultError(ValueError):
    pass


def add_fault(state: dict, spec: dict) -> dict:
    kind = spec.get("kind")
    if kind not in KINDS:
        raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    count = spec.get("count")
    if count is not None:
        count = int(count)
        if count < 1:
            raise FaultError("count must be >= 1 (omit it for 'until cleared')")
    fault = {
        "id": state.get("next_fault_id", 1),
        "kind": kind,
        "count": count,
        "mailbox": (spec.get("mailbox") or "").lower() or None,
        "target": spec.get("target") or KINDS[kind],
        "retry_after": int(spec.get("retry_after", 5)),
        "delay": float(spec.get("delay", 2.0)),
        "status": int(spec.get("status", 500)),
        "probability": float(spec.get("probability", 1.0)),
    }
    state["next_fault_id"] = fault["id"] + 1
    state["faults"].append(fault)
    return fault


def clear_faults(state: dict, fault_id=None, kind=None) -> int:
    before = len(state["faults"])
    state["faults"] = [
        f for f in state["faults"]
        if not ((fault_id is None or f["id"] == int(fault_id))
                and (kind is None or f["kind"] == kind))
    ]
    return before - len(state["faults"])


def _target_ok(fault: dict, target: str) -> bool:
    return fault["target"] in (target, "any") or (
        target == "history" and fault["target"] == "history"
    )


def take(state: dict, kinds: tuple[str, ...], target: str, mailbox: str | None) -> dict | None:
    """Find the first matching fault of one of ``kinds`` and consume one use of it."""
    import random

    for fault in list(state["faults"]):
        if fault["kind"] not in kinds or not _target_ok(fault, target):
            continue
        if fault["mailbox"] and fault["mailbox"] != (mailbox or "").lower():
            continue
        if fault["probability"] < 1.0 and random.random() >= fault["probability"]:  # noqa: S311
            continue
        if fault["count"] is not None:
            fault["count"] -= 1
            if fault["count"] <= 0:
                state["faults"].remove(fault)
        return fault
    return None


def consume_push_faults(state: dict, mailbox: str) -> tuple[bool, bool]:
    duplicate = take(state, ("push_duplicate",), "push", mailbox) is not None
    reorder = take(state, ("push_reorder",), "push", mailbox) is not None
    return duplicate, reorder
