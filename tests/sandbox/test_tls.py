"""The sandbox's https listener: the same app, a certificate for 127.0.0.1 signed by the
CA it generated, trusted only through ``verify=`` that CA."""

from __future__ import annotations

import pytest
import requests


def test_https_serves_the_same_app_with_its_own_ca(sandbox, sandbox_https_url, sandbox_ca_file):
    session = requests.Session()
    session.trust_env = False
    session.verify = sandbox_ca_file
    assert sandbox_https_url.startswith("https://127.0.0.1:")
    made = session.post(sandbox_https_url + "/_sandbox/mailboxes",
                        json={"email": "tls@acme.test"}, timeout=5)
    assert made.status_code == 200, made.text
    # The plain-http listener sees the mailbox created over https: one app, one store.
    boxes = requests.get(sandbox + "/_sandbox/mailboxes", timeout=5).json()["mailboxes"]
    assert "tls@acme.test" in {b["email"] for b in boxes}


def test_https_is_refused_without_the_ca(sandbox_https_url, sandbox_ca_file):
    session = requests.Session()
    session.trust_env = False  # the system's CAs only: the sandbox's is not among them
    with pytest.raises(requests.exceptions.SSLError):
        session.get(sandbox_https_url + "/_sandbox/mailboxes", timeout=5)
    # ...and a client that gave up mid-handshake did not stop the listener.
    session.verify = sandbox_ca_file
    assert session.get(sandbox_https_url + "/_sandbox/mailboxes", timeout=5).status_code == 200
