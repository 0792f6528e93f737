"""Shared HTTP pieces of the sandbox: Request, Response, routing helpers, multipart, pages."""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from email.parser import BytesParser
from email.policy import default as default_policy

STATUS_TEXT = {200: "OK", 204: "No Content", 302: "Found", 400: "Bad Request",
               401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
               405: "Method Not Allowed", 429: "Too Many Requests",
               500: "Internal Server Error", 502: "Bad Gateway",
               503: "Service Unavailable", 504: "Gateway Timeout"}


class Response:
    def __init__(self, status: int = 200, body: bytes | str | dict | list | None = b"",
                 content_type: str = "application/json; charset=UTF-8",
                 headers: list[tuple[str, str]] | None = None):
        if isinstance(body, dict | list):
            body = json.dumps(body, indent=2)
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.status = status
        self.body = body or b""
        self.headers = list(headers or [])
        if status != 204:
            self.headers.append(("Content-Type", content_type))

    def wsgi(self, start_response):
        reason = STATUS_TEXT.get(self.status, "Unknown")
        start_response(f"{self.status} {reason}",
                       self.headers + [("Content-Length", str(len(self.body)))])
        return [self.body]



def oauth_error(code: int, error: str, description: str) -> Response:
    return Response(code, {"error": error, "error_description": description})



def html_page(title: str, body: str, status: int = 200,
              brand: str = "Google sandbox") -> Response:
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:52rem;margin:2rem auto;color:#202124}}
.card{{border:1px solid #dadce0;border-radius:8px;padding:1.5rem;margin:1rem 0}}
button{{padding:.5rem 1.2rem;margin:.2rem;border-radius:4px;border:1px solid #1a73e8;
background:#fff;color:#1a73e8;cursor:pointer}} button.primary{{background:#1a73e8;color:#fff}}
table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #eee;padding:.3rem .6rem;
text-align:left}} label{{display:block;margin:.4rem 0}} .err{{color:#d93025}}</style></head>
<body><p><small>{html.escape(brand)} (local emulator)</small></p>{body}</body></html>"""
    return Response(status, page, "text/html; charset=utf-8")



class Request:
    def __init__(self, environ: dict):
        self.environ = environ
        self.method = environ["REQUEST_METHOD"].upper()
        self.path = environ.get("PATH_INFO", "") or "/"
        self.query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""),
                                           keep_blank_values=True)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.body = environ["wsgi.input"].read(length) if length else b""
        self.content_type = environ.get("CONTENT_TYPE", "")
        self._form: dict | None = None

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        return self.query.get(name, [])

    def header(self, name: str) -> str:
        return self.environ.get("HTTP_" + name.upper().replace("-", "_"), "")

    def json(self) -> dict:
        if not self.body:
            return {}
        return json.loads(self.body)

    @property
    def form(self) -> dict[str, list]:
        """Form fields (urlencoded or multipart); file fields are (filename, bytes, type)."""
        if self._form is None:
            if self.content_type.startswith("multipart/form-data"):
                self._form = {}
                for name, filename, ctype, data in split_multipart(self.content_type,
                                                                    self.body):
                    value = (filename, data, ctype) if filename is not None \
                        else data.decode("utf-8", "replace")
                    self._form.setdefault(name, []).append(value)
            else:
                self._form = urllib.parse.parse_qs(self.body.decode("utf-8", "replace"),
                                                   keep_blank_values=True)
        return self._form

    def field(self, name: str, default=None):
        values = self.form.get(name)
        return values[0] if values else default

    def param(self, name: str):
        """Query or form field (the OAuth endpoints accept either)."""
        return self.field(name) if self.field(name) is not None else self.arg(name)


def split_multipart(content_type: str, body: bytes):
    """Yield (name, filename|None, content type, exact bytes) of the parts of a multipart
    body: form-data from browsers (CRLF) or related uploads from google-api-python-client
    (its generator writes bare LF around the parts)."""
    header = BytesParser(policy=default_policy).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n", headersonly=True)
    boundary = header.get_param("boundary")
    if not boundary:
        return
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk[chunk.startswith(b"\n"):]
        ends = [i for i in (chunk.find(b"\r\n\r\n"), chunk.find(b"\n\n")) if i >= 0]
        if not ends:
            continue
        cut = min(ends)
        head = chunk[:cut]
        data = chunk[cut + (4 if chunk.startswith(b"\r\n\r\n", cut) else 2):]
        data = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") \
            else data
        part = BytesParser(policy=default_policy).parsebytes(head + b"\r\n\r\n",
                                                             headersonly=True)
        name = part.get_param("name", header="content-disposition")
        yield name, part.get_filename(), part.get_content_type(), data


def route(pattern: str):
    return re.compile("^" + pattern + "$")


def base_url(request: Request) -> str:
    host = request.environ.get("HTTP_HOST") or (
        f"{request.environ['SERVER_NAME']}:{request.environ['SERVER_PORT']}")
    return f"{request.environ.get('wsgi.url_scheme', 'http')}://{host}"


def is_form(request: Request) -> bool:
    return not request.content_type.startswith("application/json")


class BadRequest(ValueError):
    pass


class Part:
    """One group of routes (an API of one provider, the control endpoints): handlers are
    its methods, sharing the app's store, signing key and push worker."""

    def __init__(self, app):
        self.app = app

    @property
    def store(self):
        return self.app.store

    @property
    def key(self):
        return self.app.key

    @property
    def worker(self):
        return self.app.worker
