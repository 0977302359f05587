"""Property tests over random length distributions: plan invariants and the materialised rows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from feedline.proto import IGNORE_INDEX, LabelFormat, LabelStrategy
from feedline.service.collate._batching import length_grouped_batches, token_budget_batches
from feedline.service.collate._packing import PackOptions, materialise, plan_packs
from feedline.service.engine._sample import TokenizedSample, format_labels

FORMATS = st.sampled_from(list(LabelFormat))


@st.composite
def lengths_and_options(draw: st.DrawFn) -> tuple[np.ndarray, PackOptions, LabelFormat]:
    pack_size = draw(st.integers(4, 300))
    shape = draw(st.sampled_from(["uniform", "lognormal", "bimodal"]))
    n = draw(st.integers(0, 150))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if shape == "uniform":
        lengths = rng.integers(0, pack_size * 2, size=n)
    elif shape == "lognormal":
        lengths = np.ceil(rng.lognormal(np.log(pack_size / 5), 1.0, size=n)).astype(np.int64)
    else:
        lengths = np.where(rng.random(n) < 0.8, rng.integers(1, 10, n), rng.integers(pack_size // 2, pack_size + 5, n))
    options = PackOptions(
        pack_size=pack_size,
        window=draw(st.integers(1, 60)),
        seed=draw(st.integers(0, 1000)),
        overlong=draw(st.sampled_from(["drop", "truncate"])),
        pad_to_multiple=draw(st.sampled_from([1, 1, 2, 4])),
        layout=draw(st.sampled_from(["padded", "thd"])),
    )
    return lengths, options, draw(FORMATS)


@settings(max_examples=150, deadline=None)
@given(lengths_and_options())
def test_plan_places_every_sample_once_within_capacity(case: tuple[np.ndarray, PackOptions, LabelFormat]) -> None:
    lengths, options, fmt = case
    plan = plan_packs(lengths, options, label_format=fmt)
    assert sorted(plan.indices.tolist() + list(plan.dropped)) == list(range(lengths.size))
    shift = 1 if fmt is LabelFormat.SHIFTED else 0
    expected_dropped = {i for i, n in enumerate(lengths) if n - shift <= 0}
    limit = options.pack_size // options.pad_to_multiple * options.pad_to_multiple + shift
    over = {i for i, n in enumerate(lengths) if n > limit}
    if options.overlong == "drop":
        expected_dropped |= over
    else:
        assert set(plan.truncated) == over
    assert set(plan.dropped) == expected_dropped
    for p in range(len(plan)):
        sel = slice(plan.offsets[p], plan.offsets[p + 1])
        assert 0 < plan.slots[sel].sum() <= options.pack_size
    assert plan_packs(lengths, options, label_format=fmt).to_dict() == plan.to_dict()


@settings(max_examples=80, deadline=None)
@given(lengths_and_options())
def test_rows_concatenate_documents_and_restart_positions(case: tuple[np.ndarray, PackOptions, LabelFormat]) -> None:
    lengths, options, fmt = case
    rng = np.random.default_rng(int(lengths.sum()))
    samples = [
        TokenizedSample(rng.integers(1, 99, n), rng.random(n) < 0.6, LabelStrategy.TURN_MARKERS) for n in lengths
    ]
    plan = plan_packs(lengths, options, label_format=fmt)
    out = materialise(samples, plan, range(len(plan)), pad_id=0)
    label_key = "loss_mask" if fmt is LabelFormat.LOSS_MASK else "labels"
    rows = [plan.pack(p) for p in range(len(plan))] if options.layout == "padded" else [plan.indices]
    keep = dict(zip(plan.indices.tolist(), plan.keep.tolist(), strict=False))
    for r, members in enumerate(rows):
        start = 0
        for d, i in enumerate(members.tolist(), start=1):
            own = format_labels(samples[i].input_ids[: keep[i]], samples[i].supervised[: keep[i]], fmt)
            n = own["input_ids"].size
            slots = -(-n // options.pad_to_multiple) * options.pad_to_multiple
            np.testing.assert_array_equal(out["input_ids"][r, start : start + n], own["input_ids"])
            np.testing.assert_array_equal(out[label_key][r, start : start + n], own[label_key])
            np.testing.assert_array_equal(out["position_ids"][r, start : start + slots], np.arange(slots))
            doc = d if options.layout == "padded" else int(np.flatnonzero(plan.indices == i)[0]) + 1
            assert (out["document_ids"][r, start : start + slots] == doc).all()
            if fmt is not LabelFormat.LOSS_MASK:
                assert (out["labels"][r, start + n : start + slots] == IGNORE_INDEX).all()
            start += slots
        assert (out["document_ids"][r, start:] == 0).all()
        assert int(np.asarray(out["cu_seqlens"]).reshape(len(rows), -1)[r].max()) == start
    real = int((out["document_ids"] > 0).sum()) - int((np.asarray(out["seq_lens_padded"]) - out["seq_lens"]).sum())
    assert real == int(plan.tokens.sum())


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(2, 500), max_size=120),
    st.integers(600, 4000),
    st.sampled_from([1, 8]),
    st.integers(0, 99),
)
def test_token_budget_batches_respect_the_budget(lengths: list[int], budget: int, multiple: int, seed: int) -> None:
    for plan in (
        token_budget_batches(lengths, budget, pad_to_multiple=multiple),
        length_grouped_batches(lengths, seed=seed, max_tokens=budget, group_size=50, pad_to_multiple=multiple),
    ):
        assert sorted(i for b in plan for i in b.tolist()) == list(range(len(lengths)))
        for batch in plan:
            width = max(-(-(lengths[i] - 1) // multiple) * multiple for i in batch)
            assert width * len(batch) <= budget
