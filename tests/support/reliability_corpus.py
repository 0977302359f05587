"""The malformed-request corpus, as data: one Case per request, with the answer the service promises.

A case names its category, the HTTP body (sent as raw JSON text, so NaN and lone-surrogate escapes survive)
and/or the gRPC request, and the expected answer on each transport: HTTP status + JSON ``error`` object, or gRPC
status + ``feedline-error`` trailer, both with ``kind``, ``sample`` and ``field``. The gRPC request is derived
from the HTTP body unless a case gives its own; ``kind=None`` marks a refusal by gRPC core itself (framing,
size), which carries no feedline trailer. ``@ROOT@`` and ``@OUTSIDE@`` in strings stand for the test's media
root and a directory outside every root (``harness.Layout``).
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

from feedline.proto.v1 import feedline_pb2 as pb
from tests.support.media import encode, noise, png_declaring

__all__ = ["CASES", "GRPC_CODE", "HTTP_STATUS", "LIMITS", "OK", "PNG", "Case", "Expect", "RawFrame"]

HTTP_STATUS = {
    "invalid_request": 400,
    "invalid_sample": 400,
    "media_error": 400,
    "invalid_options": 400,
    "codec_error": 400,
    "http": 400,
    "template_error": 422,
    "sample_too_long": 422,
    "no_supervised_tokens": 422,
    "unknown_processor": 404,
    "fingerprint_mismatch": 412,
    "request_too_large": 413,
    "request_timeout": 504,
    "service_unavailable": 503,
}
"""HTTP status per error kind (``service/server/_errors.py``; the table in RELIABILITY.md)."""

GRPC_CODE = {
    "invalid_sample": "INVALID_ARGUMENT",
    "media_error": "INVALID_ARGUMENT",
    "invalid_options": "INVALID_ARGUMENT",
    "codec_error": "INVALID_ARGUMENT",
    "template_error": "INVALID_ARGUMENT",
    "sample_too_long": "INVALID_ARGUMENT",
    "no_supervised_tokens": "INVALID_ARGUMENT",
    "unknown_processor": "NOT_FOUND",
    "fingerprint_mismatch": "FAILED_PRECONDITION",
    "request_too_large": "RESOURCE_EXHAUSTED",
    "request_timeout": "DEADLINE_EXCEEDED",
    "service_unavailable": "UNAVAILABLE",
}
"""gRPC status per error kind (the same table, as gRPC codes)."""

LIMITS = {"max_request_bytes": 4 << 20, "max_samples_per_request": 64}
"""The corpus server's limits (small, so oversize cases stay cheap)."""


@dataclass(frozen=True)
class Expect:
    """An answer: HTTP status or gRPC code name, error kind (None: gRPC core's own refusal), sample, field."""

    code: int | str
    kind: str | None
    sample: int | None = None
    field: str | None = None


@dataclass(frozen=True)
class RawFrame:
    """A gRPC call written frame by frame over HTTP/2 (a 5-byte prefix gRPC's own client would never send)."""

    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    body: Any = None
    http: Expect | None = None
    grpc: Expect | None = None
    grpc_request: Any = None  # None: derived from ``body``; else a protobuf message, raw bytes or a RawFrame
    path: str = "/v1/collate"
    method: str = "Collate"

    @property
    def id(self) -> str:
        return f"{self.category}:{self.name}"


def _expect(kind: str, sample: int | None, field: str | None, *, grpc: bool) -> Expect:
    return Expect(GRPC_CODE[kind] if grpc else HTTP_STATUS[kind], kind, sample, field)


def both(
    category: str, name: str, body: Any, kind: str, sample: int | None = None, field: str | None = None, **kw: Any
) -> Case:
    """The same error on both transports (the gRPC request carries the same samples, processor and options)."""
    return Case(
        category, name, body, _expect(kind, sample, field, grpc=False), _expect(kind, sample, field, grpc=True), **kw
    )


def over_http(
    category: str, name: str, body: Any, kind: str, sample: int | None = None, field: str | None = None, **kw: Any
) -> Case:
    """An HTTP-only case (the body cannot be expressed as a typed protobuf request)."""
    return Case(category, name, body, _expect(kind, sample, field, grpc=False), **kw)


def over_grpc(category: str, name: str, request: Any, expect: Expect, method: str = "Collate") -> Case:
    return Case(category, name, grpc=expect, grpc_request=request, method=method)


