"""A read-only stand-in for an S3-compatible service on 127.0.0.1, serving a local folder as one bucket.

Object ``<key>`` of the bucket is the file ``<root>/<key>``. It answers what a Snakemake dry-run with the
S3 storage plugin asks (boto3, path-style requests): HeadBucket, HeadObject, GetObject and ListObjectsV2
(one page). Any write is refused with 403. Enough to plan a workflow against the bucket without a network.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class FakeS3:
    endpoint: str
    bucket: str


def _iso(mtime: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(mtime, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _etag(path: Path) -> str:
    return '"' + hashlib.md5(path.read_bytes()).hexdigest() + '"'  # S3's ETag is an MD5


def _handler(root: Path, bucket: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _target(self) -> tuple[str, str, dict[str, list[str]]]:
            url = urlsplit(self.path)
            parts = unquote(url.path).lstrip("/").split("/", 1)
            return parts[0], parts[1] if len(parts) > 1 else "", parse_qs(url.query)

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _file(self, key: str) -> Path | None:
            path = (root / key).resolve()
            return path if key and path.is_file() and path.is_relative_to(root.resolve()) else None

        def _object(self, key: str) -> None:
            path = self._file(key)
            if path is None:
                self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
                return
            headers = {
                "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True),
                "ETag": _etag(path),
                "Content-Type": "application/octet-stream",
            }
            self._send(200, path.read_bytes(), headers)

        def _list(self, prefix: str) -> None:
            rows = []
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                key = path.relative_to(root).as_posix()
                if key.startswith(prefix):
                    rows.append(
                        f"<Contents><Key>{escape(key)}</Key><LastModified>{_iso(path.stat().st_mtime)}"
                        f"</LastModified><ETag>{escape(_etag(path))}</ETag><Size>{path.stat().st_size}</Size>"
                        "<StorageClass>STANDARD</StorageClass></Contents>"
                    )
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(rows)}</KeyCount>"
                f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{''.join(rows)}</ListBucketResult>"
            )
            self._send(200, body.encode(), {"Content-Type": "application/xml"})

        def _read(self) -> None:
            name, key, query = self._target()
            if name != bucket:
                self._send(404, b"<Error><Code>NoSuchBucket</Code></Error>")
            elif key:
                self._object(key)
            elif self.command == "HEAD":
                self._send(200)
            else:
                self._list(query.get("prefix", [""])[0])

        do_GET = _read
        do_HEAD = _read

        def _refuse(self) -> None:
            self._send(403, b"<Error><Code>AccessDenied</Code></Error>")

        do_PUT = _refuse
        do_POST = _refuse
        do_DELETE = _refuse

    return Handler


@contextmanager
def fake_s3(root: Path, bucket: str = "tubetune") -> Iterator[FakeS3]:
    """Serve ``root`` as ``bucket`` on 127.0.0.1 for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, bucket))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeS3(f"http://127.0.0.1:{server.server_address[1]}", bucket)
    finally:
        server.shutdown()
        server.server_close()
