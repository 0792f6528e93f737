# Two commands a newcomer needs: `make demo` runs the product, `make test` runs the tests.
# Both create/update the virtualenv first. Without DATABASE_URL / REDIS_URL they run on a
# PostgreSQL and a Redis of the project's own under ./var/ (helpdesk/embedded.py).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EMBEDDED := $(PY) -m helpdesk.embedded run --
PYTEST_ARGS ?=

.PHONY: install demo test lint compose-check browser mailserver services-stop clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "Python 3.11 is required (found %d.%d)" % sys.version_info[:2])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install mailserver
	$(EMBEDDED) $(PY) manage.py rundemo

test: install lint compose-check browser mailserver
	$(EMBEDDED) $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

# Browser tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (Debian package) for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; \
	fi
	@if ! command -v chromium >/dev/null 2>&1 && [ -n "$$CI" ]; then \
		echo "chromium is missing; CI must run the browser tests" >&2; exit 1; \
	fi

# IMAP mailboxes are tested (and demonstrated) against a real Dovecot that
# sandbox/mailserver.py starts unprivileged in a folder of its own.
mailserver:
	@if ! command -v dovecot >/dev/null 2>&1 || [ ! -x /usr/lib/dovecot/lmtp ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing dovecot-imapd and dovecot-lmtpd (Debian packages) for the IMAP tests"; \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-imapd dovecot-lmtpd) >/dev/null; \
		fi; \
	fi
	@if { ! command -v dovecot >/dev/null 2>&1 || [ ! -x /usr/lib/dovecot/lmtp ]; } && [ -n "$$CI" ]; then \
		echo "dovecot (dovecot-imapd, dovecot-lmtpd) is missing; CI must run the IMAP tests" >&2; exit 1; \
	fi

# docker-compose.yml is validated without an engine by Debian's docker-compose.
compose-check:
	@if ! command -v docker-compose >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing docker-compose (Debian package) to validate docker-compose.yml"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null; \
	fi
	@if command -v docker-compose >/dev/null 2>&1; then \
		docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml: valid"; \
	elif [ -n "$$CI" ]; then \
		echo "docker-compose is missing; CI must validate docker-compose.yml" >&2; exit 1; \
	else \
		echo "WARNING: docker-compose not found; docker-compose.yml was not validated" >&2; \
	fi

services-stop:
	$(PY) -m helpdesk.embedded stop

clean: services-stop
	rm -rf var/postgres var/redis var/run var/staticfiles
