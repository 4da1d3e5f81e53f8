"""The one local S3: moto's server on a free loopback port, a versioned bucket, synthetic weeks.

Used by the local run, the tests' fixtures and the benchmarks, so that "an S3 like
production's, on this machine" is made in one way everywhere. It is the only module in
`pipeline/` that imports moto (a development requirement, never deployed).

    with LocalS3() as s3:                 # server on 127.0.0.1, any free port
        s3.point_environment_here()       # AWS_ENDPOINT_URL and dummy credentials
        bucket = s3.create_bucket("name") # versioned, as production's is
        seed_weeks(bucket, 4)             # data engineering's weekly files
        seed_orders_file(bucket, LOCAL.batch_input_key)  # a file of orders to score in batch
"""
import logging
import os
import uuid
from typing import Any, Dict, List, MutableMapping, Optional

from moto.server import ThreadedMotoServer

from pipeline.local.synthetic import generate_orders, generate_weeks
from pipeline.settings import ENVIRONMENT, LOCAL
from pipeline.storage.client import put_object_bytes, s3_client
from pipeline.storage.datasets import put_dataset

# Dummy credentials: the local server accepts any, and real ones must never reach it.
CREDENTIALS = {ENVIRONMENT.aws_access_key_id: "testing", ENVIRONMENT.aws_secret_access_key: "testing"}


class LocalS3:
    """moto's S3 server on a loopback port; a context manager that stops it on exit."""

    def __init__(self, port: int = 0, host: str = LOCAL.loopback_host) -> None:
        """`host` is loopback unless a caller needs the server reachable from elsewhere on this
        machine (the cluster test binds it to the pods' bridge address)."""
        self._port = port
        self._host = host
        self._server: Optional[ThreadedMotoServer] = None
        self.endpoint = ""

    def start(self) -> "LocalS3":
        """Start the server (port 0: any free port) and record its endpoint URL.

        Raises:
            OSError: if the port cannot be bound.
        """
        # One line per S3 request would bury everything else.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address=self._host, port=self._port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop the server if it runs."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def environment(self) -> Dict[str, str]:
        """The standard AWS variables that point boto3 (and any child process) here."""
        return {**CREDENTIALS, ENVIRONMENT.aws_endpoint_url: self.endpoint,
                ENVIRONMENT.aws_default_region: LOCAL.region}

    def point_environment_here(self, environ: Optional[MutableMapping[str, str]] = None) -> None:
        """Set `environment()` in `environ` (this process's by default) and drop AWS identities."""
        target = os.environ if environ is None else environ
        for name in ENVIRONMENT.aws_identity_variables:
            target.pop(name, None)
        target.update(self.environment())
        _bypass_proxies_for_loopback(target)

    def create_bucket(self, name: Optional[str] = None, versioned: bool = True) -> str:
        """`create_bucket` on this server, with the current environment's client.

        Call `point_environment_here` first.
        """
        return create_bucket(s3_client(), name, versioned)


def create_bucket(client: Any, name: Optional[str] = None, versioned: bool = True) -> str:
    """Create a bucket (a unique name by default), versioned like production's by default.

    Returns:
        The bucket's name.

    Raises:
        botocore's ClientError: if S3 refuses (e.g. the bucket exists).
    """
    name = name or f"ttd-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": LOCAL.region})
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def seed_weeks(
    bucket: str, weeks: int, rows_per_week: int = LOCAL.synthetic_rows_per_week, seed: int = 42, client: Any = None
) -> List[str]:
    """Upload `weeks` consecutive synthetic weekly datasets, as data engineering drops them.

    Returns:
        The keys written, oldest first.

    Raises:
        StorageError: if an upload fails.
    """
    client = client or s3_client()
    return [
        put_dataset(bucket, week.data, week.timestamp, client)
        for week in generate_weeks(weeks, rows_per_week=rows_per_week, seed=seed)
    ]


# Rows of the orders file that cannot be scored, to show the rejects object.
_UNSCORABLE_ORDERS = (("-1", "SKU001"), ("many", "SKU002"), ("12", "SKU999"))


def seed_orders_file(bucket: str, key: str, rows: int = 10_000, seed: int = 7, client: Any = None) -> str:
    """Upload a synthetic file of orders to score (`order_id,orders_placed,product_code`),
    with three rows that cannot be scored at the end.

    Returns:
        The key written.

    Raises:
        StorageError: if the upload fails.
    """
    orders = generate_orders(rows, seed=seed)
    lines = ["order_id,orders_placed,product_code"]
    lines += [f"ORD-{i:07d},{orders_placed},{code}"
              for i, (orders_placed, code) in enumerate(zip(orders["orders_placed"], orders["product_code"]))]
    lines += [f"ORD-{rows + i:07d},{orders_placed},{code}"
              for i, (orders_placed, code) in enumerate(_UNSCORABLE_ORDERS)]
    return put_object_bytes(bucket, key, ("\n".join(lines) + "\n").encode(), "text/csv", client)


def _bypass_proxies_for_loopback(environ: MutableMapping[str, str]) -> None:
    # Loopback traffic must never go through a proxy from the environment.
    for name in ENVIRONMENT.no_proxy_variables:
        hosts = [h for h in environ.get(name, "").split(",") if h]
        environ[name] = ",".join(hosts + [h for h in (LOCAL.loopback_host, "localhost") if h not in hosts])
