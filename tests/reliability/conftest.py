"""Fixtures of the reliability suite: a fork server that records, kills and probes."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("_worker.py")


class Worker:
    """A ``_worker.py`` server process: send a command, get its JSON reply."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.call({"op": "ping"}, timeout=120)

    def call(self, cmd: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        """Send ``cmd``; fail the test if no reply comes within ``timeout`` seconds."""
        assert self.proc.poll() is None, f"the worker died (exit {self.proc.returncode})"
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            pytest.fail(f"the worker gave no reply to {cmd['op']!r} within {timeout} s (hang)")
        line = self.proc.stdout.readline()
        assert line, f"the worker died during {cmd['op']!r} (exit {self.proc.wait()})"
        reply = json.loads(line)
        assert reply["ok"], reply["error"]
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def worker():
    """The fork server (one per pytest process: it imports torch once)."""
    w = Worker()
    yield w
    w.close()
