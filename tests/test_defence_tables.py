"""scripts/defence_tables.py: docs/defences.md's per-model tables are the published records' means — a records.csv
regenerated without the docs (or docs edited by hand) fails here."""

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "defence_tables.py"


def _module():
    spec = importlib.util.spec_from_file_location("defence_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_docs_tables_are_the_published_records():
    done = subprocess.run([sys.executable, str(SCRIPT), "results/defences/records.csv"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    docs = (ROOT / "docs" / "defences.md").read_text()
    for block in done.stdout.strip().split("\n\n"):
        assert block in docs, f"docs/defences.md lacks (or differs from) the records' table:\n{block}"


def test_a_missing_records_file_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "records.csv")], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "records.csv" in done.stderr


def test_the_docstring_examples():
    assert doctest.testmod(_module()).failed == 0
