"""python -m sandbox [--host H] [--port N] [--tls-port N]
                                            serve http and https (default: free ports)
python -m sandbox deliver --to ADDR (--eml FILE | --from X --subject S --body B [--attach F])
python -m sandbox mailbox ADDR [--microsoft TENANT]   create a mailbox (Gmail, or Microsoft 365)
python -m sandbox fault add KIND [--count N] [--mailbox A] [--retry-after S] [--delay S]
python -m sandbox fault list | fault clear [--id N] [--kind KIND]
python -m sandbox settings [KEY=JSON ...]   show or change settings.json
python -m sandbox state | reset [--settings]
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import signal
import socketserver
import sys
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from . import faults as faultlib
from .app import SandboxApp, deliver
from .store import Store
from .tls import ensure_certificates, server_context


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        if os.environ.get("SANDBOX_VERBOSE"):
            super().log_message(format, *args)


class _TLSServer(_Server):
    """The same app over TLS. The handshake runs in the request's own thread (first read),
    so a client that never finishes it holds no one else up."""

    tls_context = None

    def get_request(self):
        sock, address = self.socket.accept()
        return self.tls_context.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False), address

    def handle_error(self, request, client_address):
        import ssl

        if isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            return  # a client that did not trust the CA, or went away
        super().handle_error(request, client_address)


class _TLSHandler(_Handler):
    def get_environ(self):
        environ = super().get_environ()
        environ["HTTPS"] = "on"  # wsgi.url_scheme = https
        return environ


def serve(host: str, port: int, tls_port: int = 0) -> None:
    store = Store()
    app = SandboxApp(store)
    httpd = make_server(host, port, app, server_class=_Server, handler_class=_Handler)
    real_port = httpd.server_address[1]
    url = f"http://{host}:{real_port}"
    tls_paths = ensure_certificates(store.root)
    _TLSServer.tls_context = server_context(tls_paths)
    httpsd = make_server(host, tls_port, app, server_class=_TLSServer,
                         handler_class=_TLSHandler)
    real_tls_port = httpsd.server_address[1]
    https_url = f"https://{host}:{real_tls_port}"
    app.http_url, app.https_url = url, https_url
    info = {"url": url, "host": host, "port": real_port, "pid": os.getpid(),
            "var_dir": str(store.root), "https_url": https_url, "tls_port": real_tls_port,
            "ca_file": str(tls_paths["ca_file"])}
    # Written whole, then renamed into place: a reader waiting for the file never sees it
    # half-written.
    partial = store.root / "server.json.partial"
    partial.write_text(json.dumps(info, indent=1))
    os.replace(partial, store.root / "server.json")
    print(f"sandbox listening on {url} and {https_url} (CA {tls_paths['ca_file']}, state in "
          f"{store.root})", flush=True)
    tls_thread = threading.Thread(target=httpsd.serve_forever, kwargs={"poll_interval": 0.2},
                                  daemon=True)
    tls_thread.start()

    def shutdown(signum, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()
        threading.Thread(target=httpsd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        app.worker.stop()
        httpd.server_close()
        httpsd.shutdown()
        httpsd.server_close()
        try:
            current = json.loads((store.root / "server.json").read_text())
            if current.get("pid") == os.getpid():
                (store.root / "server.json").unlink()
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the HTTP server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port (see server.json)")
    p.add_argument("--tls-port", type=int, default=0,
                   help="https port, same app (0 = a free port; see server.json)")
    p = sub.add_parser("deliver", help="deliver a customer email into a mailbox")
    p.add_argument("--to", required=True)
    p.add_argument("--eml", type=Path)
    p.add_argument("--from", dest="sender", default="Customer <customer@example.net>")
    p.add_argument("--subject", default="")
    p.add_argument("--body", default="")
    p.add_argument("--attach", type=Path, action="append", default=[])
    p = sub.add_parser("mailbox", help="create a mailbox")
    p.add_argument("email")
    p.add_argument("--microsoft", metavar="TENANT",
                   help="a Microsoft 365 mailbox of this tenant (e.g. contoso, fabrikam)")
    p = sub.add_parser("fault", help="add, list or clear fault switches")
    p.add_argument("action", choices=["add", "list", "clear"])
    p.add_argument("kind", nargs="?", choices=sorted(faultlib.KINDS))
    p.add_argument("--count", type=int, help="next N requests (default: until cleared)")
    p.add_argument("--mailbox")
    p.add_argument("--target", choices=["gmail", "token", "ms_token", "any"])
    p.add_argument("--retry-after", type=int, default=5)
    p.add_argument("--delay", type=float, default=2.0)
    p.add_argument("--status", type=int, default=500)
    p.add_argument("--id", type=int)
    p = sub.add_parser("settings", help="show or change settings (KEY=JSON)")
    p.add_argument("pairs", nargs="*")
    sub.add_parser("state", help="print the state (without message bodies)")
    p = sub.add_parser("reset", help="forget mailboxes, tokens, faults")
    p.add_argument("--settings", action="store_true", help="also restore default settings")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.host, args.port, args.tls_port)
        return 0
    store = Store()
    if args.command == "deliver":
        if args.eml:
            spec = {"to": args.to, "eml_bytes": args.eml.read_bytes()}
        else:
            spec = {"to": args.to, "from": args.sender, "subject": args.subject,
                    "body": args.body, "attachments_raw": [
                        (f.name, f.read_bytes(),
                         mimetypes.guess_type(f.name)[0] or "application/octet-stream")
                        for f in args.attach]}
        print(json.dumps(deliver(store, spec), indent=1))
    elif args.command == "mailbox":
        from .gmail import ensure_mailbox
        from .microsoft.identity import ensure_microsoft_mailbox

        with store.transaction() as state:
            box = ensure_microsoft_mailbox(state, args.email, args.microsoft) \
                if args.microsoft else ensure_mailbox(state, args.email)
            print(json.dumps({"email": box["email"], "historyId": str(box["history_id"]),
                              "provider": box.get("provider", "google")}))
    elif args.command == "fault":
        with store.transaction() as state:
            if args.action == "add":
                if not args.kind:
                    parser.error("fault add needs a KIND")
                spec = {"kind": args.kind, "count": args.count, "mailbox": args.mailbox,
                        "target": args.target, "retry_after": args.retry_after,
                        "delay": args.delay, "status": args.status}
                print(json.dumps(faultlib.add_fault(state, spec)))
            elif args.action == "clear":
                print(json.dumps({"cleared": faultlib.clear_faults(state, args.id, args.kind)}))
            else:
                print(json.dumps(state["faults"], indent=1))
    elif args.command == "settings":
        if args.pairs:
            changes = {}
            for pair in args.pairs:
                key, _, value = pair.partition("=")
                try:
                    changes[key] = json.loads(value)
                except ValueError:
                    changes[key] = value
            store.update_settings(changes)
        print(json.dumps(store.settings(), indent=1))
    elif args.command == "state":
        state = store.read()
        for box in state["mailboxes"].values():
            for rec in box["messages"].values():
                rec.pop("blob", None)
        print(json.dumps(state, indent=1))
    elif args.command == "reset":
        store.reset(settings=args.settings)
        print("reset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
