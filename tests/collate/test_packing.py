"""Packing: plan (which samples share a pack) and materialise (the arrays of a pack batch)."""

from __future__ import annotations

import numpy as np
import pytest

from feedline.proto import IGNORE_INDEX, InvalidOptions, InvalidSample, LabelFormat, LabelStrategy, SampleTooLong
from feedline.service.collate._packing import (
    PackOptions,
    PackPlan,
    materialise,
    pack_samples,
    plan_packs,
    sample_lengths,
)
from feedline.service.engine._sample import TokenizedSample, format_labels

PAD = 0


def make_sample(n: int, seed: int, media: dict[str, np.ndarray] | None = None) -> TokenizedSample:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 1000, size=n, dtype=np.int64)
    supervised = rng.random(n) < 0.5
    return TokenizedSample(ids, supervised, LabelStrategy.TURN_MARKERS, media=media or {})


def make_samples(lengths: list[int]) -> list[TokenizedSample]:
    return [make_sample(n, seed=i) for i, n in enumerate(lengths)]


def check_plan(plan: PackPlan, n: int) -> None:
    """Every sample is in exactly one pack or in ``dropped``; no pack overflows."""
    placed = plan.indices.tolist()
    assert sorted(placed + list(plan.dropped)) == list(range(n))
    for p in range(len(plan)):
        sel = slice(plan.offsets[p], plan.offsets[p + 1])
        assert plan.slots[sel].sum() <= plan.pack_size
        assert list(plan.pack(p)) == sorted(plan.pack(p))


# --- options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pack_size": 1}, "packing.pack_size"),
        ({"window": 0}, "packing.window"),
        ({"seed": -1}, "packing.seed"),
        ({"overlong": "split"}, "packing.overlong"),
        ({"pad_to_multiple": 0}, "packing.pad_to_multiple"),
        ({"pad_to_multiple": 64, "pack_size": 32}, "packing.pad_to_multiple"),
        ({"layout": "bshd"}, "packing.layout"),
        ({"pack_size": True}, "packing.pack_size"),
    ],
)
def test_options_are_validated(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidOptions) as info:
        PackOptions(**kwargs)
    assert info.value.field == field


def test_options_from_mapping_rejects_unknown_keys() -> None:
    assert PackOptions.from_mapping({"pack_size": 64}).pack_size == 64
    with pytest.raises(InvalidOptions) as info:
        PackOptions.from_mapping({"pack_sizes": 64})
    assert info.value.field == "packing.pack_sizes"
    assert PackOptions.from_mapping(PackOptions(window=7).to_dict()) == PackOptions(window=7)


# --- plan -------------------------------------------------------------------------------------------------


def test_plan_is_deterministic_and_seed_only_orders_packs() -> None:
    lengths = np.random.default_rng(1).integers(2, 400, size=500)
    a = plan_packs(lengths, PackOptions(pack_size=512, window=100, seed=3))
    b = plan_packs(lengths, PackOptions(pack_size=512, window=100, seed=3))
    c = plan_packs(lengths, PackOptions(pack_size=512, window=100, seed=4))
    assert a.to_dict() == b.to_dict()
    assert a.to_dict()["packs"] != c.to_dict()["packs"]
    assert sorted(map(tuple, a.to_dict()["packs"])) == sorted(map(tuple, c.to_dict()["packs"]))
    check_plan(a, lengths.size)


def test_best_fit_decreasing_fills_exactly_when_possible() -> None:
    # shifted: a sample of n tokens uses n - 1 slots; these pair up into full packs of 10
    lengths = [9, 4, 8, 5, 3, 10, 11, 2, 7]
    plan = plan_packs(lengths, PackOptions(pack_size=10, window=100))
    check_plan(plan, len(lengths))
    assert len(plan) == 5
    assert plan.fill_ratio == 1.0


