"""Regenerate the committed gRPC stubs in proto/v1/ from proto/feedline/v1/*.proto.

    python -m feedline.proto.generate            # rewrite proto/v1/*_pb2*.py
    python -m feedline.proto.generate --check    # exit 1 if the committed stubs differ from a fresh build

Needs grpcio-tools (the ``test`` extra pins the version the committed stubs were made with). protoc writes
``from feedline.v1 import ...``; the stubs live in the ``feedline.proto.v1`` package, so imports are rewritten.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

__all__ = ["generate", "main", "stale_files"]

_ROOT = Path(__file__).resolve().parent
_SOURCES = _ROOT / "feedline" / "v1"
_TARGET = _ROOT / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto file into ``out_dir`` (flat) with imports fixed; return the files written."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(_SOURCES.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p.relative_to(_ROOT)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for produced in sorted((Path(tmp) / "feedline" / "v1").iterdir()):
            text = produced.read_text().replace("from feedline.v1 import", "from feedline.proto.v1 import")
            target = out_dir / produced.name
            target.write_text(text)
            written.append(target)
    return written


def stale_files(target: Path = _TARGET) -> list[str]:
    """Names of stubs in ``target`` that differ from (or are missing next to) a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            f.name for f in fresh if not (target / f.name).exists() or (target / f.name).read_text() != f.read_text()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feedline.proto.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: proto/v1/{name}", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(_TARGET):
        print(f"wrote {path.relative_to(_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
