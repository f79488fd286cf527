#!/usr/bin/env python3
"""botocore's own `apigatewaymanagementapi` client (SigV4, service execute-api)
against a WebSocket API's @connections endpoint: one call, one JSON line
({"status": N, "body": ...} or {"error": CODE, "status": N}).

usage: connections_client.py ENDPOINT_URL KEY_ID SECRET REGION post|get|delete ID [DATA]
"""
import json
import sys

import botocore.session
from botocore.exceptions import ClientError

url, key, secret, region, op, cid = sys.argv[1:7]
client = botocore.session.get_session().create_client(
    "apigatewaymanagementapi", endpoint_url=url, region_name=region,
    aws_access_key_id=key, aws_secret_access_key=secret)
try:
    if op == "post":
        r = client.post_to_connection(ConnectionId=cid, Data=sys.argv[7].encode())
        out = {"status": r["ResponseMetadata"]["HTTPStatusCode"]}
    elif op == "get":
        r = client.get_connection(ConnectionId=cid)
        out = {"status": r["ResponseMetadata"]["HTTPStatusCode"],
               "body": {"connectedAt": r["ConnectedAt"].isoformat(),
                        "lastActiveAt": r["LastActiveAt"].isoformat(),
                        "identity": r["Identity"]}}
    else:
        r = client.delete_connection(ConnectionId=cid)
        out = {"status": r["ResponseMetadata"]["HTTPStatusCode"]}
except ClientError as e:
    out = {"error": e.response["Error"]["Code"],
           "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
print(json.dumps(out), flush=True)
