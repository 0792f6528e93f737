"""The real Dovecot + submission server of ``sandbox/mailserver.py`` for tests: started
once per test session in a temporary folder (a fraction of a second), each test gets its
own fresh mailboxes (unique addresses), so no test sees another's mail."""

from __future__ import annotations

import itertools

import pytest

from sandbox.mailserver import MailServer

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def mail_server():
    server = MailServer()
    server.start()
    yield server
    server.stop()


class Mailboxes:
    """Fresh addresses on the shared server for one test: ``support`` (the helpdesk's
    mailbox) and ``customer`` (a customer's, who receives our replies)."""

    def __init__(self, server: MailServer):
        n = next(_counter)
        self.server = server
        self.support = f"support{n}@acme.test"
        self.support_password = f"pw-support-{n}"
        self.customer = f"maria{n}@customer.example"
        server.add_user(self.support, self.support_password)
        server.add_user(self.customer, f"pw-customer-{n}")
        server.save_sent = False
        server.data_faults.clear()


@pytest.fixture
def mailboxes(mail_server):
    return Mailboxes(mail_server)
