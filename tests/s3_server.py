"""A real S3-protocol server on localhost for the object-store tests: moto's server in a thread of the test process,
with credential checking on (a user with full S3 access; any other key is refused, as a real store does).

`S3Server.start()` / `.stop()` are used by conftest's session fixture `s3_server`; the per-test fixture `s3` sets
the environment (S3_ENDPOINT_URL, AWS_*) that mosaicml-streaming and our code read, and makes a fresh bucket."""

import itertools
import logging
import json
import socket
import urllib.request

REGION = "us-east-1"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self):
        self.endpoint = ""
        self.access_key = self.secret_key = ""
        self._server = None
        self._buckets = itertools.count()

    def start(self) -> "S3Server":
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        # Credentials are not checked yet: make a user with full access, then turn checking on for every request.
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="tests")
        arn = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(ADMIN_POLICY))["Policy"]["Arn"]
        iam.attach_user_policy(UserName="tests", PolicyArn=arn)
        key = iam.create_access_key(UserName="tests")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def env(self) -> dict[str, str]:
        """The environment a process needs to use this server with the valid credentials."""
        return {"S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": REGION}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)

    def new_bucket(self) -> str:
        name = f"bucket-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))
