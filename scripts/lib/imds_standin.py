"""An IMDSv2 stand-in: EC2's instance metadata service as the daemon sees it, on 127.0.0.1.

No real server here speaks IMDS (moto's ignores tokens), so this is the one imitation the project has. It behaves
as EC2 does where the daemon depends on it:
  * PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1..21600) returns a session token;
    a PUT without the header is 400, and one carrying X-Forwarded-For is 403 (EC2 refuses proxied token requests);
  * every GET needs a valid, unexpired X-aws-ec2-metadata-token, else 401 (IMDSv1 is off, HttpTokens=required);
  * user-data, instance-id, placement/region, iam/security-credentials/<role>, and spot/instance-action (404
    until a notice is set).
Role credentials are real: with --sts-endpoint it calls AssumeRole on moto and hands out moto's temporary keys,
with the Expiration it reports shortened to --credential-lifetime seconds.

Control endpoints for tests (no token needed), under /_standin/:
  POST /_standin/config  JSON: userData, instanceId, region, spotAction, credentialLifetime, failCredentials
  GET  /_standin/stats   JSON: counters (token PUTs, GETs refused for lack of a token, credential fetches)
"""
import argparse
import datetime
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE_LOCK = threading.Lock()
STATE = {
    "userData": None,
    "instanceId": "i-0123456789abcdef0",
    "region": "us-east-1",
    "role": "parallelizer-worker",
    "spotAction": None,
    "credentialLifetime": 21600,
    "failCredentials": 0,
}
TOKENS = {}
STATS = {"tokenPuts": 0, "unauthorizedGets": 0, "credentialFetches": 0, "gets": 0}
ARGS = None
CACHED = {"creds": None}


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fresh_credentials():
    lifetime = int(STATE["credentialLifetime"])
    now = time.time()
    if ARGS.sts_endpoint:
        import boto3

        sts = boto3.client("sts", endpoint_url=ARGS.sts_endpoint, region_name="us-east-1",
                           aws_access_key_id=ARGS.sts_key, aws_secret_access_key=ARGS.sts_secret)
        c = sts.assume_role(RoleArn=ARGS.role_arn, RoleSessionName="imds-standin",
                            DurationSeconds=max(900, lifetime))["Credentials"]
        key, secret, token = c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"]
    else:
        key, secret, token = ARGS.static_key, ARGS.static_secret, ARGS.static_token
    return {
        "Code": "Success",
        "LastUpdated": iso(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": iso(now + lifetime),
        "_expires": now + lifetime,
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if ARGS.verbose:
            super().log_message(fmt, *args)

    def reply(self, status, body=b"", content_type="text/plain"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_PUT(self):
        self.read_body()
        if self.path != "/latest/api/token":
            return self.reply(404, "Not Found")
        if self.headers.get("X-Forwarded-For"):
            return self.reply(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        try:
            ttl = int(ttl)
        except (TypeError, ValueError):
            return self.reply(400, "Bad Request")
        if not 1 <= ttl <= 21600:
            return self.reply(400, "Bad Request")
        token = secrets.token_urlsafe(40)
        with STATE_LOCK:
            TOKENS[token] = time.time() + ttl
            STATS["tokenPuts"] += 1
        self.reply(200, token)

    def do_POST(self):
        body = self.read_body()
        if self.path == "/_standin/config":
            update = json.loads(body or b"{}")
            with STATE_LOCK:
                STATE.update(update)
                if "credentialLifetime" in update:
                    CACHED["creds"] = None
            return self.reply(200, json.dumps(STATE), "application/json")
        self.reply(405, "Method Not Allowed")

    def do_GET(self):
        if self.path == "/_standin/stats":
            with STATE_LOCK:
                return self.reply(200, json.dumps(STATS), "application/json")
        token = self.headers.get("X-aws-ec2-metadata-token")
        with STATE_LOCK:
            STATS["gets"] += 1
            valid = token is not None and TOKENS.get(token, 0) > time.time()
            if not valid:
                STATS["unauthorizedGets"] += 1
        if not valid:
            return self.reply(401, "Unauthorized")
        path = self.path.split("?")[0]
        role = STATE["role"]
        if path == "/latest/user-data":
            if STATE["userData"] is None:
                return self.reply(404, "Not Found")
            return self.reply(200, STATE["userData"], "application/octet-stream")
        if path == "/latest/meta-data/instance-id":
            return self.reply(200, STATE["instanceId"])
        if path == "/latest/meta-data/placement/region":
            return self.reply(200, STATE["region"])
        if path == "/latest/meta-data/spot/instance-action":
            if not STATE["spotAction"]:
                return self.reply(404, "Not Found")
            return self.reply(200, json.dumps(STATE["spotAction"]), "application/json")
        if path in ("/latest/meta-data/iam/security-credentials", "/latest/meta-data/iam/security-credentials/"):
            return self.reply(200, role)
        if path == f"/latest/meta-data/iam/security-credentials/{role}":
            with STATE_LOCK:
                STATS["credentialFetches"] += 1
                if STATE["failCredentials"] > 0:
                    STATE["failCredentials"] -= 1
                    fail = True
                else:
                    fail = False
            if fail:
                return self.reply(500, "Internal Server Error")
            with STATE_LOCK:
                creds = CACHED["creds"]
                # EC2 rotates role credentials well before they expire; hand out new ones when a third is left.
                if creds is None or creds["_expires"] - time.time() < int(STATE["credentialLifetime"]) / 3:
                    creds = fresh_credentials()
                    CACHED["creds"] = creds
            public = {k: v for k, v in creds.items() if not k.startswith("_")}
            return self.reply(200, json.dumps(public), "application/json")
        self.reply(404, "Not Found")


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user-data-file")
    parser.add_argument("--instance-id")
    parser.add_argument("--region")
    parser.add_argument("--credential-lifetime", type=int)
    parser.add_argument("--sts-endpoint")
    parser.add_argument("--sts-key")
    parser.add_argument("--sts-secret")
    parser.add_argument("--role-arn")
    parser.add_argument("--static-key", default="AKIASTANDINEXAMPLE")
    parser.add_argument("--static-secret", default="standin-secret")
    parser.add_argument("--static-token", default="standin-token")
    parser.add_argument("--verbose", action="store_true")
    ARGS = parser.parse_args()
    if ARGS.user_data_file:
        with open(ARGS.user_data_file, encoding="utf-8", errors="surrogateescape") as f:
            STATE["userData"] = f.read()
    if ARGS.instance_id:
        STATE["instanceId"] = ARGS.instance_id
    if ARGS.region:
        STATE["region"] = ARGS.region
    if ARGS.credential_lifetime:
        STATE["credentialLifetime"] = ARGS.credential_lifetime
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
