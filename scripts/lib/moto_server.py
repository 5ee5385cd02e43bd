"""moto_server, with one of moto's races closed (the test set-up works around its peer; the product follows AWS).

moto's ReceiveMessage checks that a message is visible and then marks it received with no lock between the two, so
two receives that arrive at once on its threaded server can both take the same message (both then report the
same ApproximateReceiveCount). SQS hands a message to one receiver within its visibility timeout. This wrapper
serializes moto's scan of a queue, and lets go of the lock while a long poll waits, so receives still wait
concurrently. Everything else is moto_server as installed: the same arguments, the same signature checks.

    python3 moto_server.py -H 127.0.0.1 -p PORT
"""
import sys
import threading

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

if __name__ == "__main__":
    main(sys.argv[1:])
