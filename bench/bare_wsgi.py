"""WSGI entry point of the bare view: the project's settings with ROOT_URLCONF replaced
by bench.bare_urls (``gunicorn bench.bare_wsgi:application`` from the repository root)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

settings.ROOT_URLCONF = "bench.bare_urls"
application = get_wsgi_application()
