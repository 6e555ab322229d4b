"""Runs the real eventbus-sidecar binary for the tests.

The tests talk to a real `eventbus-sidecar serve` process on a socket in a
fresh temporary directory. (Only test_framing and test_msg_id's retry tests
script a server of their own, for bytes the sidecar never sends and for a
connection cut right after a publish was read.) The binary is
``$EVENTBUS_SIDECAR_BIN`` if set, else ``bin/eventbus-sidecar`` at the
repository root, built with ``go build`` once per test run if missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
_BIN_ENV = "EVENTBUS_SIDECAR_BIN"
_build_lock = threading.Lock()
_built: Path | None = None

# Small queues and short timeouts, so that tests which are not the seed's own
# fill queues quickly and never wait seconds. Same names, policies and order
# as the defaults.
SHORT_CONFIG = """\
queues:
  - {name: data, capacity: 5, policy: drop, timeout: 100ms}
  - {name: signal, capacity: 3, policy: fail, timeout: 200ms}
  - {name: order, capacity: 2, policy: block}
drain_timeout: 2s
telemetry:
  disabled: true
"""


def sidecar_binary() -> Path:
    """The sidecar binary, built from the repository if it is not there yet."""
    global _built
    with _build_lock:
        if _built is not None:
            return _built
        env_bin = os.environ.get(_BIN_ENV)
        if env_bin:
            path = Path(env_bin)
            if not path.is_absolute():
                path = REPO_ROOT / path
            if not os.access(path, os.X_OK):
                raise RuntimeError(f"{_BIN_ENV}={env_bin}: no executable at {path}")
            _built = path
            return path
        path = REPO_ROOT / "bin" / "eventbus-sidecar"
        if not os.access(path, os.X_OK):
            go = shutil.which("go") or "/usr/local/go/bin/go"
            proc = subprocess.run(
                [go, "build", "-tags", "urfave_cli_no_docs", "-o", str(path), "."],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"go build of the sidecar failed:\n{proc.stdout}{proc.stderr}")
        _built = path
        return path


class Sidecar:
    """One sidecar process on a socket in its own temporary directory.

    ``config`` is YAML text for ``--config`` (None: built-in defaults).
    """

    def __init__(self, config: str | None = None, *extra_args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eventbus-py-"))
        if len(str(self.dir)) > 80:
            # A Unix socket path must fit in sun_path (108 bytes on Linux).
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = Path(tempfile.mkdtemp(prefix="eventbus-py-", dir="/tmp"))
        self.socket = str(self.dir / "sidecar.sock")
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.dir / "sidecar.yaml"
            self.config_path.write_text(config)
        self.extra_args = list(extra_args)
        self.log_path = self.dir / "sidecar.log"
        self.proc: subprocess.Popen | None = None
        self._starts = 0

    def start(self, timeout: float = 20.0) -> None:
        """Start serve and wait until the socket accepts connections."""
        args = [
            str(sidecar_binary()),
            "serve",
            "--socket", self.socket,
            "--admin-addr", "off",
            "--log-level", "debug",
        ]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        args += self.extra_args
        env = dict(os.environ)
        # No collector in unit tests: do not export telemetry anywhere.
        env["EVENTBUS_TELEMETRY_DISABLED"] = "true"
        self._starts += 1
        log = open(self.log_path, "ab")
        log.write(f"--- start {self._starts}: {' '.join(args)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sidecar exited with {self.proc.returncode} before listening:\n{self.log()}"
                )
            if self._accepts():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"sidecar did not listen on {self.socket} within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def _accepts(self) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit code."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL: the sidecar dies without closing anything itself."""
        return self._signal(signal.SIGKILL, 15.0)

    def _signal(self, sig: int, timeout: float) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"sidecar ignored signal {sig} for {timeout}s:\n{self.log()}")
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_sidecar(test: unittest.TestCase, config: str | None = None, *extra_args: str) -> Sidecar:
    """Start a sidecar for one test; it is killed and removed at cleanup.

    When the test fails, the sidecar's log is printed to help the diagnosis.
    """
    sc = Sidecar(config, *extra_args)
    test.addCleanup(sc.cleanup)
    sc.start()
    test.addCleanup(_print_log_on_failure, test, sc)
    return sc


def _print_log_on_failure(test: unittest.TestCase, sc: Sidecar) -> None:
    outcome = getattr(test, "_outcome", None)
    result = getattr(outcome, "result", None)
    if result is None:
        return
    failed = any(t is test for t, _ in (*result.failures, *result.errors))
    if failed and os.environ.get("EVENTBUS_TEST_VERBOSE_LOG", "1") != "0":
        print(f"\n--- sidecar log of {test.id()} ---\n{sc.log()[-4000:]}")
