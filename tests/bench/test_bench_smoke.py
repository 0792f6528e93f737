"""Benchmarks cannot rot: every runnable script in bench/ runs end to end in its --smoke
mode, as a subprocess on the run's own PostgreSQL and Redis, and prints its figures.

A file in bench/ is a runnable benchmark unless HELPERS below declares it a helper module
and names the benchmark whose smoke run exercises it, so a new script cannot slip past.
Nothing here looks at how fast anything ran: the figures only have to be there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
# Modules of bench/ that are not benchmarks: each one -> the file that uses it (a chain
# that ends at the benchmark whose smoke run exercises it).
HELPERS = {
    "bare_urls.py": "bare_wsgi.py",  # URLconf of the bare view the webhook is compared with
    "bare_wsgi.py": "webhook.py",  # gunicorn entry point of that bare view
    "loadgen.py": "webhook.py",  # the load generator process (one JSON config on stdin)
}
# A guard against a script that ignores --smoke and runs its full workload (minutes).
HANG_GUARD_SECONDS = 240


def runnable_scripts(folder: Path) -> list[Path]:
    """Every ``*.py`` of ``folder`` that HELPERS does not declare a helper."""
    return sorted(p for p in folder.glob("*.py")
                  if p.name not in HELPERS and p.name != "__init__.py")


def services_env() -> dict[str, str]:
    """The environment a bench script runs in: this run's, with the service URLs the
    embedded wrapper exported (or, without the wrapper, the ones settings resolved)."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"postgres://{auth}@{db['HOST']}:{db['PORT']}/postgres")
    env.setdefault("REDIS_URL", settings.REDIS_URL)
    return env


def run_smoke(script: Path, env: dict[str, str] | None = None) -> dict:
    """Run ``script --smoke``; return the figures of its last line (a JSON object that says
    ``"smoke": true`` and holds at least one number). Fails with the script's output."""
    result = subprocess.run([sys.executable, str(script), "--smoke"], cwd=REPO,
                            env=env or services_env(), capture_output=True, text=True,
                            timeout=HANG_GUARD_SECONDS)
    output = f"\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
    assert result.returncode == 0, f"{script.name} --smoke exited {result.returncode}{output}"
    lines = result.stdout.strip().splitlines()
    try:
        figures = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        figures = None
    assert isinstance(figures, dict), f"{script.name} --smoke printed no JSON figures{output}"
    assert figures.get("smoke") is True, (
        f"{script.name} did not run in smoke mode (no \"smoke\": true in its figures){output}")
    numbers = [v for v in figures.values()
               if isinstance(v, int | float) and not isinstance(v, bool)]
    assert numbers, f"{script.name} --smoke printed no figures{output}"
    return figures


@pytest.mark.slow
@pytest.mark.parametrize("script", runnable_scripts(BENCH), ids=lambda p: p.name)
def test_bench_script_runs_in_smoke_mode(script):
    run_smoke(script)


def test_bench_has_the_benchmarks_and_helpers_it_documents():
    # Discovery finds the known benchmarks (an empty list would test nothing).
    assert {"api.py", "ingest.py", "webhook.py"} <= {p.name for p in runnable_scripts(BENCH)}
    readme = (BENCH / "README.md").read_text()
    for helper, user in HELPERS.items():
        assert (BENCH / helper).is_file(), f"HELPERS names a missing file: {helper}"
        assert Path(helper).stem in (BENCH / user).read_text(), f"{user} does not use {helper}"
        assert helper in readme, f"bench/README.md does not say what {helper} is"
        benchmark = user
        while benchmark in HELPERS:
            benchmark = HELPERS[benchmark]
        assert (BENCH / benchmark) in runnable_scripts(BENCH), f"no benchmark runs {helper}"


def test_a_new_file_in_bench_counts_as_a_runnable_script(tmp_path):
    for name in ("loadgen.py", "newbench.py", "__init__.py"):
        (tmp_path / name).write_text("")
    assert [p.name for p in runnable_scripts(tmp_path)] == ["newbench.py"]


@pytest.mark.parametrize("source", [
    # Ignores its arguments and prints figures of a full run.
    'import json\nprint(json.dumps({"emails_per_s": 120.0}))\n',
    # Knows no --smoke: argparse exits 2.
    'import argparse, json\nargparse.ArgumentParser().parse_args()\n'
    'print(json.dumps({"smoke": True, "emails_per_s": 120.0}))\n',
    # Says smoke but prints no figure.
    'import json\nprint(json.dumps({"smoke": True}))\n',
], ids=["ignores-smoke", "rejects-smoke", "no-figures"])
def test_a_script_without_a_working_smoke_mode_fails(tmp_path, source):
    script = tmp_path / "newbench.py"
    script.write_text(source)
    with pytest.raises(AssertionError, match="newbench.py"):
        run_smoke(script, env=dict(os.environ))


def test_ingest_names_the_missing_shared_workload(tmp_path):
    absent = tmp_path / "shared" / "bench"
    result = subprocess.run([sys.executable, str(BENCH / "ingest.py"), "--smoke"], cwd=REPO,
                            env={**services_env(), "HELPDESK_SHARED_BENCH": str(absent)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert str(absent) in result.stderr and "gen_corpus.py" in result.stderr


def test_api_bench_names_its_scratch_database_after_the_run_database(monkeypatch):
    """Two runs against different databases of one server never share a scratch
    database (bench/api.py drops and creates its own)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_api", BENCH / "api.py")
    api = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_api", api)  # for its dataclasses
    spec.loader.exec_module(api)
    name = api.scratch_database
    assert name("postgres://u@h:5432/hd_alice", api.FULL) == "hd_alice_bench_api"
    assert name("postgres://u@h:5432/hd_bob", api.SMOKE) == "hd_bob_bench_api_smoke"
    assert name("postgres://u@h:5432/postgres", api.FULL) == "helpdesk_bench_api"
    assert name("postgres://u@h:5432", api.SMOKE) == "helpdesk_bench_api_smoke"
    long = name("postgres://u@h/" + "x" * 70, api.SMOKE)
    assert len(long) <= 63 and long.endswith("_bench_api_smoke")


def test_api_bench_refuses_to_drop_the_run_database(tmp_path):
    result = subprocess.run([sys.executable, str(BENCH / "api.py"), "--smoke", "--database",
                             "hd_same"], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**services_env(),
                                 "DATABASE_URL": "postgres://u@127.0.0.1:1/hd_same"})
    assert result.returncode != 0 and "DATABASE_URL's own database" in result.stderr
