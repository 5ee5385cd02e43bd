"""Demo set-up on a local moto: buckets, a queue with a dead-letter queue, sample inputs, the environment zip, and one
message per input. Prints shell exports for the demo script. (The `enqueue` subcommand will take over the sending.)"""
import io
import json
import os
import random
import sys
import zipfile

import boto3

endpoint, env_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = dict(endpoint_url=endpoint, region_name="us-east-1",
          aws_access_key_id=os.environ["PZ_TEST_MOTO_KEY"], aws_secret_access_key=os.environ["PZ_TEST_MOTO_SECRET"])
s3 = boto3.client("s3", **kw)
sqs = boto3.client("sqs", **kw)
for bucket in ("demo-input", "demo-output"):
    s3.create_bucket(Bucket=bucket)
dlq = sqs.create_queue(QueueName="demo-dead-letters")["QueueUrl"]
dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
queue = sqs.create_queue(QueueName="demo-work", Attributes={
    "VisibilityTimeout": "60",
    "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
})["QueueUrl"]

buffer = io.BytesIO()
with zipfile.ZipFile(buffer, "w") as z:
    for root, _, files in os.walk(env_dir):
        for name in files:
            path = os.path.join(root, name)
            z.write(path, os.path.relpath(path, env_dir))
s3.put_object(Bucket="demo-input", Key="environment/demo-env.zip", Body=buffer.getvalue())

words = ("cloud fleet queue message bucket object worker spot instance file data result retry drain "
         "signal shutdown parallel swift curl sign request").split()
rng = random.Random(42)
keys = []
for i in range(count):
    folder = ["reads", "samples/2026", "samples/2025"][i % 3]
    key = f"{folder}/doc-{i:03d}.txt"
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(rng.randint(20, 80))]
    s3.put_object(Bucket="demo-input", Key=key, Body="\n".join(lines).encode(), ContentType="text/plain")
    keys.append(key)
for start in range(0, len(keys), 10):
    sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(n), "MessageBody": k} for n, k in enumerate(keys[start:start + 10])])
print(f"export DEMO_QUEUE_URL={queue}")
print(f"export DEMO_DLQ_URL={dlq}")
