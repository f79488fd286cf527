"""A Lambda handler, as it would run in AWS: shardgate starts it with AWS's own
runtime client (python3 -m awslambdaric app.handler) and AWS_LAMBDA_RUNTIME_API
pointed at itself. Nothing in it knows about shardgate."""
import json
import os


def hello(event, context):
    # Payload format 2.0: a bare return value becomes a 200 JSON response.
    name = (event.get("queryStringParameters") or {}).get("name", "world")
    return {"message": f"hello, {name}", "table": os.environ.get("TABLE")}


def pets(event, context):
    # A full proxy response: status, headers, cookies, body.
    pet_id = (event.get("pathParameters") or {}).get("id")
    if pet_id != "1":
        return {"statusCode": 404, "body": json.dumps({"message": "no such pet"})}
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "cookies": ["seen=1; Path=/"],
        "body": json.dumps({"id": 1, "name": "Rex",
                            "requestId": event["requestContext"]["requestId"]}),
    }


def constant(event, context):
    # The benchmark's handler (load-tests/functions.sh).
    return {"statusCode": 200, "body": "ok"}
