"""examples/trading_app.py runs against a real sidecar and stops by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unittest

from .helpers import REPO_ROOT_FOR_EXAMPLES, start_sidecar


class TestTradingApp(unittest.TestCase):
    def test_runs_for_its_duration_and_reports(self):
        sc = start_sidecar(self, None)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT_FOR_EXAMPLES / "clients" / "python")}
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT_FOR_EXAMPLES / "examples" / "trading_app.py"),
             "--socket", sc.socket, "--duration", "3", "--seed", "7", "--interval", "0.01"],
            capture_output=True, text=True, timeout=60, env=env,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        summary = json.loads(proc.stdout)
        self.assertGreater(summary["candles_published"], 100)
        self.assertGreater(summary["closed_candles_seen"], 10)
        self.assertGreater(summary["signals"], 0)
        # Every order placed was executed once the executor caught up or was
        # left queued in the sidecar (never lost).
        order = summary["queue_stats"]["order"]
        self.assertEqual(summary["orders"], summary["fills"] + order["size"])
        self.assertEqual(summary["signal_timeouts"], 0)
        for queue in ("data", "signal", "order"):
            self.assertEqual(summary["queue_stats"][queue]["drops"], 0, queue)

    def test_reports_a_missing_sidecar_and_exits_1(self):
        proc = subprocess.run(
            [sys.executable, str(REPO_ROOT_FOR_EXAMPLES / "examples" / "trading_app.py"),
             "--socket", "/nonexistent/eventbus.sock", "--duration", "1"],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(proc.returncode, 1)
        self.assertIn("/nonexistent/eventbus.sock", proc.stderr)


if __name__ == "__main__":
    unittest.main()
