"""What every REST API view shares (DESIGN.md section 11): API-key authentication and
the tenant scope it enters, permissions by key scope, RFC 9457 problem documents for
every error, and keyset (cursor) pagination.

Contract:
- A request under ``/api/`` carrying ``Authorization: Bearer hd_<prefix>_<secret>`` is
  resolved by ``ApiKeyMiddleware`` before any view runs: a valid key sets
  ``request.api_key`` and ``request.tenant`` and the whole request runs inside that
  tenant's scope (the workspace comes from the key, never from the URL). A bad key is
  refused by ``ApiKeyAuthentication`` with 401 and a problem document; nothing runs.
- Each key has ``API_RATE_LIMIT_PER_MINUTE`` requests a minute (counted in Redis):
  every answer carries ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset``, and one over
  the limit is a 429 problem with ``Retry-After``.
- A POST with ``Idempotency-Key`` runs once: the same key and body within 24 hours gets
  the first answer again (``Idempotent-Replayed: true``), another body a 422.
- Without a key, a signed-in session may read the schema and the docs; the data
  endpoints need a key (``WorkspaceKey``): 401 otherwise.
- ``WorkspaceKey``: any active key reads; writing needs scope ``write`` or ``admin``;
  views that set ``admin_only = True`` need ``admin``. Another workspace's object is a
  404, like an unknown one (views query inside the key's scope).
- ``problem_exception_handler`` turns every error (DRF's, Django's 404/403, and
  ``helpdesk.errors.ApplicationError``) into ``application/problem+json`` with
  ``type``, ``title``, ``status``, ``detail`` and, for input errors, ``errors``: one
  entry per problem naming its ``field``.
- ``KeysetPagination`` pages by the view's ``keyset`` ordering (unique thanks to its
  last key, the id): an opaque ``cursor`` in the ``next`` link, no offsets, no counts,
  so page 1,000 costs what page 1 costs and a row never shows twice or goes missing
  because rows were added in front of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

import redis
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.pagination import BasePagination
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.response import Response

from helpdesk import keyset
from helpdesk.coordination import redis_client, redis_key
from helpdesk.errors import ApplicationError
from helpdesk.models import ApiKey, IdempotencyRecord
from helpdesk.selectors import api_key_resolve
from helpdesk.services import api_key_mark_used
from helpdesk.tenancy import tenant_scope

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
IDEMPOTENCY_WINDOW = timedelta(hours=24)
PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:helpdesk:problem:"


def _bearer(request) -> str | None:
    """The bearer credential of the request; None when it sends no bearer at all."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


