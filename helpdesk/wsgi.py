"""WSGI entry point (``gunicorn helpdesk.wsgi:application``): Django's handler, with the
long-lived objects frozen out of the garbage collector's way once warm (gc_freeze)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "helpdesk.settings")
application = get_wsgi_application()

from helpdesk import gc_freeze  # noqa: E402 - after setup, as every app module

gc_freeze.install()
