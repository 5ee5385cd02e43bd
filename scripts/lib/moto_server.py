"""moto_server, with one of moto's races closed (the test set-up works around its peer; the product follows AWS).

moto's ReceiveMessage checks that a message is visible and then marks it received with no lock between the two, so
two receives that arrive at once on its threaded server can both take the same message (both then report the
same ApproximateReceiveCount). SQS hands a message to one receiver within its visibility timeout. This wrapper
serializes moto's scan of a queue, and lets go of the lock while a long poll waits, so receives still wait
concurrently.

moto cannot check a presigned URL: with its signature checks on, a request that carries its SigV4 signature in the
query string (X-Amz-Signature) and no Authorization header ends in a KeyError and a 500. S3 answers it as any other
signed request. This wrapper lets an S3 GET or HEAD so signed past moto's check, unchecked (SeaweedFS checks
presigned URLs as strictly as S3, in S3SeaweedTests), so the boot test's instance can fetch its release by the URL
launch signed. The boot test therefore proves the install path, not the URL's signature.
Everything else is moto_server as installed: the same arguments, the same signature checks.

    python3 moto_server.py -H 127.0.0.1 -p PORT
"""
import sys
import threading
from urllib.parse import urlparse

from moto.core import authorization
from moto.server import main
from moto.sqs import models

_scan = threading.Lock()
_receive = models.SQSBackend.receive_message
_wait = models.Queue.wait_for_messages


def receive_message(self, *args, **kwargs):
    with _scan:
        return _receive(self, *args, **kwargs)


def wait_for_messages(self, timeout):
    # Called only from inside receive_message's scan loop, with _scan held: let other receives scan meanwhile.
    _scan.release()
    try:
        _wait(self, timeout)
    finally:
        _scan.acquire()


models.SQSBackend.receive_message = receive_message
models.Queue.wait_for_messages = wait_for_messages

_authorize = authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action


def authorize(self, iam_request_cls, resource="*"):
    # Only an S3 GET or HEAD signed in its query (a presigned download); everything else is checked as moto does.
    if (iam_request_cls.__name__ == "S3IAMRequest" and self.method in ("GET", "HEAD")
            and "Authorization" not in self.headers and "X-Amz-Signature=" in urlparse(self.uri).query):
        return
    return _authorize(self, iam_request_cls, resource)


authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action = authorize

if __name__ == "__main__":
    main(sys.argv[1:])
