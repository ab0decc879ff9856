"""The SageMaker SDK's local mode on the CI engine: its sessions on the tests' S3 server, and the
cleanup of what docker compose leaves behind."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from tests.container.engine import docker_cli, unavailable


def _engine_has_own_network() -> bool:
    """Whether dockerd runs in a network namespace other than ours (.ci/docker.sh isolates it)."""
    try:
        pid = Path("/var/run/docker.pid").read_text().strip()
        return os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def sdk_local_session(tmp_path, s3_url: str | None = None, pipeline: bool = False):
    """The real SDK's LocalSession (docker compose), or with `pipeline` its LocalPipelineSession;
    S3 is the test's own server when given."""
    import boto3
    from sagemaker.local import LocalSession
    from sagemaker.workflow.pipeline_context import LocalPipelineSession

    # The SDK's compose file always adds a bridge network ("sagemaker-local"); this machine's
    # bridges are off limits, so the engine must have a network namespace of its own.
    if not _engine_has_own_network():
        unavailable(
            "dockerd shares this host's network (compose would add a bridge here)",
            ".ci/docker.sh start runs it in its own network namespace",
            "start it with .ci/docker.sh start",
        )
    assert shutil.which("docker-compose") or docker_cli("compose", "version").returncode == 0
    if s3_url:
        from tests.servers import ACCESS_KEY, REGION, SECRET_KEY

        boto_session = boto3.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )
    else:  # fake static credentials: no metadata-service lookups; they only reach the container's env
        boto_session = boto3.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
        )
    telemetry_off = {
        "SchemaVersion": "1.0",
        "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
    }
    if pipeline:  # it takes no config: set after
        session = LocalPipelineSession(boto_session=boto_session, s3_endpoint_url=s3_url)
        session.sagemaker_config = telemetry_off
    else:
        session = LocalSession(
            boto_session=boto_session, s3_endpoint_url=s3_url, sagemaker_config=telemetry_off
        )
    session.config = {"local": {"local_code": True, "container_root": str(tmp_path)}}
    return session


@contextlib.contextmanager
def compose_cleaned():
    """compose leaves its containers and network behind; the network is in the engine's namespace."""
    before = set(docker_cli("ps", "-aq").stdout.split())
    try:
        yield
    finally:
        made = set(docker_cli("ps", "-aq", "--filter", "label=com.docker.compose.project").stdout.split())
        if made - before:
            docker_cli("rm", "-f", *sorted(made - before))
        docker_cli("network", "rm", "sagemaker-local")
