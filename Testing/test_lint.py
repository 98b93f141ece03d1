"""The code passes the project's lint rules (``[tool.ruff]`` in pyproject.toml, ruff pinned in
constraints.txt): a finding fails the suite, so the rules are enforced, not advisory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(REPO)],
                         capture_output=True, text=True, cwd=REPO, check=False)
    assert "No module named ruff" not in run.stderr, "ruff is missing: install the project with its [dev] extra"
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_reads_the_project_rules(tmp_path):
    """The check above can fail: a file with an unused import, under the same rules, is a finding."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
                          str(bad)], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "F401" in run.stdout, run.stdout + run.stderr
