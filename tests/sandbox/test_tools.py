"""The command line and the HTML delivery page share the server's state."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import requests

from tests.sandbox_support import ROOT


def run_cli(sandbox_var, *args) -> str:
    env = {**os.environ, "HELPDESK_VAR_DIR": str(sandbox_var)}
    done = subprocess.run([sys.executable, "-m", "sandbox", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def test_cli_deliver_and_fault(sandbox, sandbox_var, tmp_path):
    attach = tmp_path / "notes.txt"
    attach.write_text("attached")
    out = json.loads(run_cli(sandbox_var, "deliver", "--to", "cli@acme.test", "--from",
                             "c@example.net", "--subject", "From the CLI", "--body", "hello",
                             "--attach", str(attach)))
    messages = requests.get(sandbox + "/_sandbox/messages?mailbox=cli@acme.test",
                            timeout=5).json()["messages"]
    assert [m["id"] for m in messages] == [out["id"]]
    assert messages[0]["subject"] == "From the CLI"
    eml = tmp_path / "m.eml"
    eml.write_bytes(b"From: x@example.net\r\nTo: cli@acme.test\r\nSubject: eml\r\n"
                    b"Message-ID: <eml-1@example.net>\r\n\r\nbody\r\n")
    out = json.loads(run_cli(sandbox_var, "deliver", "--to", "cli@acme.test", "--eml", str(eml)))
    assert out["messageId"] == "<eml-1@example.net>"
    run_cli(sandbox_var, "fault", "add", "server_error", "--count", "2")
    faults = requests.get(sandbox + "/_sandbox/faults", timeout=5).json()["faults"]
    assert faults[0]["kind"] == "server_error" and faults[0]["count"] == 2
    run_cli(sandbox_var, "fault", "clear")
    assert requests.get(sandbox + "/_sandbox/faults", timeout=5).json()["faults"] == []


def test_html_page_delivers_with_attachment_and_eml(sandbox):
    requests.post(sandbox + "/_sandbox/mailboxes", json={"email": "web@acme.test"}, timeout=5)
    page = requests.get(sandbox + "/_sandbox/", timeout=5)
    assert page.status_code == 200 and "web@acme.test" in page.text
    response = requests.post(sandbox + "/_sandbox/deliver", allow_redirects=False, timeout=5,
                             data={"to": "web@acme.test", "from": "c@example.net",
                                   "subject": "Form", "body": "typed"},
                             files={"attachment": ("x.pdf", b"%PDF", "application/pdf")})
    assert response.status_code == 302
    eml = b"From: y@example.net\r\nTo: web@acme.test\r\nSubject: Uploaded\r\n\r\nhi\r\n"
    requests.post(sandbox + "/_sandbox/deliver", timeout=5, data={"to": "web@acme.test"},
                  files={"eml": ("m.eml", eml, "message/rfc822")}).raise_for_status()
    messages = requests.get(sandbox + "/_sandbox/messages?mailbox=web@acme.test",
                            timeout=5).json()["messages"]
    assert [m["subject"] for m in messages] == ["Form", "Uploaded"]
    assert b"x.pdf" in base64.b64decode(messages[0]["raw"])


def test_page_and_cli_create_microsoft_mailboxes_and_deliver_into_them(sandbox, sandbox_var):
    """The page's New mailbox form with Kind "Microsoft 365 (fabrikam)" (as a browser
    posts it), the command line's --microsoft, then the page's Deliver into one."""
    made = requests.post(sandbox + "/_sandbox/mailboxes", allow_redirects=False, timeout=5,
                         data={"email": "desk@fabrikam.test", "provider": "microsoft:fabrikam"})
    assert made.status_code == 302
    out = json.loads(run_cli(sandbox_var, "mailbox", "cli@contoso.test", "--microsoft",
                             "contoso"))
    assert out["provider"] == "microsoft"
    boxes = {b["email"]: b for b in requests.get(sandbox + "/_sandbox/mailboxes",
                                                 timeout=5).json()["mailboxes"]}
    assert (boxes["desk@fabrikam.test"]["provider"], boxes["desk@fabrikam.test"]["tenant"]) \
        == ("microsoft", "fabrikam")
    assert boxes["cli@contoso.test"]["tenant"] == "contoso"
    assert boxes["desk@fabrikam.test"]["oid"] != boxes["cli@contoso.test"]["oid"]
    page = requests.get(sandbox + "/_sandbox/", timeout=5).text
    # One Kind list names the tenant; no tenant field beside a Gmail choice.
    assert "<option value='microsoft:fabrikam'>Microsoft 365 (fabrikam)</option>" in page
    assert "name='tenant'" not in page
    delivered = requests.post(sandbox + "/_sandbox/deliver", allow_redirects=False, timeout=5,
                              data={"to": "desk@fabrikam.test", "from": "c@example.net",
                                    "subject": "Into Exchange", "body": "hello"})
    assert delivered.status_code == 302
    messages = requests.get(sandbox + "/_sandbox/messages?mailbox=desk@fabrikam.test",
                            timeout=5).json()["messages"]
    assert [m["subject"] for m in messages] == ["Into Exchange"]
    refused = requests.post(sandbox + "/_sandbox/mailboxes", timeout=5, json={
        "email": "x@nowhere.test", "provider": "microsoft", "tenant": "nowhere"})
    assert refused.status_code == 400 and "unknown tenant" in refused.text
