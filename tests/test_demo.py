"""``make demo``: examples/demo.py runs end to end (its own broker, the example workers)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT
from factory_helpers import pid_gone

DEMO = str(ROOT / "examples" / "demo.py")


def kill_orphaned_broker(output: str) -> None:
    """If the demo died without stopping its broker, stop that broker by the PID it printed."""
    found = re.search(r"broker started \(pid (\d+)\)", output)
    if not found:
        return
    pid = int(found.group(1))
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            is_broker = b"remus.server" in f.read()
    except OSError:
        is_broker = not pid_gone(pid)  # no /proc: trust the PID
    if is_broker and not pid_gone(pid):
        os.kill(pid, signal.SIGKILL)  # its workers die with it (parent-death signal)


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="the demo's broker stops on SIGTERM")
def test_demo_runs_end_to_end(make_process: Any) -> None:
    proc = make_process([DEMO], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = ""
    try:
        try:
            output, _ = proc.communicate(timeout=100)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            raise AssertionError(f"the demo did not finish within 100 s:\n{output}") from None
    finally:
        kill_orphaned_broker(output)

    assert proc.returncode == 0, output
    # it said what the broker can serve before any worker ran
    assert "Points->Mesh2D" in output and "Text->Summary" in output, output
    # every job has a result line: 4 meshes, 3 summaries, and no failure
    results = output.split("\nresults:\n", 1)[1]
    assert results.count("mesh of ") == 4, output
    assert results.count(" words, top: ") == 3, output
    assert "FAILED" not in results, output
    assert "broker stopped (exit code 0)" in output, output
