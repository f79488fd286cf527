#!/usr/bin/env python3
"""Creates, through botocore against moto's server, what the aws integration
tests call: a queue, a Kinesis stream and a Step Functions state machine.
Prints one JSON line of their names. Also: `get-records STREAM`, `describe
EXECUTION_ARN` and `receive QUEUE_URL` to check what the gateway did.

usage: aws_setup.py ENDPOINT setup | records STREAM | execution ARN | receive URL
"""
import json
import sys

import botocore.session

endpoint = sys.argv[1]
session = botocore.session.get_session()
kw = dict(region_name="us-east-1", endpoint_url=endpoint,
          aws_access_key_id="test", aws_secret_access_key="test")


def client(name):
    return session.create_client(name, **kw)


cmd = sys.argv[2]
if cmd == "setup":
    q = client("sqs").create_queue(QueueName="orders")["QueueUrl"]
    k = client("kinesis")
    k.create_stream(StreamName="clicks", ShardCount=1)
    sm = client("stepfunctions").create_state_machine(
        name="flow",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/flow",
    )["stateMachineArn"]
    print(json.dumps({"queue": q, "stream": "clicks", "machine": sm}), flush=True)
elif cmd == "records":
    k = client("kinesis")
    shard = k.describe_stream(StreamName=sys.argv[3])["StreamDescription"]["Shards"][0]["ShardId"]
    it = k.get_shard_iterator(StreamName=sys.argv[3], ShardId=shard,
                              ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    recs = k.get_records(ShardIterator=it)["Records"]
    print(json.dumps([[r["PartitionKey"], r["Data"].decode()] for r in recs]), flush=True)
elif cmd == "execution":
    d = client("stepfunctions").describe_execution(executionArn=sys.argv[3])
    print(json.dumps({"input": d["input"], "name": d["name"]}), flush=True)
elif cmd == "receive":
    m = client("sqs").receive_message(QueueUrl=sys.argv[3], MaxNumberOfMessages=10)
    print(json.dumps([x["Body"] for x in m.get("Messages", [])]), flush=True)
