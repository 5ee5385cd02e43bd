"""Stand-ins for the two credential endpoints no local server speaks, shaped as AWS documents them (not AWS itself):

  GET /federation/credentials?account_id=A&role_name=R   IAM Identity Center's portal (GetRoleCredentials): needs the
      header x-amz-sso_bearer_token; answers {"roleCredentials": {accessKeyId, secretAccessKey, sessionToken,
      expiration (milliseconds since 1970)}}, or 401 UnauthorizedException for a token it does not know.
  GET /container/credentials   the ECS / CloudShell container endpoint: needs `Authorization: <token>`; answers
      {AccessKeyId, SecretAccessKey, Token, Expiration (ISO 8601)}.
  POST /sts/                   a shim in front of moto's STS for AssumeRoleWithWebIdentity only: AWS documents that
      call as unsigned (the token is the proof), and the SDKs send it so, but moto in signature-checking mode fails
      any request without an Authorization header (a KeyError, HTTP 500). The shim notes whether the call came
      signed, signs it with the moto user's key, and hands moto's own reply back: moto still answers the call.
  POST /token                  IAM Identity Center's OIDC CreateToken, for the refresh_token grant only: the JSON body
      {grantType, clientId, clientSecret, refreshToken} must carry the client and refresh token given on the command
      line; answers {accessToken (the portal's token), tokenType, expiresIn, refreshToken (a new one)}, else 400
      {"error": "invalid_grant"}.
  GET /_standin/stats          how many requests each path served, and with which account and role.

The credentials it hands out are given on the command line (the tests give moto's temporary ones), so every call
signed with them is checked by moto.
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STATS = {"sso": 0, "container": 0, "refused": 0, "last_account": None, "last_role": None,
         "web_identity": 0, "web_identity_signed": 0, "last_web_token": None, "oidc": 0}
LOCK = threading.Lock()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--sso-token", required=True)
    p.add_argument("--container-token", required=True)
    p.add_argument("--lifetime", type=int, default=3600)
    p.add_argument("--moto-endpoint")
    p.add_argument("--moto-key")
    p.add_argument("--moto-secret")
    p.add_argument("--oidc-client", default="client-1")
    p.add_argument("--oidc-secret", default="client-secret-1")
    p.add_argument("--oidc-refresh", default="refresh-1")
    args = p.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            if urlparse(self.path).path == "/token":
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if (body.get("grantType") != "refresh_token" or body.get("clientId") != args.oidc_client
                        or body.get("clientSecret") != args.oidc_secret or body.get("refreshToken") != args.oidc_refresh):
                    return self.send(400, {"error": "invalid_grant"})
                with LOCK:
                    STATS["oidc"] += 1
                return self.send(200, {"accessToken": args.sso_token, "tokenType": "Bearer", "expiresIn": 3600,
                                       "refreshToken": args.oidc_refresh + "-next"})
            if urlparse(self.path).path.rstrip("/") != "/sts" or not args.moto_endpoint:
                return self.send(404, {"message": "no such path"})
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            form = parse_qs(body.decode())
            if form.get("Action", [""])[0] != "AssumeRoleWithWebIdentity":
                return self.send(400, {"message": "the shim forwards AssumeRoleWithWebIdentity only"})
            with LOCK:
                STATS["web_identity"] += 1
                STATS["web_identity_signed"] += 1 if self.headers.get("Authorization") else 0
                STATS["last_web_token"] = form.get("WebIdentityToken", [None])[0]
            import botocore.auth
            import botocore.awsrequest
            import botocore.credentials
            import urllib.request
            request = botocore.awsrequest.AWSRequest(
                method="POST", url=args.moto_endpoint + "/", data=body,
                headers={"Content-Type": self.headers.get("Content-Type")})
            botocore.auth.SigV4Auth(
                botocore.credentials.Credentials(args.moto_key, args.moto_secret), "sts", "us-east-1"
            ).add_auth(request)
            forwarded = urllib.request.Request(
                args.moto_endpoint + "/", data=body, headers=dict(request.headers.items()), method="POST")
            try:
                with urllib.request.urlopen(forwarded, timeout=30) as reply:
                    status, data = reply.status, reply.read()
            except urllib.error.HTTPError as e:
                status, data = e.code, e.read()
            self.send_response(status)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            expires = time.time() + args.lifetime
            if url.path == "/_standin/stats":
                with LOCK:
                    return self.send(200, STATS)
            if url.path == "/federation/credentials":
                query = parse_qs(url.query)
                if self.headers.get("x-amz-sso_bearer_token") != args.sso_token:
                    with LOCK:
                        STATS["refused"] += 1
                    return self.send(401, {"message": "Session token not found or invalid"})
                if "account_id" not in query or "role_name" not in query:
                    return self.send(400, {"message": "account_id and role_name are required"})
                with LOCK:
                    STATS["sso"] += 1
                    STATS["last_account"] = query["account_id"][0]
                    STATS["last_role"] = query["role_name"][0]
                return self.send(200, {"roleCredentials": {
                    "accessKeyId": args.key, "secretAccessKey": args.secret, "sessionToken": args.token,
                    "expiration": int(expires * 1000)}})
            if url.path == "/container/credentials":
                if self.headers.get("Authorization") != args.container_token:
                    with LOCK:
                        STATS["refused"] += 1
                    return self.send(401, {"message": "unauthorized"})
                with LOCK:
                    STATS["container"] += 1
                return self.send(200, {
                    "AccessKeyId": args.key, "SecretAccessKey": args.secret, "Token": args.token,
                    "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))})
            self.send(404, {"message": "no such path"})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