def test_samples_wait_at_most_one_window() -> None:
    lengths = np.random.default_rng(2).integers(50, 300, size=1000)
    window = 100
    plan = plan_packs(lengths, PackOptions(pack_size=1024, window=window))
    check_plan(plan, lengths.size)
    windows = [np.unique(plan.pack(p) // window) for p in range(len(plan))]
    # a pack mixes at most two neighbouring windows, and packs come out window by window
    assert all(w.size == 1 or (w.size == 2 and w[1] == w[0] + 1) for w in windows)
    latest = [int(w.max()) for w in windows]
    assert latest == sorted(latest)
    assert any(w.size == 2 for w in windows)  # the carry happens


def test_overlong_error_names_the_sample() -> None:
    with pytest.raises(SampleTooLong) as info:
        plan_packs([5, 40, 6], PackOptions(pack_size=16))
    assert info.value.sample == 1
    assert info.value.field == "packing.pack_size"


def test_overlong_drop_and_truncate_are_reported() -> None:
    lengths = [5, 40, 6, 17]  # shifted: 17 tokens use 16 slots and fit; 40 do not
    dropped = plan_packs(lengths, PackOptions(pack_size=16, overlong="drop"))
    assert dropped.dropped == (1,) and dropped.truncated == ()
    check_plan(dropped, 4)
    cut = plan_packs(lengths, PackOptions(pack_size=16, overlong="truncate"))
    assert cut.dropped == () and cut.truncated == (1,)
    check_plan(cut, 4)
    assert int(cut.keep[list(cut.indices).index(1)]) == 17


def test_truncated_sample_keeps_its_head() -> None:
    samples = make_samples([30, 5])
    out, plan = pack_samples(samples, PackOptions(pack_size=16, overlong="truncate"), pad_id=PAD)
    assert plan.truncated == (0,)
    expected = format_labels(samples[0].input_ids[:17], samples[0].supervised[:17], LabelFormat.SHIFTED)
    row = int(np.flatnonzero((out["seq_lens"] == 16).any(axis=1))[0])
    np.testing.assert_array_equal(out["input_ids"][row], expected["input_ids"])
    np.testing.assert_array_equal(out["labels"][row], expected["labels"])


def test_documents_without_tokens_after_the_shift_are_dropped() -> None:
    plan = plan_packs([1, 4, 0], PackOptions(pack_size=8))
    assert plan.dropped == (0, 2)
    assert plan.indices.tolist() == [1]
    unshifted = plan_packs([1, 4], PackOptions(pack_size=8), label_format=LabelFormat.UNSHIFTED)
    assert unshifted.dropped == ()


def test_pad_to_multiple_counts_in_capacity() -> None:
    # shifted lengths 3, 5, 2 round up to 4, 8, 4 slots
    plan = plan_packs([4, 6, 3], PackOptions(pack_size=8, pad_to_multiple=4))
    check_plan(plan, 3)
    assert sorted(plan.slots.tolist()) == [4, 4, 8]
    assert len(plan) == 2


def test_fill_ratio_counts_real_tokens_over_slots() -> None:
    plan = plan_packs([4, 6, 3], PackOptions(pack_size=8, pad_to_multiple=4))
    assert plan.fill_ratio == pytest.approx((3 + 5 + 2) / 16)


# --- materialise ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(LabelFormat))
@pytest.mark.parametrize("layout", ["padded", "thd"])
def test_rows_are_the_concatenation_of_each_documents_own_labels(fmt: LabelFormat, layout: str) -> None:
    samples = make_samples([7, 3, 12, 5, 9, 2, 6, 11, 4])
    options = PackOptions(pack_size=16, window=4, layout=layout)
    out, plan = pack_samples(samples, options, label_format=fmt, pad_id=PAD)
    label_key = "loss_mask" if fmt is LabelFormat.LOSS_MASK else "labels"
    label_pad = 0 if fmt is LabelFormat.LOSS_MASK else IGNORE_INDEX
    rows = [plan.pack(p) for p in range(len(plan))] if layout == "padded" else [plan.indices]
    width = options.pack_size if layout == "padded" else int(plan.tokens.sum())
    assert out["input_ids"].shape == out[label_key].shape == (len(rows), width)
    for r, members in enumerate(rows):
        own = [format_labels(samples[i].input_ids, samples[i].supervised, fmt) for i in members]
        ids = np.concatenate([o["input_ids"] for o in own])
        labels = np.concatenate([o[label_key] for o in own])
        n = ids.size
        np.testing.assert_array_equal(out["input_ids"][r, :n], ids)
        np.testing.assert_array_equal(out[label_key][r, :n], labels)
        assert (out["input_ids"][r, n:] == PAD).all()
        assert (out[label_key][r, n:] == label_pad).all()
        positions = np.concatenate([np.arange(o["input_ids"].size) for o in own])
        np.testing.assert_array_equal(out["position_ids"][r, :n], positions)
        assert (out["position_ids"][r, n:] == 0).all()
    for key in ("input_ids", label_key, "position_ids"):
        assert out[key].dtype == np.int64
    assert out["cu_seqlens"].dtype == np.int32
    assert out["document_ids"].dtype == np.int32


def test_padded_layout_lengths_and_document_index() -> None:
    samples = make_samples([4, 6, 3, 9])
    out, plan = pack_samples(samples, PackOptions(pack_size=12), pad_id=PAD)
    for r in range(len(plan)):
        sizes = [samples[i].num_tokens - 1 for i in plan.pack(r)]
        d = len(sizes)
        np.testing.assert_array_equal(out["seq_lens"][r, :d], sizes)
        assert (out["seq_lens"][r, d:] == 0).all()
        cu = np.cumsum([0, *sizes])
        np.testing.assert_array_equal(out["cu_seqlens"][r, : d + 1], cu)
        assert (out["cu_seqlens"][r, d + 1 :] == cu[-1]).all()
        expected_ids = np.concatenate([np.full(n, k + 1) for k, n in enumerate(sizes)])
        np.testing.assert_array_equal(out["document_ids"][r, : cu[-1]], expected_ids)
        assert (out["document_ids"][r, cu[-1] :] == 0).all()


def test_thd_layout_is_flat_with_global_document_index() -> None:
    samples = make_samples([4, 6, 3, 9, 5])
    out, plan = pack_samples(samples, PackOptions(pack_size=12, layout="thd"), pad_id=PAD)
    sizes = [samples[i].num_tokens - 1 for i in plan.indices]
    np.testing.assert_array_equal(out["seq_lens"], sizes)
    np.testing.assert_array_equal(out["cu_seqlens"], np.cumsum([0, *sizes]))
    np.testing.assert_array_equal(out["document_ids"][0], np.repeat(np.arange(1, len(sizes) + 1), sizes))
    assert out["input_ids"].shape == (1, sum(sizes))


@pytest.mark.parametrize("layout", ["padded", "thd"])
def test_context_parallel_padding_per_document(layout: str) -> None:
    samples = make_samples([4, 6, 3])  # shifted sizes 3, 5, 2 -> slots 4, 8, 4
    options = PackOptions(pack_size=16, pad_to_multiple=4, layout=layout)
    out, plan = pack_samples(samples, options, pad_id=PAD)
    assert len(plan) == 1
    order = plan.pack(0).tolist()
    sizes = [samples[i].num_tokens - 1 for i in order]
    slots = [-(-n // 4) * 4 for n in sizes]
    row = 0
    np.testing.assert_array_equal(out["seq_lens"].reshape(-1)[: len(order)], sizes)
    np.testing.assert_array_equal(out["seq_lens_padded"].reshape(-1)[: len(order)], slots)
    np.testing.assert_array_equal(out["cu_seqlens"].reshape(-1)[: len(order) + 1], np.cumsum([0, *slots]))
    start = 0
    for k, (i, n, s) in enumerate(zip(order, sizes, slots, strict=False)):
        own = format_labels(samples[i].input_ids, samples[i].supervised, LabelFormat.SHIFTED)
        np.testing.assert_array_equal(out["input_ids"][row, start : start + n], own["input_ids"])
        assert (out["input_ids"][row, start + n : start + s] == PAD).all()
        assert (out["labels"][row, start + n : start + s] == IGNORE_INDEX).all()
        np.testing.assert_array_equal(out["position_ids"][row, start : start + s], np.arange(s))
        assert (out["document_ids"][row, start : start + s] == k + 1).all()
        start += s
    assert out["input_ids"].shape[1] % 4 == 0


@pytest.mark.parametrize("layout", ["padded", "thd"])
def test_mrope_positions_restart_per_document_and_pad_with_zero(layout: str) -> None:
    def mrope(n: int, offset: int) -> np.ndarray:
        base = np.arange(n)
        return np.stack([base, base + offset, base + 2 * offset]).astype(np.int64)

    samples = [
        make_sample(5, 0, media={"position_ids": mrope(5, 10)}),
        make_sample(4, 1),  # a text-only document in a VL batch gets 0..n-1 on all three rows
        make_sample(6, 2, media={"position_ids": mrope(6, 20)}),
    ]
    out, plan = pack_samples(samples, PackOptions(pack_size=16, layout=layout), pad_id=PAD)
    assert out["position_ids"].shape == (3, 1, 16 if layout == "padded" else 12)
    expected = []
    for i in plan.pack(0):
        own = samples[i].media.get("position_ids")
        n = samples[i].num_tokens - 1
        expected.append(own[:, :n] if own is not None else np.tile(np.arange(n), (3, 1)))
    expected_row = np.concatenate(expected, axis=1)
    np.testing.assert_array_equal(out["position_ids"][:, 0, : expected_row.shape[1]], expected_row)
    assert (out["position_ids"][:, 0, expected_row.shape[1] :] == 0).all()


def test_media_concatenate_in_pack_order_with_their_grids() -> None:
    def image(n: int, tag: float) -> dict[str, np.ndarray]:
        return {"pixel_values": np.full((n, 4), tag, dtype=np.float32), "image_grid_thw": np.array([[1, n, 1]])}

    samples = [make_sample(6, 0, image(2, 0.0)), make_sample(5, 1), make_sample(7, 2, image(3, 2.0))]
    out, plan = pack_samples(samples, PackOptions(pack_size=8), pad_id=PAD)
    with_media = [i for i in plan.indices.tolist() if samples[i].media]
    np.testing.assert_array_equal(
        out["image_grid_thw"], np.concatenate([samples[i].media["image_grid_thw"] for i in with_media])
    )
    np.testing.assert_array_equal(
        out["pixel_values"], np.concatenate([samples[i].media["pixel_values"] for i in with_media])
    )
    assert out["pixel_values"].dtype == np.float32


def test_per_token_media_follow_the_tokens() -> None:
    samples = [make_sample(5, 0, {"mm_token_type_ids": np.array([0, 1, 1, 0, 0])}), make_sample(4, 1)]
    out, plan = pack_samples(samples, PackOptions(pack_size=12), pad_id=PAD)
    row = out["mm_token_type_ids"][0]
    parts = [np.array([0, 1, 1, 0]) if i == 0 else np.zeros(3, dtype=np.int64) for i in plan.pack(0)]
    np.testing.assert_array_equal(row[:7], np.concatenate(parts))
    assert (row[7:] == 0).all()


def test_truncating_a_sample_with_media_is_refused() -> None:
    samples = [make_sample(30, 0, {"pixel_values": np.zeros((2, 4), dtype=np.float32)})]
    with pytest.raises(InvalidOptions) as info:
        pack_samples(samples, PackOptions(pack_size=16, overlong="truncate"), pad_id=PAD)
    assert info.value.sample == 0


def test_pre_padded_samples_pack_only_their_real_tokens() -> None:
    base = make_sample(8, 0)
    mask = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    padded = TokenizedSample(base.input_ids, base.supervised, base.strategy, attention_mask=mask)
    assert sample_lengths([padded]).tolist() == [5]
    out, _ = pack_samples([padded], PackOptions(pack_size=8), pad_id=PAD)
    own = format_labels(base.input_ids[:5], base.supervised[:5], LabelFormat.SHIFTED)
    np.testing.assert_array_equal(out["input_ids"][0, :4], own["input_ids"])
    assert out["seq_lens"].tolist() == [[4]]


def test_padding_inside_a_sample_is_refused_with_its_index() -> None:
    base = make_sample(6, 0)
    holey = TokenizedSample(base.input_ids, base.supervised, base.strategy, attention_mask=np.array([1, 1, 0, 1, 1, 0]))
    with pytest.raises(InvalidSample) as info:
        sample_lengths([make_sample(4, 1), holey])
    assert info.value.sample == 1


def test_materialise_checks_the_plan_against_the_samples() -> None:
    samples = make_samples([6, 6])
    plan = plan_packs([6, 9], PackOptions(pack_size=16))
    with pytest.raises(InvalidSample) as info:
        materialise(samples, plan, [0], pad_id=PAD)
    assert info.value.sample == 1


def test_materialise_lazily_from_a_mapping_of_a_subset() -> None:
    lengths = [5, 9, 4, 7, 8, 3, 6]
    samples = make_samples(lengths)
    plan = plan_packs(lengths, PackOptions(pack_size=12, window=3))
    full = materialise(samples, plan, range(len(plan)), pad_id=PAD)
    for p in range(len(plan)):
        subset = {int(i): samples[int(i)] for i in plan.pack(p)}
        one = materialise(subset, plan, [p], pad_id=PAD)
        np.testing.assert_array_equal(one["input_ids"][0], full["input_ids"][p])
        np.testing.assert_array_equal(one["labels"][0], full["labels"][p])


def test_empty_batch_has_every_key() -> None:
    out, plan = pack_samples([], PackOptions(pack_size=8), pad_id=PAD)
    assert len(plan) == 0
    assert out["input_ids"].shape == (0, 8)
    assert set(out) == {
        "input_ids",
        "labels",
        "position_ids",
        "document_ids",
        "seq_lens",
        "seq_lens_padded",
        "cu_seqlens",
    }
