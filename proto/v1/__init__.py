"""feedline.v1 gRPC stubs (generated: ``python -m feedline.proto.generate``) and the fast frame-stream calls.

CollateStream and StreamDataset answer with ``Frame`` messages. The generated stub parses each one (a copy of
every frame); :func:`frame_stream_calls` instead hands over the serialized bytes, from which
:func:`feedline.proto.unwrap_frame` takes the frame without copying.
"""

from __future__ import annotations

from typing import Any

from . import feedline_pb2, feedline_pb2_grpc

__all__ = [
    "CHANNEL_OPTIONS",
    "COLLATE",
    "COLLATE_STREAM",
    "ERROR_METADATA_KEY",
    "LIST_PROCESSORS",
    "RESUME_METADATA_KEY",
    "SERVICE_NAME",
    "STREAM_DATASET",
    "feedline_pb2",
    "feedline_pb2_grpc",
    "frame_stream_calls",
]

SERVICE_NAME = "feedline.v1.Feedline"
COLLATE = f"/{SERVICE_NAME}/Collate"
COLLATE_STREAM = f"/{SERVICE_NAME}/CollateStream"
STREAM_DATASET = f"/{SERVICE_NAME}/StreamDataset"
LIST_PROCESSORS = f"/{SERVICE_NAME}/ListProcessors"
"""gRPC method paths, one definition for the servers, the client and the tests."""

ERROR_METADATA_KEY = "feedline-error"
"""Trailing metadata key of a failed call: the error body ``{kind, message, sample, field}`` as JSON."""
RESUME_METADATA_KEY = "feedline-resume-batch"
"""Trailing metadata of a StreamDataset call that ended before its range did: the batch index to continue from."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 256 << 20),
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.http2.write_buffer_size", 8 << 20),
    ("grpc.http2.lookahead_bytes", 16 << 20),
)
"""Channel options for large batches (measured on loopback: the write buffer and the 16 MiB stream window
take 32 MB batches in 1 MiB frames from ~0.3-0.6 GB/s to ~1.1-1.4 GB/s); servers use them too."""


def frame_stream_calls(channel: Any) -> tuple[Any, Any]:
    """(CollateStream, StreamDataset) callables whose responses are serialized ``Frame`` bytes, unparsed."""
    collate_stream = channel.stream_stream(
        COLLATE_STREAM, request_serializer=feedline_pb2.CollateRequest.SerializeToString, response_deserializer=None
    )
    stream_dataset = channel.unary_stream(
        STREAM_DATASET,
        request_serializer=feedline_pb2.StreamDatasetRequest.SerializeToString,
        response_deserializer=None,
    )
    return collate_stream, stream_dataset
