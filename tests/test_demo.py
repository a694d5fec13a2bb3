"""`polytomic-bot demo` runs the whole story on one machine, prints the channel and its one-line
summary, and exits 0 (run as a real subprocess, as a newcomer would)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

SUMMARY = re.compile(r"^demo: 1 cancel sent, thread ended canceled in \d+(\.\d+)? s, 0 errors$")


def test_demo_runs_to_its_summary_and_exits_0(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "POLYTOMIC_", "BOT_"))}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    lines = out.strip().splitlines()
    assert SUMMARY.match(lines[-1]), lines[-1]
    assert "/polytomic status" in out
    assert "[Cancel]" in out and "[Cancel execution]" in out  # the card as the engineer saw it
    assert "#data-oncall" in out
    transcript = out[out.index("What #data-oncall shows now:") :]
    assert "asked to cancel `opportunities`" in transcript
    assert "> polytomic (bot): ✅ `opportunities` of `Salesforce to Snowflake` was *canceled*" in transcript
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory
