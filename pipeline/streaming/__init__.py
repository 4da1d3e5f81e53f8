"""Streaming predictions: order events in on a Kinesis stream, estimates out on another
(docs/streaming.md). The core (events, output, core) is shared by the Lambda handler and the
consumer on Kubernetes."""
