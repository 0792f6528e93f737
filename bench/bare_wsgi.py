"""WSGI entry point of the bare view: the project's settings with ROOT_URLCONF replaced
by bench.bare_urls (``gunicorn bench.bare_wsgi:application`` from the repository root),
and the same process set-up as helpdesk.wsgi (gc_freeze), so that the two gunicorns
differ only in what their view does."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")

from django.conf import settings  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

settings.ROOT_URLCONF = "bench.bare_urls"
application = get_wsgi_application()

from helpdesk import gc_freeze  # noqa: E402

gc_freeze.install()
