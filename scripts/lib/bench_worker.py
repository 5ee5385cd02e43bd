"""Helpers for scripts/bench's worker figures: measuring a process's own CPU, and the boto3 anchors.

  own CMD...                          run CMD; print "<wall s> <own user+sys CPU s> <own peak RSS KiB>" of that process
                                      alone (children excluded), sampled from /proc every 10 ms
  loop QUEUE_URL IN OUT PROGRAM [MAX] the boto3 anchor: receive (MAX messages per call, 1 unless given), get, run
                                      PROGRAM input, put its output, delete, until the queue is empty; print
                                      "<wall s> <own CPU s> <tasks>"
  startup QUEUE_URL                   import boto3, make a client, one GetQueueAttributes and one ReceiveMessage
                                      (no wait); print "<wall s>"
  enqueue QUEUE_URL KEYFILE           SendMessageBatch of 10, one call at a time; print "<wall s> <messages>"
  fill QUEUE_URL BUCKET COUNT SIZE    upload COUNT objects of SIZE bytes and queue one message each
  count-requests LOG                  lines in a moto log that are requests
Endpoints and keys come from the usual AWS_* variables.
"""
import os
import resource
import subprocess
import sys
import tempfile
import time


def own(argv):
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    tick = os.sysconf("SC_CLK_TCK")
    cpu, hwm = 0.0, 0
    while proc.poll() is None:
        try:
            fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick  # utime, stime: this process only
            for line in open(f"/proc/{proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
        time.sleep(0.01)
    print(f"{time.monotonic() - start:.3f} {cpu:.3f} {hwm}")
    return proc.returncode


def client(service):
    import boto3
    return boto3.client(service, endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


def loop(queue, bucket_in, bucket_out, program, most=1):
    start = time.monotonic()
    sqs, s3 = client("sqs"), client("s3")
    tasks, empty = 0, 0
    with tempfile.TemporaryDirectory() as work:
        while empty < 2:
            messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=most, WaitTimeSeconds=1).get("Messages", [])
            if not messages:
                empty += 1
                continue
            empty = 0
            for m in messages:
                key = m["Body"]
                path = os.path.join(work, os.path.basename(key))
                s3.download_file(bucket_in, key, path)
                out = subprocess.run([program, path], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                s3.upload_file(out, bucket_out, key + ".out")
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
                os.remove(path)
                os.remove(out)
                tasks += 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{time.monotonic() - start:.3f} {usage.ru_utime + usage.ru_stime:.3f} {tasks}")


def startup(queue):
    start = time.monotonic()
    sqs = client("sqs")
    sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])
    sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1, WaitTimeSeconds=0)
    print(f"{time.monotonic() - start:.3f}")


def send_batches(sqs, queue, keys):
    """One message per key, SendMessageBatch of 10, one call at a time."""
    for i in range(0, len(keys), 10):
        sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(n), "MessageBody": k}
                                                        for n, k in enumerate(keys[i:i + 10])])


def enqueue(queue, keyfile):
    keys = [k for k in open(keyfile).read().split("\n") if k]
    start = time.monotonic()
    send_batches(client("sqs"), queue, keys)
    print(f"{time.monotonic() - start:.3f} {len(keys)}")


def fill(queue, bucket, count, size):
    s3, sqs = client("s3"), client("sqs")
    body = os.urandom(size)
    keys = [f"in/{i:05d}.bin" for i in range(count)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    send_batches(sqs, queue, keys)


if __name__ == "__main__":
    verb, args = sys.argv[1], sys.argv[2:]
    if verb == "own":
        sys.exit(own(args))
    elif verb == "loop":
        loop(*args[:4], *[int(n) for n in args[4:5]])
    elif verb == "startup":
        startup(*args)
    elif verb == "enqueue":
        enqueue(*args)
    elif verb == "fill":
        fill(args[0], args[1], int(args[2]), int(args[3]))
    elif verb == "count-requests":
        print(sum(1 for line in open(args[0]) if '" 200 ' in line or '" 4' in line or '" 5' in line))
    else:
        sys.exit(f"unknown verb {verb}")
