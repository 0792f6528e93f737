"""The sandbox's own control endpoints and page (/_sandbox/...): mailboxes, deliver,
reply as the customer, state, settings, faults, pushes, revoke, expiry switches."""

from __future__ import annotations

import base64
import html
import json
import time
import urllib.parse

from . import faults as faultlib
from . import gmail
from .delivery import customer_reply, deliver
from .google.errors import google_error
from .google.oauth import revoke_grant
from .http import BadRequest, Part, Request, Response, html_page, is_form, route
from .microsoft.graph import GraphPushWorker
from .microsoft.identity import ensure_microsoft_mailbox, tenants


class Control(Part):
    def routes(self) -> list:
        return [
            ("GET", route(r"/_sandbox/?"), self.home),
            ("GET", route(r"/_sandbox/mailboxes"), self.sb_mailboxes),
            ("POST", route(r"/_sandbox/mailboxes"), self.sb_create_mailbox),
            ("POST", route(r"/_sandbox/deliver"), self.sb_deliver),
            ("POST", route(r"/_sandbox/reply"), self.sb_reply),
            ("GET", route(r"/_sandbox/sent"), self.sb_sent),
            ("GET", route(r"/_sandbox/messages"), self.sb_messages),
            ("GET", route(r"/_sandbox/state"), self.sb_state),
            ("POST", route(r"/_sandbox/reset"), self.sb_reset),
            ("GET", route(r"/_sandbox/settings"), lambda r: Response(200, self.store.settings())),
            ("POST", route(r"/_sandbox/settings"), self.sb_settings),
            ("GET", route(r"/_sandbox/faults"), self.sb_faults_list),
            ("POST", route(r"/_sandbox/faults"), self.sb_faults_add),
            ("DELETE", route(r"/_sandbox/faults"), self.sb_faults_clear),
            ("POST", route(r"/_sandbox/faults/clear"), self.sb_faults_clear),
            ("GET", route(r"/_sandbox/pushes"), self.sb_pushes),
            ("POST", route(r"/_sandbox/revoke-all"), self.sb_revoke_all),
            ("POST", route(r"/_sandbox/expire-access-tokens"), self.sb_expire_access_tokens),
            ("POST", route(r"/_sandbox/expire-history"), self.sb_expire_history),
            ("POST", route(r"/_sandbox/clients"), self.sb_clients),
            ("GET", route(r"/_sandbox/requests"), self.sb_requests),
        ]

    def _delivered_notice(self, state: dict, request: Request) -> str:
        """The confirmation of the Deliver (or reply) that redirected here, read back from
        the mailbox: what landed, and whether a push tells the helpdesk."""
        box = state["mailboxes"].get((request.arg("mailbox") or "").lower())
        rec = box["messages"].get(request.arg("delivered") or "") if box else None
        if rec is None:
            return ""
        parsed = gmail.parse(self.store.get_raw(rec["blob"]))
        answering = str(parsed.get("In-Reply-To", "") or "")
        what = (f"a reply to {html.escape(answering)}" if answering else "a new email")
        push = ("The helpdesk watches this mailbox: a push tells it now."
                if _watched(state, box) else
                "Nobody watches this mailbox, so no push is sent: connect it in the helpdesk "
                "first (it is not fetched until then).")
        return (f"<div class='card' id='delivered'><p><strong>Delivered</strong> {what} "
                f"into the INBOX of {html.escape(box['email'])}: "
                f"&ldquo;{html.escape(rec['subject'])}&rdquo; from "
                f"{html.escape(rec['from'])} (id {html.escape(rec['id'])}).</p>"
                f"<p>{push}</p></div>")

    def home(self, request: Request) -> Response:
        state = self.store.read()
        notice = self._delivered_notice(state, request)
        rows = "".join(
            f"<tr><td>{html.escape(b['email'])}</td><td>{html.escape(_kind(b))}</td>"
            f"<td>{len(b['messages'])}</td>"
            f"<td>{b['history_id']}</td><td>{'yes' if _watched(state, b) else 'no'}</td><td>"
            "<form method='post' action='/_sandbox/revoke-all'>"
            f"<input type='hidden' name='email' value='{html.escape(b['email'], True)}'>"
            "<button>Revoke app access</button></form></td></tr>"
            for b in state["mailboxes"].values()
        ) or "<tr><td colspan=6>No mailboxes yet.</td></tr>"
        # One Kind list: Gmail, or Microsoft 365 in one of the sandbox's tenants.
        kind_options = "<option value='google'>Gmail</option>" + "".join(
            f"<option value='microsoft:{html.escape(t, True)}'>Microsoft 365 "
            f"({html.escape(t)})</option>" for t in tenants(self.store.settings()))
        # A suggested account (the demo's mailbox) is the one a newcomer delivers to.
        suggested = {a.strip().lower() for a in self.store.settings().get("suggested_accounts")
                     or []}
        boxes = sorted(state["mailboxes"], key=lambda b: (b not in suggested, b))
        # After a delivery the list keeps the mailbox just delivered to.
        chosen = (request.arg("mailbox") or "").lower()
        options = "".join(f"<option{' selected' if b == chosen else ''}>{html.escape(b)}"
                          "</option>" for b in boxes)
        faults = "".join(f"<li>{html.escape(json.dumps(f))}</li>" for f in state["faults"]) \
            or "<li>none</li>"
        # Newest first: the reply just sent is the one a newcomer wants to answer.
        sent = sorted(((b, m) for b in state["mailboxes"].values()
                       for m in b["messages"].values() if "SENT" in m["labelIds"]),
                      key=lambda bm: bm[1]["internalDate"], reverse=True)[:20]
        sent_rows = "".join(
            f"<tr><td>{html.escape(b['email'])}</td><td>{html.escape(m['to'])}</td>"
            f"<td>{html.escape(m['subject'])}</td><td>{m['id']}</td><td>"
            "<form method='post' action='/_sandbox/reply'>"
            f"<input type='hidden' name='mailbox' value='{html.escape(b['email'], True)}'>"
            f"<input type='hidden' name='id' value='{html.escape(m['id'], True)}'>"
            "<input name='body' value='Thanks, that answers it.' size=24 "
            "aria-label='Reply text'><button>Reply as the customer</button></form></td></tr>"
            for b, m in sent
        ) or "<tr><td colspan=5>Nothing sent yet.</td></tr>"
        body = f"""<h1>Provider sandbox (Google and Microsoft)</h1>{notice}
<div class='card'><h2>Mailboxes</h2><table><tr><th>Address</th><th>Kind</th><th>Messages</th>
<th>historyId</th><th>Watched</th><th>Access</th></tr>{rows}</table>
<p>Revoke app access is the user removing the helpdesk's access at Google (or an admin
revoking the user's sessions at Microsoft): its tokens stop working at once (every call
401, every refresh <code>invalid_grant</code>).</p>
<form method='post' action='/_sandbox/mailboxes'><label>New mailbox
<input name='email' type='email' required></label>
<label>Kind <select name='provider'>{kind_options}</select></label>
<button>Create</button></form>
<p><small>Microsoft tenants: contoso lets its users consent to an app; fabrikam needs an
admin's approval ("Need admin approval").</small></p></div>
<div class='card'><h2>Deliver a customer email</h2>
<form method='post' action='/_sandbox/deliver' enctype='multipart/form-data'>
<label>To mailbox <select name='to'>{options}</select></label>
<label>From <input name='from' value='Customer &lt;customer@example.net&gt;' size=40></label>
<label>Subject <input name='subject' size=50></label>
<label>Body<br><textarea name='body' rows=6 cols=70></textarea></label>
<label>Attachment <input type='file' name='attachment'></label>
<label>…or a whole .eml file <input type='file' name='eml' accept='.eml,message/rfc822'>
</label><button class='primary'>Deliver</button></form></div>
<div class='card'><h2>Sent by the helpdesk</h2>
<p>Reply as the customer: the answer goes into the mailbox's INBOX the way Deliver does,
with In-Reply-To and References naming the sent message, so it threads into its ticket.</p>
<table><tr><th>Mailbox</th><th>To</th><th>Subject</th><th>id</th><th></th></tr>{sent_rows}
</table></div>
<div class='card'><h2>Active faults</h2><ul>{faults}</ul>
<p>Set them with <code>POST /_sandbox/faults</code> or
<code>python -m sandbox fault add KIND</code>.</p></div>"""
        return html_page("Google sandbox", body, brand="Google and Microsoft sandbox")

    def sb_mailboxes(self, request: Request) -> Response:
        state = self.store.read()
        return Response(200, {"mailboxes": [
            {"email": b["email"], "historyId": str(b["history_id"]),
             "messagesTotal": len(b["messages"]), "watch": b["watch"],
             "provider": b.get("provider", "google"),
             **({"tenant": b["tenant"], "tid": b["tid"], "oid": b["oid"]}
                if b.get("provider") == "microsoft" else {})}
            for b in state["mailboxes"].values()]})

    def sb_create_mailbox(self, request: Request) -> Response:
        """``{"email" (or "address"), "provider": "google" | "microsoft", "tenant"}``: a
        Microsoft mailbox belongs to a tenant of the settings' ``ms_tenants``."""
        data = request.json() if not is_form(request) else {
            k: request.field(k) for k in ("email", "provider", "tenant")}
        address = (data.get("email") or data.get("address") or "").strip().lower()
        if "@" not in address:
            return google_error(400, "email required", "invalidArgument")
        provider = (data.get("provider") or "google").strip().lower()
        tenant = (data.get("tenant") or "").strip().lower()
        if ":" in provider:  # the page's Kind list: "microsoft:<tenant>"
            provider, tenant = provider.split(":", 1)
        if provider not in ("google", "microsoft"):
            return google_error(400, "provider must be google or microsoft", "invalidArgument")
        if provider == "microsoft" and tenant and tenant not in tenants(self.store.settings()):
            return google_error(400, f"unknown tenant {tenant!r}: known are "
                                f"{', '.join(sorted(tenants(self.store.settings())))}",
                                "invalidArgument")
        with self.store.transaction() as state:
            existing = state["mailboxes"].get(address)
            if existing is not None and existing.get("provider", "google") != provider:
                return google_error(400, f"{address} is a {existing.get('provider', 'google')}"
                                    " mailbox already", "invalidArgument")
            box = ensure_microsoft_mailbox(state, address, tenant) \
                if provider == "microsoft" else gmail.ensure_mailbox(state, address)
            out = {"email": box["email"], "historyId": str(box["history_id"]),
                   "provider": provider}
            if provider == "microsoft":
                out.update(tenant=box["tenant"], tid=box["tid"], oid=box["oid"])
        if is_form(request):
            return Response(302, b"", "text/html", headers=[("Location", "/_sandbox/")])
        return Response(200, out)

    def sb_deliver(self, request: Request) -> Response:
        if is_form(request):
            eml = request.field("eml")
            attachment = request.field("attachment")
            spec = {"to": request.field("to"), "from": request.field("from"),
                    "subject": request.field("subject") or "", "body": request.field("body") or ""}
            if isinstance(eml, tuple) and eml[1]:
                spec["eml_bytes"] = eml[1]
            if isinstance(attachment, tuple) and attachment[1]:
                spec["attachments_raw"] = [attachment]
        else:
            spec = request.json()
        try:
            result = deliver(self.store, spec)
        except BadRequest as exc:
            return google_error(400, str(exc), "invalidArgument")
        self.worker.wake.set()
        if is_form(request):
            return self._delivered_redirect(result)
        return Response(200, result)

    @staticmethod
    def _delivered_redirect(result: dict) -> Response:
        """Back to the control page, which confirms the delivery it is named."""
        query = urllib.parse.urlencode({"delivered": result["id"],
                                        "mailbox": result["mailbox"]})
        return Response(302, b"", "text/html",
                        headers=[("Location", f"/_sandbox/?{query}#delivered")])

    def sb_reply(self, request: Request) -> Response:
        """The customer answers a message the helpdesk sent (form or JSON: ``mailbox``,
        ``id`` of the sent message, optional ``body``): delivered like Deliver does, with
        the sent message's Message-ID as In-Reply-To and at the end of References."""
        data = request.json() if not is_form(request) else {
            k: request.field(k) for k in ("mailbox", "id", "body")}
        try:
            result = customer_reply(self.store, (data.get("mailbox") or "").strip().lower(),
                                    data.get("id") or "", data.get("body") or "")
        except BadRequest as exc:
            return google_error(400, str(exc), "invalidArgument")
        except KeyError:
            return google_error(404, "Requested entity was not found.", "notFound")
        self.worker.wake.set()
        if is_form(request):
            return self._delivered_redirect(result)
        return Response(200, result)

    def _messages(self, request: Request, sent_only: bool) -> Response:
        state = self.store.read()
        wanted = (request.arg("mailbox") or "").lower()
        out = []
        for box in state["mailboxes"].values():
            if wanted and box["email"] != wanted:
                continue
            for gid in box["order"]:
                m = box["messages"][gid]
                if sent_only and "SENT" not in m["labelIds"]:
                    continue
                raw = self.store.get_raw(m["blob"])
                parsed = gmail.parse(raw)
                out.append({
                    "mailbox": box["email"], "id": m["id"], "threadId": m["threadId"],
                    "labelIds": m["labelIds"], "historyId": str(m["historyId"]),
                    "messageId": m["messageIdHeader"], "subject": m["subject"],
                    "from": m["from"], "to": m["to"],
                    "inReplyTo": str(parsed.get("In-Reply-To", "") or ""),
                    "references": str(parsed.get("References", "") or ""),
                    "raw": base64.b64encode(raw).decode("ascii"),
                })
        return Response(200, {"messages": out})

    def sb_sent(self, request: Request) -> Response:
        return self._messages(request, True)

    def sb_messages(self, request: Request) -> Response:
        return self._messages(request, False)

    def sb_state(self, request: Request) -> Response:
        state = self.store.read()
        for box in state["mailboxes"].values():
            box["messages"] = {k: {kk: vv for kk, vv in v.items() if kk != "blob"}
                               for k, v in box["messages"].items()}
        return Response(200, state)

    def sb_reset(self, request: Request) -> Response:
        data = request.json() if request.body else {}
        self.store.reset(settings=bool(data.get("settings")))
        with self.app.quota_lock:
            self.app.quota.clear()
        self.worker.pending.clear()
        self.worker.held.clear()
        return Response(200, {"reset": True})

    def sb_settings(self, request: Request) -> Response:
        return Response(200, self.store.update_settings(request.json()))

    def sb_clients(self, request: Request) -> Response:
        data = request.json()
        cid = data.get("client_id")
        if not cid:
            return google_error(400, "client_id required", "invalidArgument")
        self.store.update_settings({"clients": {cid: {
            "client_secret": data.get("client_secret"),
            "redirect_uris": data.get("redirect_uris", [])}}})
        return Response(200, self.store.settings()["clients"][cid])

    def sb_faults_list(self, request: Request) -> Response:
        return Response(200, {"faults": self.store.read()["faults"],
                              "kinds": sorted(faultlib.KINDS)})

    def sb_faults_add(self, request: Request) -> Response:
        data = request.json()
        specs = data if isinstance(data, list) else data.get("faults", [data])
        try:
            with self.store.transaction() as state:
                added = [faultlib.add_fault(state, spec) for spec in specs]
        except faultlib.FaultError as exc:
            return google_error(400, str(exc), "invalidArgument")
        return Response(200, {"faults": added})

    def sb_faults_clear(self, request: Request) -> Response:
        data = request.json() if request.body else {}
        with self.store.transaction() as state:
            removed = faultlib.clear_faults(state, data.get("id") or request.arg("id"),
                                            data.get("kind") or request.arg("kind"))
        return Response(200, {"cleared": removed})

    def sb_pushes(self, request: Request) -> Response:
        return Response(200, {"pushes": self.store.read()["pushes"]})

    def sb_revoke_all(self, request: Request) -> Response:
        form = is_form(request)
        address = ((request.field("email") if form else request.json().get("email"))
                   or "").strip().lower()
        with self.store.transaction() as state:
            clients = {r["client_id"] for r in state["refresh_tokens"].values()
                       if r["email"] == address}
            for cid in clients:
                revoke_grant(state, cid, address)
        if form:
            return Response(302, b"", "text/html", headers=[("Location", "/_sandbox/")])
        return Response(200, {"revoked_clients": sorted(clients)})

    def sb_expire_access_tokens(self, request: Request) -> Response:
        """Google ends a mailbox's access tokens before the expiry it announced (as it may:
        the client must treat a 401 as "refresh and retry"); refresh tokens stay valid."""
        address = (request.json().get("email") or "").lower()
        ended = 0
        with self.store.transaction() as state:
            for record in state["access_tokens"].values():
                if record["email"] == address and record["expires"] >= time.time():
                    record["expires"] = time.time() - 1
                    ended += 1
        return Response(200, {"expired": ended})

    def sb_expire_history(self, request: Request) -> Response:
        address = (request.json().get("email") or "").lower()
        with self.store.transaction() as state:
            box = state["mailboxes"].get(address)
            if box is None:
                return google_error(404, "no such mailbox", "notFound")
            gmail.expire_history(box)
        return Response(200, {"historyFloor": str(box["history_floor"])})

    def sb_requests(self, request: Request) -> Response:
        return Response(200, {"requests": list(self.app.requests_log)})


def _kind(box: dict) -> str:
    if box.get("provider") == "microsoft":
        return f"Microsoft 365 ({box.get('tenant', '')})"
    return "Gmail"


def _watched(state: dict, box: dict) -> bool:
    """Whether pushes go out for ``box``: an unexpired Gmail watch, or a live Graph
    subscription of the mailbox."""
    if box.get("provider") == "microsoft":
        return any(s.get("mailbox") == box["email"] and GraphPushWorker.alive(s)
                   for s in (state.get("graph") or {}).get("subscriptions", {}).values())
    watch = box.get("watch")
    return bool(watch and watch["expiration"] >= gmail.now_ms())
