"""The committed gRPC stubs are what the .proto files generate today (regenerate: proto/generate.sh)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

from feedline.proto import generate  # noqa: E402


def test_committed_stubs_match_a_fresh_generation() -> None:
    stale = generate.stale_files()
    assert not stale, f"stubs out of date: {stale}; run proto/generate.sh and commit the result"


def test_a_changed_proto_is_detected(tmp_path: Path) -> None:
    fresh = generate.generate(tmp_path)
    assert {p.name for p in fresh} == {"feedline_pb2.py", "feedline_pb2.pyi", "feedline_pb2_grpc.py"}
    (tmp_path / "feedline_pb2.py").write_text("# edited by hand\n")
    assert generate.stale_files(tmp_path) == ["feedline_pb2.py"]
    assert "from feedline.proto.v1 import feedline_pb2" in (tmp_path / "feedline_pb2_grpc.py").read_text()
