"""Microsoft Graph v1.0: for now only ``GET /v1.0/me``, the signed-in user (``mail``,
``userPrincipalName``, ``id``), which sign-in needs to learn the mailbox's address. Its
access tokens are the identity side's (``access_tokens`` with ``"provider": "microsoft"``):
missing, unknown, expired or revoked -> 401 ``InvalidAuthenticationToken``; without
``User.Read`` (or a Mail permission) -> 403 ``ErrorAccessDenied``."""

from __future__ import annotations

import datetime as dt
import time
import uuid

from ..http import Part, Request, Response, base_url, route

PROFILE = {"User.Read", "Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic", "Mail.Send"}


def graph_error(status: int, code: str, message: str, headers=None) -> Response:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    request_id = str(uuid.uuid4())
    return Response(status, {"error": {"code": code, "message": message, "innerError": {
        "date": now, "request-id": request_id, "client-request-id": request_id}}},
        headers=[("request-id", request_id), *(headers or [])])


class GraphAPI(Part):
    def routes(self) -> list:
        return [("GET", route(r"/v1\.0/me"), self.me)]

    def me(self, request: Request) -> Response:
        header = request.header("Authorization")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        state = self.store.read()
        record = state["access_tokens"].get(token) if token else None
        if record is None or record.get("provider") != "microsoft" or record.get("revoked") \
                or record["expires"] < time.time():
            return graph_error(401, "InvalidAuthenticationToken",
                               "Access token has expired or is not yet valid.",
                               [("WWW-Authenticate", 'Bearer error="invalid_token"')])
        if not PROFILE & set(record.get("scopes") or []):
            return graph_error(403, "ErrorAccessDenied",
                               "Access is denied. Check credentials and try again.")
        box = state["mailboxes"].get(record["mailbox"])
        if box is None:
            return graph_error(404, "ResourceNotFound", "Resource could not be discovered.")
        local = box["email"].split("@")[0]
        name = str(box.get("display_name") or local.replace(".", " ").title())
        return Response(200, {
            "@odata.context": base_url(request) + "/v1.0/$metadata#users/$entity",
            "businessPhones": [], "displayName": name, "givenName": name.split(" ")[0],
            "jobTitle": None, "mail": box.get("mail", box["email"]), "mobilePhone": None,
            "officeLocation": None, "preferredLanguage": "en-US", "surname": None,
            "userPrincipalName": str(box.get("upn") or box["email"]), "id": box["oid"]})


def routes(app) -> list:
    return GraphAPI(app).routes()
