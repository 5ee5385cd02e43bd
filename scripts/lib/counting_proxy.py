"""An HTTP reverse proxy that counts the AWS requests passing through it, by operation, for tests that bound how many
calls a command makes. Not an AWS imitation: every request goes on to the upstream (moto) unchanged, Host header
included, so signatures still hold, and the upstream's reply comes back unchanged.

    python3 counting_proxy.py --upstream http://127.0.0.1:PORT --port-file FILE

  GET  /_proxy/stats    {"total": N, "operations": {"SQS GetQueueAttributes": 1, "S3 GET list": 2, ...}}
  POST /_proxy/reset    counts back to zero
"""
import argparse
import http.client
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

COUNTS = {}
LOCK = threading.Lock()


def operation(method, path, headers, body):
    target = headers.get("X-Amz-Target")
    if target:
        service, _, name = target.partition(".")
        return ("SQS " if "SQS" in service else service.split("_")[0] + " ") + name
    if method == "POST" and body:
        action = parse_qs(body.decode(errors="replace")).get("Action")
        if action:
            return "query " + action[0]
    # S3 by its method, and what the query or a Range says it is (scripts/bench's cost figures price them apart).
    query = parse_qs(urlparse(path).query, keep_blank_values=True)
    if "list-type" in query:
        return "S3 GET list"
    if method == "GET" and "Range" in headers:
        return "S3 GET range"
    if method == "PUT" and "partNumber" in query:
        return "S3 PUT part"
    if method == "POST" and "uploads" in query:
        return "S3 POST create-multipart"
    if method == "POST" and "uploadId" in query:
        return "S3 POST complete-multipart"
    return "S3 " + method


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True)
    p.add_argument("--port-file", required=True)
    args = p.parse_args()
    upstream = urlparse(args.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def forward(self):
            if self.path.startswith("/_proxy/stats"):
                with LOCK:
                    return self.reply(200, {"total": sum(COUNTS.values()), "operations": COUNTS})
            if self.path.startswith("/_proxy/reset"):
                with LOCK:
                    COUNTS.clear()
                return self.reply(200, {})
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            name = operation(self.command, self.path, self.headers, body)
            with LOCK:
                COUNTS[name] = COUNTS.get(name, 0) + 1
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
            conn.request(self.command, self.path, body=body if length else None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            self.send_response(response.status)
            for k, v in response.getheaders():
                if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        def forward_once(self):
            try:
                self.forward()
            except (BrokenPipeError, ConnectionResetError):
                # The client went away (a long poll cut short at a stop): counted, nothing left to send.
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward_once

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
