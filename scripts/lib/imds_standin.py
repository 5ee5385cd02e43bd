"""An IMDSv2 stand-in: EC2's instance metadata service as the daemon sees it, on 127.0.0.1.

No real server here speaks IMDS (moto's ignores tokens), so this is the one imitation the project has. It behaves
as EC2 does where the daemon depends on it:
  * PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1..21600) returns a session token;
    a PUT without the header is 400, and one carrying X-Forwarded-For is 403 (EC2 refuses proxied token requests);
  * every GET needs a valid, unexpired X-aws-ec2-metadata-token, else 401 (IMDSv1 is off, HttpTokens=required);
  * user-data, instance-id, placement/region, iam/security-credentials/<role>, spot/instance-action and
    events/recommendations/rebalance (each 404 until a notice is set).
Role credentials are real: with --sts-endpoint it calls AssumeRole on moto and hands out moto's temporary keys,
with the Expiration it reports shortened to --credential-lifetime seconds. moto never expires those, so for tests
where expiry must bite, --rotate-user NAME hands out access keys of an IAM user instead: a new key each rotation,
and each key is deleted from moto at the Expiration it was handed out with, after which moto refuses it. (moto
refuses a session token with a user's key, so these credentials carry no Token; EC2's always do.)

Control endpoints for tests (no token needed), under /_standin/:
  POST /_standin/config  JSON: userData, instanceId, instanceType, region, spotAction, rebalance, credentialLifetime,
                         failCredentials, failUserData (the next N user-data reads answer 500, as IMDS may early in
                         a boot)
  GET  /_standin/stats   JSON: counters (token PUTs, GETs refused for lack of a token, credential fetches,
                         user keys created and deleted)
"""
import argparse
import datetime
import json
import os
import secrets
import socket
import sys
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
    "rebalance": None,
    "instanceType": "c7i.large",
    "credentialLifetime": 21600,
    "failCredentials": 0,
    "failUserData": 0,
}
TOKENS = {}
STATS = {"tokenPuts": 0, "unauthorizedGets": 0, "credentialFetches": 0, "gets": 0, "keysCreated": 0, "keysDeleted": 0}
# --rotate-user: (access key id, expiry) of keys handed out and not yet deleted.
LIVE_KEYS = []
ARGS = None
CACHED = {"creds": None}


def iso(ts):
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iam_client():
    import boto3

    return boto3.client("iam", endpoint_url=ARGS.sts_endpoint, region_name="us-east-1",
                        aws_access_key_id=ARGS.sts_key, aws_secret_access_key=ARGS.sts_secret)


def make_rotating_user():
    iam = iam_client()
    iam.create_user(UserName=ARGS.rotate_user)
    iam.put_user_policy(UserName=ARGS.rotate_user, PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))


def delete_expired_keys():
    """Deletes each rotated key at its Expiration, so moto refuses it from then on, as AWS refuses expired ones."""
    iam = iam_client()
    while True:
        now = time.time()
        with STATE_LOCK:
            due = [k for k in LIVE_KEYS if k[1] <= now]
        for key_id, expiry in due:
            iam.delete_access_key(UserName=ARGS.rotate_user, AccessKeyId=key_id)
            with STATE_LOCK:
                LIVE_KEYS.remove((key_id, expiry))
                STATS["keysDeleted"] += 1
        time.sleep(0.2)


STS = []


def sts_client():
    """One boto3 client for the stand-in's life: making one costs a second of CPU on a loaded machine, and EC2's
    IMDS answers a credentials request in milliseconds (the daemon's IMDS calls time out after 5 s)."""
    if not STS:
        import boto3

        STS.append(boto3.client("sts", endpoint_url=ARGS.sts_endpoint, region_name="us-east-1",
                                aws_access_key_id=ARGS.sts_key, aws_secret_access_key=ARGS.sts_secret))
    return STS[0]