class ApiKeyMiddleware:
    """Resolves the API key of ``/api/`` requests and runs them in its tenant's scope,
    within the key's rate limit and with ``Idempotency-Key`` honoured on POST."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.api_key = None
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        presented = _bearer(request)
        key = api_key_resolve(presented=presented) if presented else None
        if key is None:
            return self.get_response(request)
        limit = rate_limit_take(key)
        if limit is not None and limit.remaining < 0:
            response = _problem_response(
                429, f"More than {limit.limit} requests in a minute with this key; try "
                     f"again in {limit.reset} s.", code="rate_limited")
            response["Retry-After"] = str(limit.reset)
            return limit.stamp(response)
        api_key_mark_used(key=key)
        request.api_key = key
        request.tenant = key.tenant
        with tenant_scope(key.tenant):
            response = _idempotent(request, key, self.get_response)
        return limit.stamp(response) if limit is not None else response


# ------------------------------------------------------------------ rate limits


@dataclass(frozen=True)
class RateLimit:
    limit: int
    remaining: int  # negative: over the limit
    reset: int  # seconds until the window ends

    def stamp(self, response):
        """The ``RateLimit-*`` headers (draft-ietf-httpapi-ratelimit-headers)."""
        response["RateLimit-Limit"] = str(self.limit)
        response["RateLimit-Remaining"] = str(max(self.remaining, 0))
        response["RateLimit-Reset"] = str(self.reset)
        return response


def rate_limit_take(key: ApiKey) -> RateLimit | None:
    """Count one request of ``key`` in the current minute (one Redis round trip). None
    when Redis cannot be asked: the API stays up without limits rather than down."""
    limit = int(settings.API_RATE_LIMIT_PER_MINUTE)
    now = time.time()
    window = int(now // 60)
    name = redis_key("api-rate", key.pk, window)
    try:
        pipe = redis_client().pipeline()
        pipe.incr(name)
        pipe.expire(name, 120)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:
        logger.warning("api.rate_limit_unavailable key=%s error=%s", key.prefix,
                       type(exc).__name__)
        return None
    return RateLimit(limit=limit, remaining=limit - count,
                     reset=max(1, int((window + 1) * 60 - now)))


# ------------------------------------------------------------------ idempotency


def _idempotent(request, key: ApiKey, get_response):
    """POST with ``Idempotency-Key``: the first successful answer (2xx/3xx) is stored in
    the transaction of the request's own changes and replayed to the same key and body
    for ``IDEMPOTENCY_WINDOW``; the same key with another body is a 422. A concurrent
    duplicate waits for the first on the unique index, then gets its answer. A request
    that was refused or failed (4xx, 5xx) leaves nothing: sending it again runs it."""
    token = request.headers.get("Idempotency-Key")
    if request.method != "POST" or token is None:
        return get_response(request)
    token = token.strip()
    if not 1 <= len(token) <= 255:
        return _problem_response(400, "Idempotency-Key must be 1 to 255 characters.",
                                 code="invalid_idempotency_key",
                                 errors=[{"field": "Idempotency-Key", "code": "invalid",
                                          "detail": "1 to 255 characters."}])
    digest = hashlib.sha256(b"\n".join([request.method.encode(),
                                        request.get_full_path().encode(),
                                        request.body])).hexdigest()
    with transaction.atomic():
        record = _idempotency_claim(key, token, digest)
        if record.status is not None or record.request_hash != digest:
            if record.request_hash != digest:
                return _problem_response(
                    422, "This Idempotency-Key was used with another request body; use a "
                         "new key for a new request.", code="idempotency_key_reused")
            replay = HttpResponse(bytes(record.body), status=record.status,
                                  content_type=record.content_type)
            replay["Idempotent-Replayed"] = "true"
            return replay
        response = get_response(request)
        if transaction.get_rollback() or response.status_code >= 400:
            # Refused or failed: the services changed nothing; forget the key too, so
            # the corrected request can be sent under it.
            transaction.set_rollback(True)
            return response
        IdempotencyRecord.objects.filter(pk=record.pk).update(
            status=response.status_code, content_type=response.get("Content-Type", ""),
            body=response.content)
    return response


def _idempotency_claim(key: ApiKey, token: str, digest: str) -> IdempotencyRecord:
    """The record of (key, token), created now (status None) or the stored one; an
    expired one is replaced."""
    fresh = {"request_hash": digest, "created_at": timezone.now()}
    record, created = IdempotencyRecord.objects.get_or_create(
        tenant_id=key.tenant_id, api_key=key, key=token, defaults=fresh)
    if not created and record.created_at < timezone.now() - IDEMPOTENCY_WINDOW:
        IdempotencyRecord.objects.filter(pk=record.pk).update(status=None, body=b"",
                                                             content_type="", **fresh)
        record.refresh_from_db()
    return record


def _problem_response(status_code: int, detail: str, *, code: str,
                      errors: list[dict] | None = None) -> HttpResponse:
    """A problem document outside DRF (middleware answers)."""
    body = {"type": PROBLEM_TYPE_BASE + code, "title": _TITLES.get(status_code, "Error"),
            "status": status_code, "detail": detail}
    if errors:
        body["errors"] = errors
    return HttpResponse(json.dumps(body), status=status_code,
                        content_type=PROBLEM_CONTENT_TYPE)


class ApiClient:
    """The principal behind an API key: a member of the key's workspace (agent role;
    admin role for an ``admin`` key). ``user`` is the member who created the key, the
    author of what the key writes."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, key: ApiKey):
        self.key = key
        self.tenant = key.tenant
        self.user = key.created_by
        self.pk = None

    def __str__(self) -> str:
        return f"API key {self.key.prefix}"


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        key = getattr(request._request, "api_key", None)
        if key is not None:
            return ApiClient(key), key
        if _bearer(request._request) is not None:
            raise exceptions.AuthenticationFailed(
                "The API key is not valid: unknown, malformed or revoked.")
        return None

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class WorkspaceKey(BasePermission):
    """Data endpoints: an API key of the workspace, with the scope the method needs."""

    message = "This endpoint needs an API key (Authorization: Bearer hd_...)."

    def has_permission(self, request, view) -> bool:
        key = request.auth if isinstance(request.auth, ApiKey) else None
        if key is None:
            if request.user and request.user.is_authenticated:
                raise exceptions.NotAuthenticated(self.message)
            return False
        if getattr(view, "admin_only", False) and not key.is_admin:
            raise exceptions.PermissionDenied("This endpoint needs a key with admin scope.")
        if request.method not in SAFE_METHODS and not key.can_write:
            raise exceptions.PermissionDenied("This key is read-only.")
        return True


# ------------------------------------------------------------------------ problems


