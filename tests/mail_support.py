"""The real Dovecot + submission server of ``sandbox/mailserver.py`` for tests: started
once per test session in a temporary folder (a fraction of a second), each test gets its
own fresh mailboxes (unique addresses), so no test sees another's mail. The users are
created before Dovecot starts (a user added later takes Dovecot a second to notice)."""

from __future__ import annotations

import itertools

import pytest

from sandbox.mailserver import MailServer

POOL = 80
# The provider contract's fixed mailboxes (tests/channels_email/test_provider_contract.py).
FIXED = {"support@acme.test": "contract-password",
         "maria@customer.example": "customer-password"}
_counter = itertools.count(1)


def _support(n: int) -> tuple[str, str]:
    return f"support{n}@acme.test", f"pw-support-{n}"


def _customer(n: int) -> tuple[str, str]:
    return f"maria{n}@customer.example", f"pw-customer-{n}"


@pytest.fixture(scope="session")
def mail_server():
    server = MailServer()
    for n in range(1, POOL + 1):
        server.add_user(*_support(n))
        server.add_user(*_customer(n))
    for address, password in FIXED.items():
        server.add_user(address, password)
    server.start()
    yield server
    server.stop()


class Mailboxes:
    """Fresh addresses on the shared server for one test: ``support`` (the helpdesk's
    mailbox) and ``customer`` (a customer's, who receives our replies)."""

    def __init__(self, server: MailServer):
        n = next(_counter)
        self.server = server
        self.support, self.support_password = _support(n)
        self.customer, customer_password = _customer(n)
        server.add_user(self.support, self.support_password)  # beyond the pool: waits
        server.add_user(self.customer, customer_password)
        server.save_sent = False
        server.data_faults.clear()


@pytest.fixture
def mailboxes(mail_server):
    return Mailboxes(mail_server)
