// A Node handler run by AWS's own runtime client (aws-lambda-ric), unchanged.
exports.handler = async (event, context) => ({
  statusCode: 200,
  headers: { "content-type": "application/json" },
  body: JSON.stringify({
    runtime: "node",
    rawPath: event.rawPath,
    requestId: event.requestContext.requestId,
    awsRequestId: context.awsRequestId,
  }),
});
