"""Building the wire requests from plain Python arguments (validated names, msgpack samples)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
from google.protobuf import struct_pb2

from feedline.proto import FingerprintMismatch, InvalidOptions, InvalidSample, UnknownProcessor
from feedline.proto.v1 import feedline_pb2 as pb

__all__ = ["check_fingerprint", "collate_request", "fingerprint_of", "options_message", "pack_rows"]

_OPTION_FIELDS = frozenset(f.name for f in pb.CollateOptions.DESCRIPTOR.fields)


def options_message(options: Mapping[str, Any]) -> pb.CollateOptions:
    """CollateOptions message from keyword options; unknown names fail here, before any request is sent."""
    unknown = sorted(set(options) - _OPTION_FIELDS)
    if unknown:
        raise InvalidOptions(f"unknown option(s) {unknown}; known: {sorted(_OPTION_FIELDS)}", field=unknown[0])
    msg = pb.CollateOptions()
    for name, value in options.items():
        if value is None:
            continue
        if name == "packing":
            packing = struct_pb2.Struct()
            packing.update(dict(value))
            msg.packing.CopyFrom(packing)
        else:
            setattr(msg, name, value)
    return msg


def collate_request(
    processor: str,
    fingerprint: str,
    options: pb.CollateOptions,
    samples: Sequence[Mapping[str, Any]] | bytes,
    batch_index: int,
    ragged: bool = True,
) -> pb.CollateRequest:
    """The request for one batch; ``samples`` are rows, or rows already packed by ``pack_rows`` (the receiver
    process passes the trainer's bytes through), and travel as one msgpack array, serialised once. With
    ``ragged``, text rows come back unpadded (``proto._ragged``): every decode path here pads them."""
    return pb.CollateRequest(
        processor=processor,
        fingerprint=fingerprint,
        options=options,
        samples_msgpack=samples if isinstance(samples, bytes) else pack_rows(samples),
        batch_index=batch_index,
        ragged=ragged,
    )


def pack_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Rows as one msgpack array; a row msgpack cannot hold is an InvalidSample naming it."""
    try:
        packed: bytes = msgpack.packb(rows)
        return packed
    except (TypeError, ValueError, OverflowError):
        for index, row in enumerate(rows):
            try:
                msgpack.packb(row)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidSample(f"row cannot be serialised: {exc}", sample=index) from None
        raise


def check_fingerprint(answered: str, pinned: str) -> None:
    """A replica that answered with another processor than the pinned one is an error, never other tokens."""
    if pinned and answered and answered != pinned:
        raise FingerprintMismatch(f"replica answered with processor {answered}, pinned {pinned}")


def fingerprint_of(response: pb.ListProcessorsResponse, processor: str) -> str:
    """The fingerprint a replica reports for ``processor`` (to pin it for the rest of the run)."""
    for info in response.processors:
        if info.name == processor or (not processor and info is response.processors[0]):
            return str(info.fingerprint)
    raise UnknownProcessor(f"no replica processor named {processor!r}", field="processor")