def _field_errors(detail, prefix: str = "") -> list[dict]:
    """DRF's nested validation detail as a flat list of {field, code, detail}."""
    if isinstance(detail, dict):
        found = []
        for name, value in detail.items():
            field = name if name != "non_field_errors" else ""
            found += _field_errors(value, f"{prefix}.{field}" if prefix and field
                                   else prefix or field)
        return found
    if isinstance(detail, list):
        found = []
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                found += _field_errors(value, f"{prefix}[{index}]")
            else:
                found += _field_errors(value, prefix)
        return found
    return [{"field": prefix or None, "code": getattr(detail, "code", "invalid"),
             "detail": str(detail)}]


def problem(status_code: int, detail: str, *, code: str = "", title: str = "",
            errors: list[dict] | None = None, headers: dict | None = None) -> Response:
    body = {"type": PROBLEM_TYPE_BASE + code if code else "about:blank",
            "title": title or _TITLES.get(status_code, "Error"),
            "status": status_code, "detail": detail}
    if errors:
        body["errors"] = errors
    return Response(body, status=status_code, headers=headers,
                    content_type=PROBLEM_CONTENT_TYPE)


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict",
           412: "Precondition Failed", 413: "Content Too Large",
           428: "Precondition Required",
           415: "Unsupported Media Type", 422: "Unprocessable Content",
           429: "Too Many Requests"}


def problem_exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every error as a problem document (see the module)."""
    # Imported here: rest_framework.views reads the authentication classes of
    # REST_FRAMEWORK at import, and this module is one of them.
    from rest_framework.views import set_rollback

    if isinstance(exc, ApplicationError):
        set_rollback()
        errors = [{"field": exc.field, "code": exc.code, "detail": exc.message}]
        return problem(exc.status, exc.message, code=exc.code, errors=errors)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django's 500 handling (logged with its traceback)
    set_rollback()
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None) is not None:
        headers["Retry-After"] = str(int(exc.wait))
    if isinstance(exc, exceptions.ValidationError):
        errors = _field_errors(exc.detail)
        named = ", ".join(sorted({e["field"] for e in errors if e["field"]}))
        detail = f"Invalid input: {named}." if named else errors[0]["detail"]
        return problem(exc.status_code, detail, code="invalid_input", errors=errors,
                       headers=headers)
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return problem(exc.status_code, str(detail), code=exc.default_code, headers=headers)


# ---------------------------------------------------------------------- pagination


class KeysetPagination(BasePagination):
    """Cursor pagination on the view's ``keyset`` (e.g. ``("-updated_at", "-id")``, the
    last key unique). ``page_size`` 1..200 (default 50)."""

    default_size = 50
    max_size = 200

    def paginate_queryset(self, queryset: QuerySet, request, view=None):
        size = self._size(request)
        try:
            page = keyset.keyset_page(queryset, view.keyset, size=size,
                                      after_cursor=request.query_params.get("cursor"))
        except keyset.InvalidCursor:
            raise exceptions.ValidationError(
                {"cursor": ["Not a cursor this API gave out."]}) from None
        self.request = request
        self.next_cursor = page.next_cursor
        return page.rows

    def get_paginated_response(self, data):
        return Response({"results": data, "next": self._next_link()})

    def get_paginated_response_schema(self, schema):
        return {"type": "object", "required": ["results", "next"], "properties": {
            "results": schema,
            "next": {"type": ["string", "null"], "format": "uri",
                     "description": "The next page, or null on the last one."},
        }}

    def get_schema_operation_parameters(self, view):
        return [
            {"name": "cursor", "in": "query", "required": False,
             "schema": {"type": "string"},
             "description": "Opaque position from a previous page's `next` link."},
            {"name": "page_size", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": self.max_size,
                        "default": self.default_size}},
        ]

    # -- internals -------------------------------------------------------------------
    def _size(self, request) -> int:
        raw = request.query_params.get("page_size")
        if raw is None:
            return self.default_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_size:
            raise exceptions.ValidationError(
                {"page_size": [f"A whole number from 1 to {self.max_size}."]})
        return size

    def _next_link(self) -> str | None:
        if self.next_cursor is None:
            return None
        params = self.request.query_params.copy()
        params["cursor"] = self.next_cursor
        return self.request.build_absolute_uri(
            self.request.path + "?" + urlencode(sorted(params.items())))


__all__ = [
    "ApiClient",
    "ApiKeyAuthentication",
    "ApiKeyMiddleware",
    "KeysetPagination",
    "WorkspaceKey",
    "problem",
    "problem_exception_handler",
]


@csrf_exempt  # API clients send no CSRF token; the answer is a 404 whatever the method
def api_not_found(request, *args, **kwargs):
    """Any ``/api/`` URL that names no endpoint: a 404 problem document (never the
    workspace router, which would take ``api`` for a slug)."""
    response = _problem_response(404, "No such API endpoint. The API lives under /api/v1/ "
                                      "(schema: /api/v1/schema/, docs: /api/v1/docs/).",
                                 code="not_found")
    return response

