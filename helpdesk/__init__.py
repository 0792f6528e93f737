"""Project package and core app: settings, urls, Celery app, tenancy, users."""

from .celery import app as celery_app

__all__ = ["celery_app"]
