"""One boto3 session for a launcher command, resolved like the AWS CLI resolves it."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LaunchError, explain_aws, no_credentials, no_region
from .options import Options


@dataclass
class Aws:
    session: object  # boto3.Session
    endpoint_url: str | None = None

    @property
    def region(self) -> str:
        return self.session.region_name

    def client(self, service: str):
        # An explicit endpoint (--endpoint-url) applies to every service, as in the AWS CLI;
        # otherwise botocore reads AWS_ENDPOINT_URL[_<SERVICE>] and the profile itself.
        return self.session.client(service, endpoint_url=self.endpoint_url)

    def resource(self, service: str):
        return self.session.resource(service, endpoint_url=self.endpoint_url)


def connect(options: Options) -> Aws:
    """A session with a region and credentials, or a LaunchError saying which is missing."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.Session(profile_name=options.profile, region_name=options.region)
        if not session.region_name:
            raise LaunchError(no_region())
        if session.get_credentials() is None:
            raise LaunchError(no_credentials())
    except BotoCoreError as exc:
        raise LaunchError(explain_aws(exc)) from None
    return Aws(session, options.endpoint_url)
