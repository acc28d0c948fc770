"""A real S3 protocol server on 127.0.0.1 for the object-storage tests: moto in server mode,
started in this process (no network). ``s3_server`` sets ``AWS_ENDPOINT_URL`` (genoray forwards
the endpoint to Ray workers) and dummy credentials for the session; the same credentials are set
by ``tests/conftest.py`` before any Ray starts, because genoray never forwards credentials (see
``genoray.infra.fs.forwarded_env``): workers read them from their node's environment.
``s3_bucket`` gives each test a fresh bucket URI."""

from __future__ import annotations

import os
import uuid

import pytest

ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def s3_server():
    """``http://127.0.0.1:<port>`` of a moto S3 server running for the whole session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    old = {k: os.environ.get(k) for k in ENV}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """``s3://<fresh bucket>``."""
    import boto3

    name = f"gr-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"
