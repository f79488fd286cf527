"""A Lambda handler run by AWS's own runtime client (awslambdaric), unchanged:
the gateway starts it with AWS_LAMBDA_RUNTIME_API set. What it does depends on
the last path segment (tests/functions.rs)."""
import base64
import json
import os
import time


def handler(event, context):
    path = event.get("rawPath") or event.get("path") or ""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last == "echo":
        # The event and the context the runtime client built from the
        # Lambda-Runtime-* headers.
        return {
            "statusCode": 200,
            "headers": {"content-type": "application/json", "x-handler": "python"},
            "body": json.dumps({
                "event": event,
                "request_id": context.aws_request_id,
                "function_name": context.function_name,
                "arn": context.invoked_function_arn,
                "remaining_ms": context.get_remaining_time_in_millis(),
                "memory": context.memory_limit_in_mb,
                "env": os.environ.get("GREETING"),
            }),
        }
    if last == "bare":
        return {"hello": "world"}
    if last == "text":
        return "Hello from Lambda!"
    if last == "raise":
        raise ValueError("boom")
    if last == "malformed":
        return {"statusCode": "teapot", "body": 1}
    if last == "sleep":
        time.sleep(float(event.get("queryStringParameters", {}).get("s", "5")))
        return "slept"
    if last == "crash":
        os._exit(3)
    if last == "pid":
        return {"statusCode": 200, "body": str(os.getpid())}
    if last == "binary":
        return {
            "statusCode": 201,
            "headers": {"content-type": "application/octet-stream"},
            "multiValueHeaders": {"x-multi": ["a", "b"]},
            "cookies": ["a=1; Path=/", "b=2"],
            "body": base64.b64encode(bytes(range(256))).decode(),
            "isBase64Encoded": True,
        }
    return {"statusCode": 404, "body": "no such test path: " + path}