def chat(*turns: Any, **extra: Any) -> dict[str, Any]:
    """A row from alternating user/assistant contents."""
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": c} for i, c in enumerate(turns)], **extra}


OK = chat("What is 2+2?", "4.")


def samples(*rows: Any, **fields: Any) -> dict[str, Any]:
    return {"samples": list(rows), **fields}


def image(**payload: Any) -> dict[str, Any]:
    return {"type": "image", **payload}


def vl(*parts: Any, answer: str = "A picture.") -> dict[str, Any]:
    """A request to the vision-language processor with one user turn of ``parts`` and a text answer."""
    row = {
        "messages": [
            {"role": "user", "content": [*parts, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": answer},
        ]
    }
    return samples(row, processor="vl")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audio(array: Any, rate: Any = 16000) -> dict[str, Any]:
    return {"type": "audio", "audio": {"array": array, "sampling_rate": rate}}


PNG = encode(noise(64, 48), "PNG")
_JPEG = encode(noise(256, 256), "JPEG")
_PART = "messages[0].content[0]"
_ALT = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(10_000)]


def _frame(message: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    return bytes([flag]) + struct.pack(">I", len(message) if length is None else length) + message


_GOOD = pb.CollateRequest(samples=[json.dumps(OK).encode()]).SerializeToString()
_NOT_PROTO = b"\xff\xff\xff\xff\xff\xff"


CASES: list[Case] = [
    # --- JSON shape and types -------------------------------------------------------------------------------
    over_http("shape", "body-not-json", b"{not json", "invalid_request", None, "body"),
    over_http("shape", "body-empty", b"", "invalid_request"),
    over_http("shape", "body-is-a-list", [OK], "invalid_request"),
    over_http("shape", "body-is-a-string", "samples", "invalid_request"),
    over_http("shape", "samples-missing", {"options": {}}, "invalid_request", None, "samples"),
    over_http("shape", "samples-not-a-list", {"samples": 5}, "invalid_request", None, "samples"),
    Case(
        "shape",
        "samples-empty",
        samples(),
        Expect(400, "invalid_request", None, "samples"),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "samples"),
    ),
    Case(
        "shape",
        "sample-is-a-number",
        samples(OK, 7),
        Expect(400, "invalid_request", 1, "samples.1"),
        Expect("INVALID_ARGUMENT", "invalid_sample", 1, "samples"),
    ),
    Case(
        "shape",
        "sample-is-null",
        samples(None),
        Expect(400, "invalid_request", 0, "samples.0"),
        Expect("INVALID_ARGUMENT", "invalid_sample", 0, "samples"),
    ),
    over_grpc(
        "shape",
        "sample-not-json",
        pb.CollateRequest(samples=[json.dumps(OK).encode(), b"{oops"]),
        Expect("INVALID_ARGUMENT", "invalid_sample", 1, "samples"),
    ),
    both("shape", "sample-empty-object", samples({}), "invalid_sample", 0, None),
    both("shape", "messages-not-a-list", samples({"messages": "hello"}), "invalid_sample", 0, "messages"),
    both("shape", "messages-empty", samples({"messages": []}), "invalid_sample", 0, "messages"),
    both(
        "shape",
        "message-not-an-object",
        samples({"messages": [5, OK["messages"][1]]}),
        "invalid_sample",
        0,
        "messages[0]",
    ),
    both("shape", "content-a-number", samples(chat(5, "a")), "invalid_sample", 0, "messages[0].content"),
    both("shape", "content-part-a-number", samples(chat([5], "a")), "invalid_sample", 0, "messages[0].content[0]"),
    both(
        "shape",
        "content-part-unknown-type",
        samples(chat([{"type": "hologram"}], "a")),
        "invalid_sample",
        0,
        "messages[0].content[0].type",
    ),
    both(
        "shape",
        "text-part-without-text",
        samples(chat([{"type": "text", "text": 3}], "a")),
        "invalid_sample",
        0,
        "messages[0].content[0].text",
    ),
    both(
        "shape",
        "reasoning-not-a-string",
        samples(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "reasoning_content": ["x"]},
                ]
            }
        ),
        "invalid_sample",
        0,
        "messages[1].reasoning_content",
    ),
    both(
        "shape",
        "name-not-a-string",
        samples({"messages": [{"role": "user", "content": "q", "name": 5}, {"role": "assistant", "content": "a"}]}),
        "invalid_sample",
        0,
        "messages[0].name",
    ),
    both(
        "shape",
        "tool-calls-not-a-list",
        samples(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "", "tool_calls": "call it"},
                ]
            }
        ),
        "invalid_sample",
        0,
        "messages[1].tool_calls",
    ),
    both(
        "shape",
        "tool-call-without-name",
        samples(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]},
                ]
            }
        ),
        "invalid_sample",
        0,
        "messages[1].tool_calls[0].function.name",
    ),
    both(
        "shape",
        "tool-answer-to-no-call",
        samples(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
                    {"role": "tool", "tool_call_id": "c9", "content": "r"},
                    {"role": "assistant", "content": "done"},
                ]
            }
        ),
        "invalid_sample",
        0,
        "messages[2].tool_call_id",
    ),
    both("shape", "tools-not-a-list", samples({**OK, "tools": 5}), "invalid_sample", 0, "tools"),
    both("shape", "tools-string-not-json", samples({**OK, "tools": "[{"}), "invalid_sample", 0, "tools"),
    both(
        "shape",
        "sharegpt-not-a-list",
        samples({"conversations": {"from": "human"}}),
        "invalid_sample",
        0,
        "conversations",
    ),
    both(
        "shape",
        "sharegpt-value-not-a-string",
        samples({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]}),
        "invalid_sample",
        0,
        "conversations[1].value",
    ),
    both("shape", "prompt-not-a-string", samples({"prompt": ["a"], "completion": "b"}), "invalid_sample", 0, "prompt"),
    both("shape", "completion-missing", samples({"prompt": "a"}), "invalid_sample", 0, "completion"),
    both(
        "shape", "bad-sample-among-good", samples(OK, OK, OK, OK, OK, {"messages": 1}), "invalid_sample", 5, "messages"
    ),
    over_http("shape", "options-not-an-object", samples(OK, options=3), "invalid_request", None, "options"),
    over_http("shape", "processor-not-a-string", samples(OK, processor=5), "invalid_request", None, "processor"),
    over_http("shape", "mask-sample-missing", {"samples": [OK]}, "invalid_request", None, "sample", path="/v1/mask"),
    # --- roles and turns ------------------------------------------------------------------------------------
    both(
        "roles",
        "unknown-role",
        samples({"messages": [{"role": "wizard", "content": "x"}, OK["messages"][1]]}),
        "invalid_sample",
        0,
        "messages[0].role",
    ),
    both(
        "roles",
        "role-a-list",
        samples({"messages": [{"role": ["user"], "content": "x"}, OK["messages"][1]]}),
        "invalid_sample",
        0,
        "messages[0].role",
    ),
    both(
        "shape",
        "content-part-type-an-object",
        samples(chat([{"type": {"a": 1}}], "a")),
        "invalid_sample",
        0,
        "messages[0].content[0].type",
    ),
    both(
        "roles",
        "missing-role",
        samples({"messages": [{"content": "x"}, OK["messages"][1]]}),
        "invalid_sample",
        0,
        "messages[0].role",
    ),
    both(
        "roles",
        "role-in-capitals",
        samples({"messages": [{"role": "USER", "content": "x"}, OK["messages"][1]]}),
        "invalid_sample",
        0,
        "messages[0].role",
    ),
    both(
        "roles",
        "role-empty-string",
        samples({"messages": [{"role": "", "content": "x"}, OK["messages"][1]]}),
        "invalid_sample",
        0,
        "messages[0].role",
    ),
    both(
        "roles",
        "sharegpt-unknown-speaker",
        samples({"conversations": [{"from": "alien", "value": "q"}, {"from": "gpt", "value": "a"}]}),
        "invalid_sample",
        0,
        "conversations[0].from",
    ),
    both(
        "roles",
        "tool-call-id-not-a-string",  # a missing id is fine where the template never uses it
        samples(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "tool", "content": "r", "tool_call_id": 5},
                    {"role": "assistant", "content": "a"},
                ]
            }
        ),
        "invalid_sample",
        0,
        "messages[1].tool_call_id",
    ),
    both(
        "roles",
        "no-assistant-turn",
        samples({"messages": [{"role": "user", "content": "q"}]}),
        "invalid_sample",
        0,
        "messages",
    ),
    both(
        "roles",
        "only-a-system-turn",
        samples(OK, {"messages": [{"role": "system", "content": "be nice"}]}),
        "invalid_sample",
        1,
        "messages",
    ),
    both(
        "roles",
        "empty-assistant-on-last-turn-only",
        samples(
            chat("q", "a", "q2", ""), options={"train_on_last_turn_only": True, "max_length": 40, "truncation": "right"}
        ),
        "no_supervised_tokens",
        0,
        None,
    ),
    # --- empty and huge strings -------------------------------------------------------------------------------
    both("strings", "completion-empty", samples({"prompt": "a", "completion": ""}), "invalid_sample", 0, "completion"),
    both(
        "strings",
        "huge-string-over-max-length",
        samples(chat("word " * 150_000, "a"), options={"max_length": 4096}),
        "sample_too_long",
        0,
        None,
    ),
    both(
        "strings",
        "huge-string-over-char-limit",
        samples(OK, chat("word " * 220_000, "a")),
        "request_too_large",
        1,
        "samples",
    ),
    Case(
        "strings",
        "huge-body-over-request-limit",
        samples({"prompt": "x" * (5 << 20), "completion": "y"}),
        Expect(413, "request_too_large", None, "body"),
        Expect("RESOURCE_EXHAUSTED", None),
    ),
    both(
        "strings", "huge-processor-name", samples(OK, processor="p" * 100_000), "unknown_processor", None, "processor"
    ),
    both(
        "strings",
        "huge-fingerprint",
        samples(OK, fingerprint="f" * 100_000),
        "fingerprint_mismatch",
        None,
        "fingerprint",
    ),
    # --- 10k-turn conversations ------------------------------------------------------------------------------
    both(
        "turns",
        "10k-turns-over-max-length",
        samples({"messages": _ALT}, options={"max_length": 4096}),
        "sample_too_long",
        0,
        None,
    ),
    both(
        "turns",
        "10k-turns-bad-last-role",
        samples({"messages": [*_ALT[:-1], {"role": "robot", "content": "x"}]}),
        "invalid_sample",
        0,
        "messages[9999].role",
    ),
    both(
        "turns",
        "10k-turns-no-assistant",
        samples({"messages": [{"role": "user", "content": f"u{i}"} for i in range(10_000)]}),
        "invalid_sample",
        0,
        "messages",
    ),
    # --- invalid unicode -------------------------------------------------------------------------------------
    both(
        "unicode",
        "lone-high-surrogate",
        samples(chat("bad \ud800 text", "a")),
        "invalid_sample",
        0,
        "messages[0].content",
    ),
    both(
        "unicode",
        "lone-low-surrogate-in-part",
        samples(chat("q", [{"type": "text", "text": "\udc00"}])),
        "invalid_sample",
        0,
        "messages[1].content[0].text",
    ),
    both(
        "unicode",
        "surrogate-in-prompt",
        samples({"prompt": "\udfff", "completion": "b"}),
        "invalid_sample",
        0,
        "prompt",
    ),
    both(
        "unicode",
        "surrogate-in-sharegpt",
        samples({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "\ud83d"}]}),
        "invalid_sample",
        0,
        "conversations[1].value",
    ),
    both(
        "unicode",
        "surrogate-in-reasoning",
        samples(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "reasoning_content": "\ud800"},
                ]
            }
        ),
        "invalid_sample",
        0,
        "messages[1].reasoning_content",
    ),
    both(
        "unicode",
        "surrogate-in-tool-arguments",
        samples(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": "\ud800"}}}]},
                ]
            }
        ),
        "invalid_sample",
        0,
        "messages[1].tool_calls[0].function.arguments",
    ),
    both("unicode", "surrogate-in-tools", samples({**OK, "tools": [{"name": "\udc80"}]}), "invalid_sample", 0, "tools"),
    Case(
        "unicode",
        "invalid-utf8-bytes",
        b'{"samples": [{"messages": [{"role": "user", "content": "\xff\xfe"}, '
        b'{"role": "assistant", "content": "a"}]}]}',
        Expect(400, "http"),
        grpc_request=pb.CollateRequest(samples=[b'{"prompt": "\xc0\xaf", "completion": "b"}']),
        grpc=Expect("INVALID_ARGUMENT", "invalid_sample", 0, "samples"),
    ),
    # --- images (processor "vl": Qwen2.5-VL's processor with a media root) -------------------------------------
    both("images", "corrupt-bytes", vl(image(base64=b64(b"\x89PNG\r\n\x1a\n" + bytes(200)))), "media_error", 0, _PART),
    both("images", "not-an-image", vl(image(base64=b64(b"hello, world"))), "media_error", 0, _PART),
    both("images", "truncated-png", vl(image(image=b64(PNG[: len(PNG) // 2]))), "media_error", 0, _PART),
    both("images", "truncated-jpeg", vl(image(image=b64(_JPEG[: len(_JPEG) // 2]))), "media_error", 0, _PART),
    both("images", "zero-size", vl(image(image=b64(png_declaring(0, 10)))), "media_error", 0, _PART),
    both("images", "zero-bytes", vl(image(base64="")), "media_error", 0, _PART),
    both("images", "decompression-bomb", vl(image(image=b64(png_declaring(20_000, 20_000)))), "media_error", 0, _PART),
    both("images", "gif-refused", vl(image(image=b64(encode(noise(), "GIF")))), "media_error", 0, _PART),
    both("images", "no-payload", vl(image()), "media_error", 0, _PART),
    both("images", "payload-a-number", vl(image(image=42)), "media_error", 0, _PART),
    both("images", "data-url-not-base64", vl(image(image_url={"url": "data:image/png,abc"})), "media_error", 0, _PART),
    both("images", "invalid-base64", vl(image(base64="!!!not base64!!!")), "media_error", 0, _PART),
    both(
        "images",
        "network-url-refused",
        vl(image(image_url={"url": "http://169.254.169.254/latest"})),
        "media_error",
        0,
        _PART,
    ),
    both("images", "video-part", vl({"type": "video", "video": "clip.mp4"}), "media_error", 0, _PART),
    both(
        "images",
        "image-to-text-only-processor",
        samples(vl(image(image=b64(PNG)))["samples"][0]),
        "invalid_sample",
        0,
        _PART,
    ),
    # --- audio (to "vl", which takes none, and to the text-only processor) --------------------------------------
    both("audio", "two-dimensional", vl(audio([[0.1, 0.2], [0.3, 0.4]])), "media_error", 0, _PART),
    both("audio", "integer-dtype", vl(audio([1, 2, 3])), "media_error", 0, _PART),
    both("audio", "empty", vl(audio([])), "media_error", 0, _PART),
    both("audio", "nan-sample", vl(audio([0.0, float("nan"), 0.5])), "media_error", 0, _PART),
    both("audio", "a-string", vl(audio("beep")), "media_error", 0, _PART),
    both("audio", "ragged", vl(audio([[0.1], [0.2, 0.3]])), "media_error", 0, _PART),
    both("audio", "no-sampling-rate", vl(audio([0.1, 0.2], None)), "media_error", 0, _PART),
    both("audio", "negative-sampling-rate", vl(audio([0.1, 0.2], -16000)), "media_error", 0, _PART),
    both("audio", "boolean-sampling-rate", vl(audio([0.1, 0.2], True)), "media_error", 0, _PART),
    both("audio", "processor-takes-no-audio", vl(audio([0.1, 0.2, 0.3])), "media_error", 0, "messages"),
    both("audio", "to-text-only-processor", samples(vl(audio([0.1]))["samples"][0]), "invalid_sample", 0, _PART),
    # --- media paths escaping the media root --------------------------------------------------------------------
    both("paths", "dot-dot", vl(image(image="../outside/secret.png")), "media_error", 0, _PART),
    both("paths", "dot-dot-path-key", vl(image(path="../../../../etc/passwd")), "media_error", 0, _PART),
    both("paths", "absolute-outside", vl(image(image="@OUTSIDE@/secret.png")), "media_error", 0, _PART),
    both("paths", "absolute-etc-passwd", vl(image(path="/etc/passwd")), "media_error", 0, _PART),
    both("paths", "symlink-out-of-root", vl(image(image="link-out.png")), "media_error", 0, _PART),
    both(
        "paths",
        "file-url-outside",
        vl(image(image_url={"url": "file://@OUTSIDE@/secret.png"})),
        "media_error",
        0,
        _PART,
    ),
    both(
        "paths",
        "file-url-percent-dot-dot",
        vl(image(image_url={"url": "file://@ROOT@/%2e%2e/outside/secret.png"})),
        "media_error",
        0,
        _PART,
    ),
    both(
        "paths",
        "file-url-other-host",
        vl(image(image_url={"url": "file://evil.example/etc/passwd"})),
        "media_error",
        0,
        _PART,
    ),
    both("paths", "directory-inside-root", vl(image(path="subdir")), "media_error", 0, _PART),
    both("paths", "missing-file", vl(image(path="nope.png")), "media_error", 0, _PART),
    both("paths", "nul-byte", vl(image(path="ok.png\x00../../etc/passwd")), "media_error", 0, _PART),
    both("paths", "surrogate", vl(image(path="\udcff.png")), "media_error", 0, _PART),
    # --- processor and fingerprint -------------------------------------------------------------------------------
    both("processor", "unknown", samples(OK, processor="llama-9"), "unknown_processor", None, "processor"),
    both(
        "processor", "wrong-fingerprint", samples(OK, fingerprint="0" * 64), "fingerprint_mismatch", None, "fingerprint"
    ),
    over_http(
        "processor",
        "mask-unknown",
        {"sample": OK, "processor": "nope"},
        "unknown_processor",
        None,
        "processor",
        path="/v1/mask",
    ),
    over_http(
        "processor",
        "mask-wrong-fingerprint",
        {"sample": OK, "fingerprint": "1" * 64},
        "fingerprint_mismatch",
        None,
        "fingerprint",
        path="/v1/mask",
    ),
    # --- option values -------------------------------------------------------------------------------------------
    over_http(
        "options", "unknown-option", samples(OK, options={"temperature": 0.7}), "invalid_options", None, "temperature"
    ),
    over_http(
        "options",
        "chat-template-from-request",
        samples(OK, options={"chat_template": "{{ 7 * 7 }}"}),
        "invalid_options",
        None,
        "chat_template",
    ),
    over_http(
        "options",
        "chat-template-beside-samples",
        samples(OK, chat_template="{{ 7 * 7 }}"),
        "invalid_request",
        None,
        "chat_template",
    ),
    over_http(
        "options",
        "chat-template-beside-mask-sample",
        {"sample": OK, "chat_template": "{{ 7 * 7 }}"},
        "invalid_request",
        None,
        "chat_template",
        path="/v1/mask",
    ),
    both(
        "options",
        "label-format-unknown",
        samples(OK, options={"label_format": "sideways"}),
        "invalid_options",
        None,
        "label_format",
    ),
    both(
        "options",
        "label-policy-unknown",
        samples(OK, options={"label_policy": "everything"}),
        "invalid_options",
        None,
        "label_policy",
    ),
    both(
        "options",
        "truncation-without-max-length",
        samples(OK, options={"truncation": "right"}),
        "invalid_options",
        None,
        "truncation",
    ),
    both("options", "max-length-one", samples(OK, options={"max_length": 1}), "invalid_options", None, "max_length"),
    both(
        "options", "max-length-negative", samples(OK, options={"max_length": -5}), "invalid_options", None, "max_length"
    ),
    over_http(
        "options",
        "max-length-a-string",
        samples(OK, options={"max_length": "4096"}),
        "invalid_options",
        None,
        "max_length",
    ),
    over_http(
        "options",
        "max-length-infinite",
        samples(OK, options={"max_length": float("inf")}),
        "invalid_options",
        None,
        "max_length",
    ),
    both(
        "options",
        "padding-max-length-without-length",
        samples(OK, options={"padding": "max_length"}),
        "invalid_options",
        None,
        "padding",
    ),
    both(
        "options",
        "pad-to-multiple-zero",
        samples(OK, options={"pad_to_multiple_of": 0}),
        "invalid_options",
        None,
        "pad_to_multiple_of",
    ),
    over_http(
        "options",
        "boolean-option-a-string",
        samples(OK, options={"train_on_last_turn_only": "yes"}),
        "invalid_options",
        None,
        "train_on_last_turn_only",
    ),
    both(
        "options",
        "on-zero-labels-unknown",
        samples(OK, options={"on_zero_labels": "maybe"}),
        "invalid_options",
        None,
        "on_zero_labels",
    ),
    both(
        "options",
        "pixel-dtype-unknown",
        samples(OK, options={"pixel_dtype": "int8"}),
        "invalid_options",
        None,
        "pixel_dtype",
    ),
    both(
        "options",
        "packing-unknown-key",
        samples(OK, options={"packing": {"pack_size": 64, "shape": "round"}}),
        "invalid_options",
        None,
        "packing.shape",
    ),
    both(
        "options",
        "packing-size-negative",
        samples(OK, options={"packing": {"pack_size": -1}}),
        "invalid_options",
        None,
        "packing.pack_size",
    ),
    # --- size limits ---------------------------------------------------------------------------------------------
    both("limits", "too-many-samples", samples(*[OK] * 65), "request_too_large", None, "samples"),
    over_grpc(
        "limits",
        "grpc-message-over-limit",
        pb.CollateRequest(samples=[b"x" * (5 << 20)]),
        Expect("RESOURCE_EXHAUSTED", None),
    ),
    # --- malformed gRPC frames -----------------------------------------------------------------------------------
    over_grpc("frames", "not-a-protobuf", _NOT_PROTO, Expect("INVALID_ARGUMENT", "codec_error", None, "request")),
    over_grpc(
        "frames",
        "not-a-protobuf-in-a-stream",
        [_GOOD, _NOT_PROTO],
        Expect("INVALID_ARGUMENT", "codec_error", None, "request"),
        method="CollateStream",
    ),
    over_grpc(
        "frames",
        "not-a-protobuf-dataset",
        _NOT_PROTO,
        Expect("INVALID_ARGUMENT", "codec_error", None, "request"),
        method="StreamDataset",
    ),
    over_grpc("frames", "prefix-cut-short", RawFrame(b"\0\0"), Expect("UNIMPLEMENTED", None)),
    over_grpc(
        "frames", "length-beyond-data", RawFrame(_frame(_GOOD, length=len(_GOOD) + 100)), Expect("UNIMPLEMENTED", None)
    ),
    over_grpc("frames", "no-message", RawFrame(b""), Expect("UNIMPLEMENTED", None)),
    over_grpc("frames", "compressed-without-encoding", RawFrame(_frame(_GOOD, flag=1)), Expect("INTERNAL", None)),
    over_grpc(
        "frames",
        "gzip-garbage",
        RawFrame(_frame(b"abcd", flag=1), (("grpc-encoding", "gzip"),)),
        Expect("INTERNAL", None),
    ),
    over_grpc("frames", "declared-2-gib", RawFrame(_frame(b"x", length=1 << 31)), Expect("RESOURCE_EXHAUSTED", None)),
    over_grpc("frames", "unknown-method", RawFrame(_frame(_GOOD)), Expect("UNIMPLEMENTED", None), method="Nope"),
    # --- datasets (StreamDataset: data roots, pins, plans) ---------------------------------------------------------
    over_grpc(
        "dataset",
        "dot-dot",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="../outside/secret.jsonl")),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "dataset.path"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "absolute-outside",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="@OUTSIDE@/secret.jsonl")),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "dataset.path"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "symlink-out-of-root",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="link-out.jsonl")),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "dataset.path"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "nul-byte",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="train.jsonl\x00x")),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "dataset.path"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "the-root-itself",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="")),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "dataset.path"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "wrong-fingerprint",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="train.jsonl", fingerprint="0" * 64)),
        Expect("FAILED_PRECONDITION", "fingerprint_mismatch", None, "dataset.fingerprint"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "rank-outside-world",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="train.jsonl"), rank=4, world_size=2),
        Expect("INVALID_ARGUMENT", "invalid_options", None, "rank"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "start-past-the-end",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="train.jsonl"), batch_size=2, start_batch_index=999),
        Expect("INVALID_ARGUMENT", "invalid_options", None, "start_batch_index"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "bad-row-named-by-its-line",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="bad.jsonl"), batch_size=4, shuffle=False),
        Expect("INVALID_ARGUMENT", "invalid_sample", 3, "messages[0].role"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "corrupt-parquet",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="corrupt.parquet")),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "dataset.path"),
        method="StreamDataset",
    ),
    over_grpc(
        "dataset",
        "corrupt-arrow-directory",
        pb.StreamDatasetRequest(dataset=pb.DatasetRef(path="corrupt_arrow")),
        Expect("INVALID_ARGUMENT", "invalid_sample", None, "dataset.path"),
        method="StreamDataset",
    ),
]
