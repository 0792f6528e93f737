"""One settings module, configured from the environment (django-environ).

DJANGO_ENV selects the profile:
- ``dev`` (default): DEBUG on, console email, secrets generated once into ./var/.
- ``test`` (default under pytest): like dev with DEBUG off and fast password hashing.
- ``prod``: every secret must come from the environment; refuses to start with a missing
  or default secret, or with DEBUG on.
When DATABASE_URL / REDIS_URL are unset outside prod, helpdesk.embedded starts (or
reuses) a PostgreSQL and a Redis of the project's own under ./var/.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from datetime import timedelta
from pathlib import Path

import environ
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("HELPDESK_VAR_DIR", BASE_DIR / "var"))

env = environ.Env()
DJANGO_ENV = env.str("DJANGO_ENV", default="test" if "pytest" in sys.modules else "dev")
if DJANGO_ENV not in {"dev", "test", "prod"}:
    raise ImproperlyConfigured(f"DJANGO_ENV must be dev, test or prod, not {DJANGO_ENV!r}")
IS_PROD = DJANGO_ENV == "prod"
TESTING = DJANGO_ENV == "test"

INSECURE_SECRET_PREFIX = "django-insecure"


def _dev_secrets() -> dict[str, str]:
    """Secrets generated once per checkout into ./var/secrets.json (dev and test only)."""
    path = VAR_DIR / "secrets.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    if not data.get("SECRET_KEY"):
        data["SECRET_KEY"] = secrets.token_urlsafe(50)
        changed = True
    if not data.get("FERNET_KEYS"):
        data["FERNET_KEYS"] = Fernet.generate_key().decode()
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
    return data


_generated = {} if IS_PROD else _dev_secrets()

SECRET_KEY = env.str("SECRET_KEY", default=_generated.get("SECRET_KEY", ""))
# Comma-separated Fernet keys; the first encrypts, all decrypt (rotation).
FERNET_KEYS = env.list("FERNET_KEYS", default=[_generated.get("FERNET_KEYS", "")])
FERNET_KEYS = [k for k in FERNET_KEYS if k]
DEBUG = env.bool("DEBUG", default=DJANGO_ENV == "dev")
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://localhost:8000").rstrip("/")
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[] if IS_PROD else ["localhost", "127.0.0.1", "[::1]", "testserver"]
)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[PUBLIC_BASE_URL])

if IS_PROD:
    problems = []
    if not SECRET_KEY or SECRET_KEY.startswith(INSECURE_SECRET_PREFIX) or len(SECRET_KEY) < 40:
        problems.append("SECRET_KEY is missing, default or shorter than 40 characters")
    if not FERNET_KEYS:
        problems.append("FERNET_KEYS is missing")
    if DEBUG:
        problems.append("DEBUG must be off")
    for name in ("DATABASE_URL", "REDIS_URL"):
        if not env.str(name, default=""):
            problems.append(f"{name} is missing")
    if not ALLOWED_HOSTS:
        problems.append("ALLOWED_HOSTS is missing")
    if problems:
        raise ImproperlyConfigured("Refusing to start in prod: " + "; ".join(problems))

# Database and Redis: from the environment, or the embedded servers outside prod.
_service_env = {k: env.str(k, default="") for k in ("DATABASE_URL", "REDIS_URL")}
if not IS_PROD and not all(_service_env.values()):
    from helpdesk import embedded

    _started = embedded.ensure_running(
        database=not _service_env["DATABASE_URL"], cache=not _service_env["REDIS_URL"]
    )
    _service_env.update({k: v for k, v in _started.items() if not _service_env[k]})

DATABASES = {"default": env.db_url_config(_service_env["DATABASE_URL"])}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60 if IS_PROD else 0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Server-side parameter binding with prepared statements: psycopg prepares a statement
# after it has run DB_PREPARE_THRESHOLD times on a connection, so PostgreSQL stops
# re-planning the statements a worker runs for every email (it halves the database's CPU
# per ingested email, see bench/ingest.py). Behind PgBouncer in transaction mode set
# DB_SERVER_SIDE_BINDING=false (or DB_PREPARE_THRESHOLD=-1: never prepare).
DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = env.bool(
    "DB_SERVER_SIDE_BINDING", default=True)
_prepare_threshold = env.int("DB_PREPARE_THRESHOLD", default=5)
DATABASES["default"]["OPTIONS"]["prepare_threshold"] = (
    _prepare_threshold if _prepare_threshold >= 0 else None)
# Lets two test runs share one server (e.g. TEST_DATABASE_NAME=test_helpdesk_2).
DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME", default="") or None}
REDIS_URL = _service_env["REDIS_URL"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "helpdesk",
    "contacts",
    "routing",
    "tickets",
    "channels_email",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "helpdesk.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "helpdesk.middleware.TenantMiddleware",
    "helpdesk.api.ApiKeyMiddleware",
    # Last, as django-axes asks: it turns lockouts into responses.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "helpdesk.urls"
WSGI_APPLICATION = "helpdesk.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "helpdesk.context_processors.tenancy",
            ],
        },
    },
]

AUTH_USER_MODEL = "helpdesk.User"
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if TESTING:
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Login throttling (django-axes): 5 failures for one username from one address lock that
# pair out for 15 minutes; a success resets the count.
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Our login form posts the address as "username" (Django's AuthenticationForm).
AXES_USERNAME_FORM_FIELD = "username"
AXES_LOCKOUT_TEMPLATE = "registration/locked.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False

SESSION_COOKIE_HTTPONLY = True
# Secure cookies in prod; SECURE_COOKIES=false only for trying prod on plain http locally.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=IS_PROD)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if IS_PROD:
    # HTTPS only: plain http is redirected (SECURE_SSL_REDIRECT=false, with SECURE_COOKIES,
    # only for trying prod on plain http locally). The container health check calls
    # http://127.0.0.1:8000/healthz from inside (docker-compose.yml), so it stays on http.
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    # HSTS, sent on https responses only: a year, subdomains included. Preload lists are
    # hard to leave again, so that stays an explicit opt-in.
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
    # X-Forwarded-Proto is believed only when a TLS-terminating proxy in front of every
    # request sets it (overwriting the client's): without one, any client could claim
    # https. Behind such a proxy without this, SECURE_SSL_REDIRECT would loop.
    if env.bool("TRUSTED_PROXY_SSL_HEADER", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
if not IS_PROD:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns about a missing root
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_URL = "media/"
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT)},
    },
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if IS_PROD
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        ),
    },
}
# Outside prod whitenoise serves straight from the source folders (no collectstatic needed).
WHITENOISE_USE_FINDERS = not IS_PROD
WHITENOISE_AUTOREFRESH = DEBUG

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # Test runs share a Redis with the developer's demo; keep their keys apart.
        # CACHE_KEY_PREFIX lets a test's worker subprocess share the test's keys.
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX",
                              default=f"test-{os.getpid()}" if TESTING else "hd"),
    }
}

if IS_PROD:
    vars().update(env.email_url("EMAIL_URL", default="smtp://localhost:25"))
else:
    EMAIL_BACKEND = env.str(
        "EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"
    )
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="helpdesk@localhost")

# REST API (helpdesk/api.py): API keys, problem documents, keyset pagination; the
# session only for the schema and docs pages.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "helpdesk.api.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["helpdesk.api.WorkspaceKey"],
    "DEFAULT_PAGINATION_CLASS": "helpdesk.api.KeysetPagination",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser",
                               "rest_framework.parsers.MultiPartParser"],
    "EXCEPTION_HANDLER": "helpdesk.api.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "helpdesk.api_schema.ApiSchema",
    "UNAUTHENTICATED_USER": None,
}
# Requests per minute per API key (429 with Retry-After beyond; RateLimit-* headers).
API_RATE_LIMIT_PER_MINUTE = env.int("API_RATE_LIMIT_PER_MINUTE", default=600)
SPECTACULAR_SETTINGS = {
    "TITLE": "Helpdesk API",
    "DESCRIPTION": "REST API v1. Authenticate with `Authorization: Bearer <API key>`; "
                   "workspace admins create keys on the API keys page.",
    "VERSION": "1",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "AUTHENTICATION_WHITELIST": ["helpdesk.api.ApiKeyAuthentication"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "helpdesk.api_schema.add_problem_responses"],
    "ENUM_NAME_OVERRIDES": {
        "TicketStatusEnum": "tickets.models.TicketStatus",
        "InboundStateEnum": "channels_email.models.InboundState",
        "ConnectionStatusEnum": "channels_email.models.ConnectionStatus",
        "DeliveryStatusEnum": "tickets.models.DeliveryStatus",
    },
}

# --- Celery ---------------------------------------------------------------------------
# The longest countdown/ETA any task schedules. Redis redelivers an unacknowledged task
# after visibility_timeout, so it must exceed every countdown, or a task waiting for its
# ETA would be handed to a second worker and run twice.
CELERY_MAX_COUNTDOWN_SECONDS = 6 * 3600
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_MAX_COUNTDOWN_SECONDS + 3600,
}
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 120
CELERY_TASK_TIME_LIMIT = 180
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "maintenance"
CELERY_TASK_QUEUES_NAMES = ("webhooks", "ingest", "outbound", "maintenance")
# Tasks are named "<queue>.<what>" (e.g. "ingest.process_inbound_email"); the queue is the
# first part of the name, so a new task cannot land in the wrong queue silently.
CELERY_TASK_ROUTES = {f"{q}.*": {"queue": q} for q in CELERY_TASK_QUEUES_NAMES}
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "reconcile-connections": {
        "task": "maintenance.reconcile_connections",
        "schedule": timedelta(minutes=5),
    },
    "redrive-pending-replies": {
        "task": "maintenance.redrive_pending_replies",
        "schedule": timedelta(minutes=10),
    },
    "renew-watches": {
        "task": "maintenance.renew_watches",
        "schedule": timedelta(hours=1),
    },
    "refresh-tokens": {
        "task": "maintenance.refresh_tokens",
        "schedule": timedelta(minutes=5),
    },
    "redrive-stuck-inbound": {
        "task": "maintenance.redrive_stuck_inbound",
        "schedule": timedelta(minutes=5),
    },
    "purge-expired-invitations": {
        "task": "maintenance.purge_expired_invitations",
        "schedule": timedelta(hours=6),
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "run" / "celerybeat-schedule")



def _client_error_without_traceback(record) -> bool:
    """A 4xx (Http404, PermissionDenied, SuspiciousOperation) is the client's doing: its
    line stays, its traceback goes. 5xx keep theirs."""
    if getattr(record, "status_code", 500) < 500:
        record.exc_info = record.exc_text = None
    return True


# One line per event: the root's console handler is the only one. Django's own "django"
# handlers (a console one while DEBUG, mail_admins) are removed, or every Django record
# would print twice. gunicorn's access log already has a line for every request, so
# django.request adds only 5xx (with traceback); security events (a CSRF failure, a bad
# Host) keep their one line, without a traceback.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"client_error_without_traceback": {
        "()": lambda: _client_error_without_traceback}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                             "filters": ["client_error_without_traceback"]}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "axes": {"level": "WARNING"},
        # aiosmtpd (the inbound SMTP server) logs every command with its addresses at
        # INFO; our own log lines name ids only.
        "mail.log": {"level": "WARNING"},
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.request": {"level": "ERROR"},
    },
}

TENANT_RESERVED_SLUGS = frozenset(
    {"admin", "api", "webhooks", "oauth", "static", "media", "accounts", "sandbox", "healthz"}
)
INVITATION_TTL = timedelta(days=7)
TICKETS_PER_PAGE = 25
TICKET_LIST_POLL_SECONDS = 15  # how often an open ticket list re-reads its table (htmx)
REPLY_ATTACHMENT_MAX_BYTES = env.int("REPLY_ATTACHMENT_MAX_BYTES", default=20 * 1024 * 1024)
# All of one reply's files: 25 MB, base64-encoded in the MIME, stays under Gmail's 35 MB.
REPLY_ATTACHMENTS_TOTAL_MAX_BYTES = env.int("REPLY_ATTACHMENTS_TOTAL_MAX_BYTES",
                                            default=25 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# --- Mail providers ----------------------------------------------------------------------
# Every provider URL is a setting. SANDBOX_URL (dev and test only) points them all at the
# local emulator in sandbox/; production never loads it.
SANDBOX_URL = "" if IS_PROD else env.str("SANDBOX_URL", default="").rstrip("/")
_google = SANDBOX_URL or ""
GOOGLE_CLIENT_ID = env.str("GOOGLE_CLIENT_ID", default="helpdesk-dev.apps.googleusercontent.com"
                           if SANDBOX_URL else "")
GOOGLE_CLIENT_SECRET = env.str("GOOGLE_CLIENT_SECRET", default="sandbox-secret"
                               if SANDBOX_URL else "")
GOOGLE_AUTH_URI = env.str("GOOGLE_AUTH_URI", default=(_google or "https://accounts.google.com")
                          + "/o/oauth2/v2/auth")
GOOGLE_TOKEN_URI = env.str("GOOGLE_TOKEN_URI", default=(_google + "/token") if _google
                           else "https://oauth2.googleapis.com/token")
GOOGLE_REVOKE_URI = env.str("GOOGLE_REVOKE_URI", default=(_google + "/revoke") if _google
                            else "https://oauth2.googleapis.com/revoke")
GOOGLE_CERTS_URL = env.str("GOOGLE_CERTS_URL", default=(_google or "https://www.googleapis.com")
                           + "/oauth2/v1/certs")
GMAIL_API_ENDPOINT = env.str("GMAIL_API_ENDPOINT", default=(_google + "/") if _google
                             else "https://gmail.googleapis.com/")
GMAIL_SCOPES = ("https://www.googleapis.com/auth/gmail.readonly",
                "https://www.googleapis.com/auth/gmail.send")
GMAIL_PUBSUB_TOPIC = env.str("GMAIL_PUBSUB_TOPIC", default="projects/helpdesk-dev/topics/gmail"
                             if SANDBOX_URL else "")
GMAIL_WATCH_LABEL = env.str("GMAIL_WATCH_LABEL", default="INBOX")
PUBSUB_AUDIENCE = env.str("PUBSUB_AUDIENCE", default=PUBLIC_BASE_URL.rstrip("/")
                          + "/webhooks/google/pubsub/")
PUBSUB_SERVICE_ACCOUNT = env.str(
    "PUBSUB_SERVICE_ACCOUNT",
    default="pubsub-push@helpdesk-dev.iam.gserviceaccount.com" if SANDBOX_URL else "")
PROVIDER_HTTP_TIMEOUT_SECONDS = env.float("PROVIDER_HTTP_TIMEOUT_SECONDS", default=20.0)

# Microsoft 365 (channels_email/providers/microsoft/). msal talks only https: with
# SANDBOX_URL, the sandbox's TLS listener (SANDBOX_HTTPS_URL) and the CA it generated
# (SANDBOX_CA_FILE) stand in for login.microsoftonline.com and graph.microsoft.com.
SANDBOX_HTTPS_URL = "" if IS_PROD else env.str("SANDBOX_HTTPS_URL", default="").rstrip("/")
SANDBOX_CA_FILE = "" if IS_PROD else env.str("SANDBOX_CA_FILE", default="")
_microsoft = SANDBOX_HTTPS_URL if SANDBOX_URL else ""
MS_CLIENT_ID = env.str("MS_CLIENT_ID", default="00000000-0000-4000-8000-0000000000de"
                       if _microsoft else "")
MS_CLIENT_SECRET = env.str("MS_CLIENT_SECRET", default="sandbox-secret" if _microsoft else "")
# organizations: work or school accounts of any tenant; common: personal Outlook.com
# accounts too; a tenant id or domain: that organization only.
MS_AUTHORITY = env.str("MS_AUTHORITY", default=(_microsoft + "/organizations") if _microsoft
                       else "https://login.microsoftonline.com/organizations").rstrip("/")
# Where the browser signs in (the connect redirect's target, for the CSP's form-action):
# the authority's origin, or the sandbox's plain-http pages.
MS_SIGN_IN_ORIGIN = env.str("MS_SIGN_IN_ORIGIN", default=SANDBOX_URL if _microsoft else "")
# A CA bundle (path) to trust instead of the system's for Microsoft's endpoints, used as
# ``verify`` of sessions that ignore REQUESTS_CA_BUNDLE and friends; "" = the system's.
MS_CA_BUNDLE = env.str("MS_CA_BUNDLE", default=SANDBOX_CA_FILE if _microsoft else "")
GRAPH_BASE_URL = env.str("GRAPH_BASE_URL", default=(_microsoft + "/v1.0") if _microsoft
                         else "https://graph.microsoft.com/v1.0").rstrip("/")
GRAPH_NOTIFICATION_URL = env.str("GRAPH_NOTIFICATION_URL",
                                 default=PUBLIC_BASE_URL + "/webhooks/microsoft/graph/")
GRAPH_LIFECYCLE_URL = env.str("GRAPH_LIFECYCLE_URL",
                              default=PUBLIC_BASE_URL + "/webhooks/microsoft/graph/lifecycle/")
# The lifetime asked for a Graph subscription (Outlook messages: at most 10,080 minutes);
# beat renews from the expiry Graph answered, whatever it granted.
GRAPH_SUBSCRIPTION_MINUTES = env.int("GRAPH_SUBSCRIPTION_MINUTES", default=10080 - 60)

# --- Outgoing webhooks (helpdesk.webhooks_out) ---------------------------------------------
# Delivery never reaches private, link-local or reserved addresses; loopback only outside
# prod (a receiver on the same machine in dev and tests). WEBHOOK_ALLOW_PRIVATE_ADDRESSES
# is for an on-premises install whose receivers live on the LAN.
WEBHOOK_ALLOW_LOOPBACK = env.bool("WEBHOOK_ALLOW_LOOPBACK", default=not IS_PROD)
WEBHOOK_ALLOW_PRIVATE_ADDRESSES = env.bool("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", default=False)
# Seconds to wait after each failed attempt (jittered +-10%): 8 attempts over ~27 hours.
WEBHOOK_RETRY_SCHEDULE_SECONDS = [int(s) for s in env.list(
    "WEBHOOK_RETRY_SCHEDULE_SECONDS", default=[5, 300, 1800, 7200, 18000, 36000, 36000])]
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=15.0)
# How long a rotated-out secret keeps signing alongside the new one.
WEBHOOK_SECRET_OVERLAP = timedelta(hours=env.int("WEBHOOK_SECRET_OVERLAP_HOURS", default=24))
# Delivered and failed events (and their attempts) are kept this long, then purged.
WEBHOOK_RETENTION_DAYS = env.int("WEBHOOK_RETENTION_DAYS", default=30)
CELERY_BEAT_SCHEDULE["purge-webhook-events"] = {
    "task": "maintenance.purge_webhook_events",
    "schedule": timedelta(hours=6),
}
CELERY_BEAT_SCHEDULE["redrive-webhooks"] = {
    "task": "maintenance.redrive_webhooks",
    "schedule": timedelta(minutes=1),
}

# The mail providers this server offers (channels_email/providers/), one class each; leave
# one out to turn it off. Connections of a provider left out stay, and are shown as such.
EMAIL_PROVIDERS = env.list("EMAIL_PROVIDERS", default=[
    "channels_email.providers.gmail.GmailProvider",
    "channels_email.providers.microsoft.MicrosoftProvider",
    "channels_email.providers.imap.ImapProvider",
    "channels_email.providers.forwarding.ForwardingProvider",
    "channels_email.providers.manual.ManualProvider",
])
# IMAP/SMTP mailboxes: certificates are checked against the system's trust store, plus
# this CA file when set (dev and tests: the sandbox mail server's own CA).
IMAP_EXTRA_CA_FILE = env.str("IMAP_EXTRA_CA_FILE", default="")
# The IMAP and SMTP servers an admin names are never link-local or reserved addresses
# (a cloud's metadata service), nor loopback or private ones in prod (another tenant's
# admin must not probe our network); an on-premises install whose mail server lives on
# the LAN sets IMAP_ALLOW_PRIVATE_ADDRESSES.
IMAP_ALLOW_LOOPBACK = env.bool("IMAP_ALLOW_LOOPBACK", default=not IS_PROD)
IMAP_ALLOW_PRIVATE_ADDRESSES = env.bool("IMAP_ALLOW_PRIVATE_ADDRESSES", default=not IS_PROD)
# Forwarding mailboxes (channels_email/providers/forwarding/): each gets a generated address
# on this domain, whose MX must point at the inbound SMTP server (manage.py inbound_smtp,
# listening on INBOUND_SMTP_HOST:INBOUND_SMTP_PORT; behind port 25 in production). The
# ".localhost" default is for dev and the demo: mail reaches it only from this machine,
# and prod does not offer forwarding until a real domain is set.
INBOUND_EMAIL_DOMAIN = env.str("INBOUND_EMAIL_DOMAIN", default="inbound.localhost").lower()
INBOUND_SMTP_HOST = env.str("INBOUND_SMTP_HOST", default="127.0.0.1")
INBOUND_SMTP_PORT = env.int("INBOUND_SMTP_PORT", default=2525)
# Larger messages are refused (SIZE in EHLO, 552 at MAIL FROM or after DATA); below the
# parser's own 50 MB limit so that whatever is accepted can be read.
INBOUND_SMTP_MAX_BYTES = env.int("INBOUND_SMTP_MAX_BYTES", default=40 * 1024 * 1024)
# STARTTLS for the forwarders that use it when offered (Gmail, Microsoft 365): a
# certificate for the MX host name and its key, both PEM files; unset, no TLS is offered.
INBOUND_SMTP_TLS_CERT_FILE = env.str("INBOUND_SMTP_TLS_CERT_FILE", default="")
INBOUND_SMTP_TLS_KEY_FILE = env.str("INBOUND_SMTP_TLS_KEY_FILE", default="")
