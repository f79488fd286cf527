"""A Lambda handler for a WebSocket API route (tests/websocket_api.rs), run by
awslambdaric: answers with what the event says."""
import json


def handler(event, context):
    rc = event["requestContext"]
    return {"statusCode": 200, "body": json.dumps({
        "route": rc["routeKey"], "type": rc["eventType"],
        "connection": rc["connectionId"], "body": event.get("body"),
    })}
