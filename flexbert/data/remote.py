"""Object-store locations (`s3://bucket/prefix`): parsing, and a pre-flight check that fails in seconds.

mosaicml-streaming reads and writes S3 through boto3 with the endpoint in `S3_ENDPOINT_URL` (unset: AWS) and the
usual credentials (`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, ...). Its clients retry and wait a
minute per attempt, so a wrong bucket, wrong credentials or an unreachable endpoint would surface minutes later, as a
traceback from a worker thread. `check_s3_location` asks the same endpoint with the same credentials once, with short
timeouts and no retries, before anything is built, and turns each failure into one line naming the URI, the endpoint
and what to check. Other schemes (gs://, oci://, ...) go to mosaicml-streaming unchecked.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Optional

from flexbert.errors import DataError

# One attempt, short timeouts: a localhost or in-region endpoint answers in milliseconds, and a check that waits
# longer only delays the error it is there to report.
PREFLIGHT_TIMEOUT_S = 3.0
CREDENTIALS_HINT = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"


class RemoteStoreError(DataError):
    """The object store cannot be used as configured: one line naming the URI, the endpoint and what to check."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix"); RemoteStoreError when there is no bucket."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise RemoteStoreError(f"'{uri}' is not an S3 location; write s3://BUCKET/PREFIX")
    return parsed.netloc, parsed.path.strip("/")


def join_key(prefix: str, *parts: str) -> str:
    return "/".join(p.strip("/") for p in (prefix, *parts) if p.strip("/"))


def s3_client(timeout: float = PREFLIGHT_TIMEOUT_S):
    """A boto3 S3 client for the endpoint mosaicml-streaming uses (S3_ENDPOINT_URL), failing fast: one attempt."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout, read_timeout=timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.session.Session().client("s3", config=config, endpoint_url=os.environ.get("S3_ENDPOINT_URL"))


def endpoint_of(client) -> str:
    given = os.environ.get("S3_ENDPOINT_URL")
    return f"{given} (S3_ENDPOINT_URL)" if given else f"{client.meta.endpoint_url} (AWS; set S3_ENDPOINT_URL for another store)"


def describe_failure(err: BaseException, uri: str, bucket: str, endpoint: str) -> Optional[str]:
    """One line for a boto3 failure of a request to `bucket`; None for an error that is not about reaching it."""
    from botocore.exceptions import (ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError,
                                     PartialCredentialsError, ReadTimeoutError)

    where = f"object store {endpoint}"
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return f"{uri}: no credentials for the {where}; set {CREDENTIALS_HINT}"
    if isinstance(err, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return (f"{uri}: cannot reach the {where} ({type(err).__name__}); check S3_ENDPOINT_URL, the network and "
                f"that the server runs")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return f"{uri}: bucket '{bucket}' does not exist at the {where}; check the bucket name (or create it)"
        if status == 404:  # a 404 without S3's error document: something else answers at that address
            return (f"{uri}: the {where} answered HTTP 404 without an S3 error; check that S3_ENDPOINT_URL is an "
                    f"S3 endpoint and that bucket '{bucket}' exists")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return f"{uri}: the {where} refused the credentials ({code}); check {CREDENTIALS_HINT}"
        if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
            return (f"{uri}: access denied by the {where} ({code}); check {CREDENTIALS_HINT} and that they may "
                    f"list and read bucket '{bucket}'")
        return f"{uri}: the {where} answered {code or status}: {err}"
    return None


def check_s3_location(uri: str, *, required: Optional[str] = None) -> list[str]:
    """Check that bucket and prefix of `uri` can be listed with the current credentials; return the keys under it
    (at most 1000: enough to tell empty from not). `required` (e.g. "train/index.json") must exist under it.

    Raises RemoteStoreError (one line) for a bad URI, a missing bucket, refused credentials, an unreachable endpoint
    or a missing `required` object -- after one attempt of a few seconds at most.
    """
    bucket, prefix = split_s3_uri(uri)
    client = s3_client()
    endpoint = endpoint_of(client)
    try:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=join_key(prefix) + "/" if prefix else "")
    except Exception as err:  # noqa: BLE001 -- botocore's own failures become a line; anything else re-raises
        line = describe_failure(err, uri, bucket, endpoint)
        if line is None:
            raise
        raise RemoteStoreError(line) from None
    keys = [item["Key"] for item in listing.get("Contents", [])]
    if required is not None and join_key(prefix, required) not in keys:
        key = join_key(prefix, required)
        exists = sorted({k[len(prefix):].strip("/").split("/")[0] for k in keys})
        try:  # a prefix with more than one listing page: ask for the one object
            client.head_object(Bucket=bucket, Key=key)
            return keys
        except Exception:  # noqa: BLE001 -- any failure here means the object cannot be read: report it missing
            pass
        raise RemoteStoreError(f"{uri}: no '{required}' at the object store {endpoint}: s3://{bucket}/{key} not found; "
                               f"under the prefix: {exists[:20] or 'nothing'} (write MDS shards there with "
                               f"data_prep/tokenize_to_mds.py --out {uri})")
    return keys


def read_s3_object(uri: str, name: str) -> Optional[bytes]:
    """The bytes of object `name` under `uri`, or None when there is none; RemoteStoreError (one line, in seconds)
    when the store cannot be asked."""
    bucket, prefix = split_s3_uri(uri)
    client = s3_client()
    try:
        return client.get_object(Bucket=bucket, Key=join_key(prefix, name))["Body"].read()
    except Exception as err:  # noqa: BLE001 -- botocore's own failures become a line; anything else re-raises
        from botocore.exceptions import ClientError

        if isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == "NoSuchKey":
            return None
        line = describe_failure(err, uri, bucket, endpoint_of(client))
        if line is None:
            raise
        raise RemoteStoreError(line) from None
