"""User-facing errors: one clear line and an exit code, never a traceback."""

from __future__ import annotations

EXIT_FAILED = 1  # the job failed
EXIT_USAGE = 2  # the user's input (argparse uses 2 as well)
EXIT_STOPPED = 3  # the job was stopped
EXIT_TIMEOUT = 4  # still running when --timeout ran out
EXIT_INTERRUPTED = 130


class LaunchError(Exception):
    """Something the user can fix or needs to know; printed as `error: <message>`."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def explain_aws(exc: Exception) -> str:
    """A short explanation of a botocore error for the person at the terminal."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ProfileNotFound,
    )

    if isinstance(exc, NoCredentialsError):
        return no_credentials()
    if isinstance(exc, NoRegionError):
        return no_region()
    if isinstance(exc, ProfileNotFound):
        return f"{exc} (check AWS_PROFILE / --profile and ~/.aws/config)"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach AWS: {exc}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Error")
        operation = getattr(exc, "operation_name", "request")
        if code in ("InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch"):
            return f"AWS rejected the credentials ({code}) on {operation}"
        if code in ("ExpiredToken", "ExpiredTokenException"):
            return "the AWS session token has expired: log in again (e.g. aws sso login)"
        if code in ("AccessDenied", "AccessDeniedException"):
            return f"access denied on {operation}: {error.get('Message', '')}".rstrip(": ")
        return f"{operation} failed: {code}: {error.get('Message', '')}".rstrip(": ")
    return str(exc)


def no_credentials() -> str:
    return (
        "no AWS credentials found: run `aws configure` or `aws sso login`, set AWS_PROFILE, "
        "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


def no_region() -> str:
    return "no AWS region: pass --region, set AWS_REGION, or set a region in your AWS profile"
