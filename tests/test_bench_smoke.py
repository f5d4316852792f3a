"""`make bench` cannot rot: a tiny run of every section writes a result with positive numbers.

Timing is never asserted here (issue 7: performance is measured by `make bench`, not tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _numbers(section: Any) -> list[float]:
    if isinstance(section, dict):
        return [n for value in section.values() for n in _numbers(value)]
    if isinstance(section, bool):
        return []
    if isinstance(section, int | float):
        return [float(section)]
    return []


def test_bench_smoke_run_writes_every_section(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # 2 shared CPUs: every section, incl. inbox and lists on two backends
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [result_file] = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())

    for section in ("service", "raw"):
        for part in ("starts", "decisions", "unloaded_decision"):
            numbers = result[section][part]
            assert numbers["count"] > 0 and numbers["p50_ms"] > 0 and numbers["p99_ms"] > 0
        assert result[section]["starts"]["per_s"] > 0
        assert result[section]["decisions"]["per_s"] > 0
    assert all(v > 0 for v in result["ratios"].values())
    for backend in ("sqlite", "postgresql"):
        inbox = result["inbox"][backend]
        for view in ("pdm_assignee_me", "dispatcher_inbox", "dispatcher_assignee_me"):
            assert inbox[view]["p50_ms"] > 0 and inbox[view]["p99_ms"] > 0
            assert inbox[view]["items"] > 0
    for backend in ("sqlite", "postgresql"):
        lists = result["lists"][backend]
        for view in ("partner_first_page", "staff_first_page", "staff_status", "partner_q"):
            assert lists[view]["p50_ms"] > 0 and lists[view]["p99_ms"] > 0
        assert lists["partner_first_page"]["items"] > 0
    cost = result["cost_growth"]
    for size in ("baseline", "at_size"):
        assert cost[size]["worker_rss_mb"] > 0 and cost[size]["temporal_rss_mb"] > 0
        assert cost[size]["decision"]["p50_ms"] > 0
    assert cost["at_size"]["open"] > cost["baseline"]["open"]
    assert all(n >= 0 for n in _numbers(result))
    assert "| measure |" in run.stdout
    # the targeted figures are the last lines, ratios first (issue 11 part 6)
    last = run.stdout.strip().splitlines()[-7:]  # 3 ratios, 2 inboxes, 2 cost lines
    assert last[0].startswith("ratio PO starts / raw starts: "), last
    assert last[1].startswith("ratio decisions / raw decisions: "), last
    assert last[-1].startswith("ratio decision p50 at "), last
