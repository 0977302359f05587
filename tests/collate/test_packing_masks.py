"""The trainer-side block-causal mask: built from the compact packed form, no attention across documents."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from feedline.proto import LabelStrategy
from feedline.service.collate._packing import PackOptions, pack_samples
from feedline.service.engine._sample import TokenizedSample

torch = pytest.importorskip("torch")

from feedline.client._masks import block_causal_mask, document_ids_from_cu_seqlens  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def packed(lengths: list[int], pack_size: int, layout: str = "padded", multiple: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    samples = [
        TokenizedSample(rng.integers(1, 50, n), rng.random(n) < 0.5, LabelStrategy.TURN_MARKERS) for n in lengths
    ]
    out, _ = pack_samples(samples, PackOptions(pack_size=pack_size, layout=layout, pad_to_multiple=multiple), pad_id=0)
    return out


def reference(docs: np.ndarray) -> np.ndarray:
    """Brute force: q attends k iff same document, not padding, k <= q."""
    b, s = docs.shape
    out = np.zeros((b, 1, s, s), dtype=bool)
    for r in range(b):
        for q in range(s):
            for k in range(q + 1):
                out[r, 0, q, k] = docs[r, q] > 0 and docs[r, q] == docs[r, k]
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_mask_matches_brute_force_and_never_crosses_documents(device: str) -> None:
    out = packed([5, 3, 7, 4, 2, 6], pack_size=12)
    mask = block_causal_mask(out["document_ids"], device=device)
    assert mask.dtype == torch.bool
    assert mask.device.type == device
    docs = out["document_ids"]
    assert mask.shape == (docs.shape[0], 1, 12, 12)
    np.testing.assert_array_equal(mask.cpu().numpy(), reference(docs))
    same = docs[:, :, None] == docs[:, None, :]
    assert not (mask.cpu().numpy()[:, 0] & ~same).any()


def test_padding_rows_and_columns_are_masked() -> None:
    docs = np.array([[1, 1, 2, 0, 0]])
    mask = block_causal_mask(docs)[0, 0]
    assert not mask[3:].any()
    assert not mask[:, 3:].any()
    assert mask[2, 2] and not mask[2, 1]


@pytest.mark.parametrize("layout", ["padded", "thd"])
def test_cu_seqlens_and_document_ids_give_the_same_mask(layout: str) -> None:
    out = packed([5, 3, 7, 4, 2, 6], pack_size=12, layout=layout, multiple=2)
    width = out["input_ids"].shape[1]
    from_ids = block_causal_mask(out["document_ids"])
    from_cu = block_causal_mask(cu_seqlens=out["cu_seqlens"], seq_len=width)
    assert torch.equal(from_ids, from_cu)
    ids = document_ids_from_cu_seqlens(out["cu_seqlens"], seq_len=width)
    assert torch.equal(ids, torch.as_tensor(out["document_ids"]).long())


def test_cu_seqlens_shorter_than_offsets_is_an_error() -> None:
    with pytest.raises(ValueError):
        document_ids_from_cu_seqlens(np.array([0, 3, 8]), seq_len=5)
    with pytest.raises(ValueError):
        block_causal_mask(np.array([[1, 1]]), cu_seqlens=np.array([0, 2]))


def test_additive_mask_for_eager_attention() -> None:
    docs = np.array([[1, 1, 2, 2, 0]])
    allowed = block_causal_mask(docs)
    additive = block_causal_mask(docs, dtype=torch.bfloat16)
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive == 0, allowed)
    assert (additive[~allowed] == torch.finfo(torch.bfloat16).min).all()
    with pytest.raises(ValueError):
        block_causal_mask(docs, dtype=torch.int32)


def test_attention_over_a_packed_row_equals_attention_per_document() -> None:
    """The numerical proof: sdpa over the pack with the mask gives each document's solo result."""
    out = packed([9, 4, 12, 6], pack_size=32)
    docs = torch.as_tensor(out["document_ids"]).long()
    mask = block_causal_mask(docs)
    gen = torch.Generator().manual_seed(0)
    b, s = docs.shape
    q, k, v = (torch.randn(b, 2, s, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    packed_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for r in range(b):
        for d in docs[r].unique().tolist():
            if d == 0:
                continue
            idx = (docs[r] == d).nonzero().squeeze(1)
            solo = torch.nn.functional.scaled_dot_product_attention(
                q[r : r + 1, :, idx], k[r : r + 1, :, idx], v[r : r + 1, :, idx], is_causal=True
            )
            torch.testing.assert_close(packed_out[r : r + 1, :, idx], solo)


def test_client_module_imports_neither_torch_nor_service_dependencies() -> None:
    code = (
        "import sys, feedline.client._masks\n"
        "bad = [m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
