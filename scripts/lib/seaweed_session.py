"""Assumes SeaweedFS's test role (scripts/lib/seaweed-iam.json) and prints the temporary credentials as exports."""
import sys

import boto3

endpoint, key, secret = sys.argv[1:4]
sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id=key, aws_secret_access_key=secret)
c = sts.assume_role(RoleArn="arn:aws:iam::000000000000:role/WorkerRole", RoleSessionName="tests")["Credentials"]
print(f"export PZ_TEST_SEAWEED_SESSION_KEY={c['AccessKeyId']}")
print(f"export PZ_TEST_SEAWEED_SESSION_SECRET={c['SecretAccessKey']}")
print(f"export PZ_TEST_SEAWEED_SESSION_TOKEN={c['SessionToken']}")
