# Production-like image for web, worker and beat (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    HELPDESK_VAR_DIR=/app/var

WORKDIR /app
RUN useradd --create-home --uid 1000 helpdesk
COPY pyproject.toml README.md ./
COPY helpdesk ./helpdesk
COPY channels_email ./channels_email
COPY tickets ./tickets
COPY contacts ./contacts
COPY routing ./routing
RUN pip install .
COPY . .
# collectstatic needs settings but no database or secrets of the real deployment.
RUN DJANGO_ENV=prod SECRET_KEY=build-only-$(python -c 'print("x"*50)') FERNET_KEYS=build \
    ALLOWED_HOSTS=build DATABASE_URL=postgres://build@localhost/build REDIS_URL=redis://localhost \
    python manage.py collectstatic --noinput \
 && mkdir -p /app/var/media /app/var/run && chown -R helpdesk:helpdesk /app/var
USER helpdesk
EXPOSE 8000
CMD ["gunicorn", "helpdesk.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", \
     "--access-logfile", "-"]
