"""A local S3 endpoint (moto's server) on 127.0.0.1, to try the remote flow without a cloud account.

`make s3-local` runs `python -m tuneledger.core.s3local` in the background and points the `storage`
remote at it through .dvc/config.local; the tests start the same server in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import threading

from tuneledger.core.errors import TuneLedgerError, friendly_errors

HOST = "127.0.0.1"  # loopback only: the endpoint accepts any credentials
BUCKET = "tuneledger-local"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "tuneledger-local", "AWS_SECRET_ACCESS_KEY": "tuneledger-local"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class LocalS3:
    """A running moto S3 server with one bucket."""

    def __init__(self, port: int | None = None, bucket: str = BUCKET):
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:  # moto is a test extra: a user's environment may not have it
            raise TuneLedgerError(
                "a local S3 endpoint needs moto, a test extra: run `make test-setup` or "
                "`pip install 'moto[server]'`"
            ) from None

        self.port = port or free_port()
        self.bucket = bucket
        self.server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def start(self) -> LocalS3:
        self.server.start()
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        self.server.stop()


def configure_remote(endpoint: str, bucket: str = BUCKET, remote: str = "storage", cwd: str = ".") -> None:
    """Point a DVC remote at the local endpoint; everything goes to the untracked config.local."""
    settings = {
        "url": f"s3://{bucket}/dvc",
        "endpointurl": endpoint,
        "access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    for key, value in settings.items():
        subprocess.run(
            [sys.executable, "-m", "dvc", "remote", "modify", "--local", remote, key, value],
            cwd=cwd,
            check=True,
            capture_output=True,
        )


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--configure", action="store_true", help="point the `storage` remote at it")
    args = parser.parse_args()
    server = LocalS3(args.port).start()
    if args.configure:
        configure_remote(server.endpoint)
    print(f"local S3 on {server.endpoint}, bucket {server.bucket}; stop with Ctrl-C", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
