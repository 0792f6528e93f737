"""Where the shared real-world email corpus is: ../shared/corpus beside the clone (CI has
it there), or HELPDESK_CORPUS. It is not copied into the repository (mixed licences, see
its SOURCES.md); tests that need it skip with a message naming the folder when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("HELPDESK_CORPUS") or REPO.parent / "shared" / "corpus")
NOT_MAIL = {"SOURCES.md", "MANIFEST.sha256", "bounce_expectations.csv"}

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(),
                                  reason=f"the shared email corpus is not at {CORPUS}")


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in NOT_MAIL)
