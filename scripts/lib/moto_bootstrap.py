"""Creates the IAM identity that a moto_server in auth mode will accept, and prints shell exports.

moto is started with INITIAL_NO_AUTH_ACTION_COUNT=3: the first three calls below are free, and from then on every request
must be signed by a key moto knows. The user gets an allow-all policy (moto then checks signatures, not policy),
and a role that tests assume to get temporary credentials with a session token, like an instance role.
"""
import json
import sys

import boto3

endpoint = sys.argv[1]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam.create_user(UserName="parallelizer-test")
iam.put_user_policy(UserName="parallelizer-test", PolicyName="all",
                    PolicyDocument=json.dumps({"Version": "2012-10-17",
                                               "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="parallelizer-test")["AccessKey"]
# From here on every call is signed with the new key, as moto now demands.
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
role = iam.create_role(RoleName="parallelizer-worker", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
iam.put_role_policy(RoleName="parallelizer-worker", PolicyName="all",
                    PolicyDocument=json.dumps({"Version": "2012-10-17",
                                               "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
print(f"export PZ_TEST_MOTO_KEY={key['AccessKeyId']}")
print(f"export PZ_TEST_MOTO_SECRET={key['SecretAccessKey']}")
print(f"export PZ_TEST_MOTO_ROLE_ARN={role['Arn']}")
sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
session = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="tests", DurationSeconds=43200)["Credentials"]
print(f"export PZ_TEST_MOTO_SESSION_KEY={session['AccessKeyId']}")
print(f"export PZ_TEST_MOTO_SESSION_SECRET={session['SecretAccessKey']}")
print(f"export PZ_TEST_MOTO_SESSION_TOKEN={session['SessionToken']}")
