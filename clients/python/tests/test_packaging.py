"""`pip install ./clients/python` works offline and installs a working package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


class TestPackaging(unittest.TestCase):
    def test_pip_installs_offline_with_build_isolation(self):
        target = tempfile.mkdtemp(prefix="eventbus-py-pip-")
        self.addCleanup(shutil.rmtree, target, True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-index", "--no-cache-dir",
             "--target", target, str(PROJECT)],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        check = subprocess.run(
            [sys.executable, "-c",
             "import eventbus_sidecar as m, sys; "
             "print(m.__file__); print(m.EventBus.connect, m.EventType.ORDER_PLACED.value)"],
            capture_output=True, text=True, cwd=target,
            env={**os.environ, "PYTHONPATH": target}, timeout=60,
        )
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn(target, check.stdout)
        self.assertIn("ORDER_PLACED", check.stdout)
        dist_info = [p for p in os.listdir(target) if p.endswith(".dist-info")]
        self.assertEqual(dist_info, ["eventbus_sidecar-0.1.0.dist-info"])

    def test_wheel_has_every_module_and_a_valid_record(self):
        sys.path.insert(0, str(PROJECT / "_build_backend"))
        try:
            import eventbus_build
        finally:
            sys.path.pop(0)
        out = tempfile.mkdtemp(prefix="eventbus-py-wheel-")
        self.addCleanup(shutil.rmtree, out, True)
        name = eventbus_build.build_wheel(out)
        with zipfile.ZipFile(os.path.join(out, name)) as zf:
            names = set(zf.namelist())
            record = zf.read("eventbus_sidecar-0.1.0.dist-info/RECORD").decode()
            metadata = zf.read("eventbus_sidecar-0.1.0.dist-info/METADATA").decode()
        modules = {f"eventbus_sidecar/{p.name}" for p in (PROJECT / "eventbus_sidecar").glob("*.py")}
        self.assertTrue(modules <= names, modules - names)
        self.assertIn("eventbus_sidecar/py.typed", names)
        self.assertFalse([n for n in names if "__pycache__" in n])
        self.assertEqual({line.split(",")[0] for line in record.splitlines()}, names)
        self.assertIn("Requires-Python: >=3.11", metadata)
        self.assertNotIn("Requires-Dist: opentelemetry-api>=1.20\n", metadata)  # only as an extra
        self.assertIn('Requires-Dist: opentelemetry-api>=1.20; extra == "otel"', metadata)


if __name__ == "__main__":
    unittest.main()
