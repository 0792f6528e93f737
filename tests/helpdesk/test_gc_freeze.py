"""The WSGI entry points freeze the warm heap out of the garbage collector's way (after
the 1st, 100th and 1,000th request, then never again): in a fresh process of their own,
since a freeze is for the rest of a process's life."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import gc, io, json, sys
from {module} import application

def request():
    environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/no-such-page/", "SCRIPT_NAME": "",
               "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
               "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
               "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
               "wsgi.url_scheme": "http", "wsgi.multithread": True,
               "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0)}}
    statuses = []
    response = application(environ, lambda status, headers, exc_info=None:
                           statuses.append(status))
    b"".join(response)
    response.close()  # request_finished
    return statuses[0]

seen = {{"start": gc.get_freeze_count()}}
status = request()
seen["after 1"] = gc.get_freeze_count()
kept = [[n] for n in range(5000)]  # long-lived, allocated after the first freeze
for _ in range(99):
    request()
seen["after 100"] = gc.get_freeze_count()
for _ in range(900):
    request()
seen["after 1000"] = gc.get_freeze_count()
later = [[n] for n in range(5000)]
for _ in range(100):
    request()
seen["after 1100"] = gc.get_freeze_count()
print(json.dumps({{"status": status, **seen}}))
"""


@pytest.mark.parametrize("module", ["helpdesk.wsgi", "bench.bare_wsgi"])
def test_the_wsgi_entry_points_freeze_the_warm_heap(module):
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert int(seen["status"].split()[0]) < 500  # served (a redirect or a 404)
    assert seen["start"] == 0  # nothing frozen before a request has been served
    assert seen["after 1"] > 50_000  # the modules, settings, URLconf, middleware...
    assert seen["after 100"] >= seen["after 1"] + 5000  # what came after the first
    assert seen["after 1000"] >= seen["after 100"]
    # No freeze after the last point: the 5,000 lists allocated since stay collectable
    # (the count moves by a few objects as frozen ones are freed or re-tracked).
    assert abs(seen["after 1100"] - seen["after 1000"]) < 100