def fresh_credentials():
    lifetime = int(STATE["credentialLifetime"])
    now = time.time()
    if ARGS.rotate_user:
        key = iam_client().create_access_key(UserName=ARGS.rotate_user)["AccessKey"]
        LIVE_KEYS.append((key["AccessKeyId"], now + lifetime))
        STATS["keysCreated"] += 1
        return {
            "Code": "Success", "LastUpdated": iso(now), "Type": "AWS-HMAC", "AccessKeyId": key["AccessKeyId"],
            "SecretAccessKey": key["SecretAccessKey"], "Expiration": iso(now + lifetime), "_expires": now + lifetime,
        }
    if ARGS.sts_endpoint:
        c = sts_client().assume_role(RoleArn=ARGS.role_arn, RoleSessionName="imds-standin",
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
                    # EC2 has role credentials ready before they are asked for; a credentials GET that waited for a
                    # loaded moto's AssumeRole would pass the daemon's 5-second IMDS timeout. (Keys of a rotating
                    # user are made when handed out: their count is what the tests read.)
                    if ARGS.sts_endpoint and not ARGS.rotate_user:
                        CACHED["creds"] = fresh_credentials()
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
            with STATE_LOCK:
                failing = STATE["failUserData"] > 0
                if failing:
                    STATE["failUserData"] -= 1
            if failing:
                return self.reply(500, "Internal Server Error")
            if STATE["userData"] is None:
                return self.reply(404, "Not Found")
            return self.reply(200, STATE["userData"], "application/octet-stream")
        if path == "/latest/meta-data/instance-id":
            return self.reply(200, STATE["instanceId"])
        if path == "/latest/meta-data/instance-type":
            return self.reply(200, STATE["instanceType"])
        if path == "/latest/meta-data/placement/region":
            return self.reply(200, STATE["region"])
        if path == "/latest/meta-data/spot/instance-action":
            if not STATE["spotAction"]:
                return self.reply(404, "Not Found")
            return self.reply(200, json.dumps(STATE["spotAction"]), "application/json")
        if path == "/latest/meta-data/events/recommendations/rebalance":
            if not STATE["rebalance"]:
                return self.reply(404, "Not Found")
            return self.reply(200, json.dumps(STATE["rebalance"]), "application/json")
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
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port (see --port-file)")
    parser.add_argument("--host", action="append",
                        help="an address to listen on (repeatable; IPv6 too); default 127.0.0.1. In a network "
                             "namespace of a test's own, 169.254.169.254 and fd00:ec2::254 as on EC2")
    parser.add_argument("--port-file", help="write the port listened on here, once listening")
    parser.add_argument("--user-data-file")
    parser.add_argument("--instance-id")
    parser.add_argument("--region")
    parser.add_argument("--credential-lifetime", type=int)
    parser.add_argument("--sts-endpoint")
    parser.add_argument("--sts-key")
    parser.add_argument("--sts-secret")
    parser.add_argument("--role-arn")
    parser.add_argument("--rotate-user", help="hand out keys of this new IAM user, each deleted at its expiration")
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
    if ARGS.sts_endpoint and not ARGS.rotate_user:
        try:
            CACHED["creds"] = fresh_credentials()  # ready before the first request, as on EC2
        except Exception as error:  # noqa: BLE001 - the first GET tries again
            print(f"no role credentials yet: {error}", file=sys.stderr)
    if ARGS.rotate_user:
        make_rotating_user()
        threading.Thread(target=delete_expired_keys, daemon=True).start()
    servers = []
    for host in ARGS.host or ["127.0.0.1"]:
        cls = ThreadingHTTPServer
        if ":" in host:
            cls = type("ThreadingHTTPServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        server = cls((host, ARGS.port), Handler)
        server.daemon_threads = True
        servers.append(server)
    if ARGS.port_file:
        with open(ARGS.port_file + ".tmp", "w") as f:
            f.write(str(servers[0].server_address[1]))
        os.rename(ARGS.port_file + ".tmp", ARGS.port_file)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
