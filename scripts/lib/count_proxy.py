#!/usr/bin/env python3
"""A proxy that counts AWS requests by kind, for scripts/bench's cost figures. Not a test peer: it forwards every
request unchanged (method, path, headers with their Host, body) to one backend and streams the reply back, and
tallies each as `service:Action` (SQS and DynamoDB by their X-Amz-Target or Action, S3 by its method and query).

    count_proxy.py PORT BACKEND_URL        GET /_counts gives the tally as JSON; POST /_reset clears it.
"""
import http.client
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
BACKEND = urllib.parse.urlsplit(sys.argv[2])
COUNTS = {}
LOCK = threading.Lock()


def kind(method, path, headers, body):
    target = headers.get("X-Amz-Target", "")
    if target:
        service, _, action = target.partition(".")
        prefix = "sqs" if service.startswith("AmazonSQS") else "dynamodb" if service.startswith("DynamoDB") else service
        return f"{prefix}:{action}"
    parsed = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    form = {}
    if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded") and body:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    action = (form.get("Action") or query.get("Action") or [None])[0]
    if action:
        return f"query:{action}"
    # S3, path style: /bucket/key
    if method == "GET" and "list-type" in query:
        return "s3:ListObjectsV2"
    if method == "GET" and "uploads" in query:
        return "s3:ListMultipartUploads"
    if method == "GET":
        return "s3:GetObject" + (" (range)" if "Range" in headers else "")
    if method == "HEAD":
        return "s3:HeadObject"
    if method == "PUT" and "partNumber" in query:
        return "s3:UploadPart"
    if method == "PUT":
        return "s3:PutObject"
    if method == "POST" and "uploads" in query:
        return "s3:CreateMultipartUpload"
    if method == "POST" and "uploadId" in query:
        return "s3:CompleteMultipartUpload"
    if method == "DELETE" and "uploadId" in query:
        return "s3:AbortMultipartUpload"
    if method == "DELETE":
        return "s3:DeleteObject"
    return f"s3:{method}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        if self.path == "/_counts":
            with LOCK:
                data = json.dumps(COUNTS).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if self.path == "/_reset":
            with LOCK:
                COUNTS.clear()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        body = self.read_chunked() if chunked else (self.rfile.read(length) if length else b"")
        name = kind(self.command, self.path, self.headers, body[:4096] if len(body) < 1 << 20 else b"")
        with LOCK:
            COUNTS[name] = COUNTS.get(name, 0) + 1
        connection = http.client.HTTPConnection(BACKEND.hostname, BACKEND.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
        headers["Content-Length"] = str(len(body))
        connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            connection.putheader(k, v)
        connection.endheaders(body if body else None)
        reply = connection.getresponse()
        self.send_response_only(reply.status, reply.reason)
        data = reply.read()
        for k, v in reply.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        connection.close()

    def read_chunked(self):
        out = bytearray()
        while True:
            size_line = self.rfile.readline().split(b";")[0].strip()
            size = int(size_line or b"0", 16)
            if size == 0:
                # trailers, up to the empty line
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def handle_one(self):
        try:
            self.handle_any()
        except (BrokenPipeError, ConnectionResetError):
            # The client went away (a long poll cut short at the daemon's stop): counted, nothing to send.
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
