"""Every benchmark runs, at tiny sizes, in ``make test``, so that none can rot unseen.

Each ``benchmarks/*.py`` script must take ``--smoke`` (tiny sizes, seconds) and print its
table. Scripts are found by glob: a new benchmark without ``--smoke`` fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))

#: A Markdown table: a header separator row such as ``| --- | ---: |``.
TABLE_SEPARATOR = re.compile(r"^\|( *:?-{3,}:? *\|)+ *$", re.MULTILINE)


def test_benchmarks_are_found():
    assert any(path.name == "bench_ensemble.py" for path in BENCHMARKS), f"no benchmarks found in {REPO / 'benchmarks'}"


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_smoke_run_prints_a_table(script, tmp_path):
    assert "--smoke" in script.read_text(), f"{script.name} has no --smoke flag: give it one (tiny sizes, seconds) so make test runs it"
    env = {**os.environ, "ELIT_CACHE": str(tmp_path / "cache"), "ELIT_RESULTS": str(tmp_path / "results"), "ELIT_PROFILE": "smoke", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # this checkout's elit_utils
    run = subprocess.run([sys.executable, str(script), "--smoke"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{script.name} --smoke exited with {run.returncode}:\n{run.stderr[-3000:]}"
    assert TABLE_SEPARATOR.search(run.stdout), f"{script.name} --smoke printed no table:\n{run.stdout[-3000:]}"
