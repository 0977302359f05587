"""Issue 9, fuzzing, bounded in examples and time: hypothesis over the conversation model and the engine (any
JSON in, a validated row or an error naming the sample out; every row accounted for, nothing dropped
silently, identical bytes on a second run), and schemathesis over the HTTP API's OpenAPI schema, in process
(ASGI): no answer is a 5xx."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from feedline.proto import IGNORE_INDEX, FeedlineError, InvalidOptions, InvalidSample
from feedline.service import CollateOptions, Processor, collate
from feedline.service.engine._conversation import ROLES, Conversation, PromptCompletion, parse_row
from feedline.service.server import Limits, ProcessorRegistry, ServingState, create_app

pytestmark = pytest.mark.timeout(180)

# Any text, lone surrogates included (JSON carries them as "\ud800" escapes).
_TEXT = st.text(st.characters(categories=["L", "N", "P", "S", "Z", "C"]), max_size=40)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)
_ROLE = st.sampled_from(sorted(ROLES)) | _JSON
_PART = (
    st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT})
    | st.fixed_dictionaries({"type": st.sampled_from(["image", "audio", "video", "hologram"])})
    | _JSON
)
_MESSAGE = st.fixed_dictionaries(
    {"role": _ROLE, "content": _TEXT | st.lists(_PART, max_size=3) | _JSON},
    optional={
        "reasoning_content": _TEXT | _JSON,
        "name": _TEXT | _JSON,
        "tool_call_id": _TEXT | _JSON,
        "tool_calls": _JSON,
    },
)
_TURN = st.tuples(st.text(max_size=30), st.text(max_size=30))  # well-formed text: no lone surrogates
_CHAT = st.lists(_TURN, min_size=1, max_size=3).map(
    lambda turns: {
        "messages": [{"role": r, "content": c} for u, a in turns for r, c in (("user", u), ("assistant", a))]
    }
)
_MALFORMED = (
    st.fixed_dictionaries({"messages": st.lists(_MESSAGE, max_size=5) | _JSON}, optional={"tools": _JSON})
    | st.fixed_dictionaries(
        {
            "conversations": st.lists(
                st.fixed_dictionaries(
                    {"from": st.sampled_from(["human", "gpt", "system", "alien"]) | _JSON, "value": _TEXT | _JSON}
                ),
                max_size=4,
            )
        }
    )
    | st.fixed_dictionaries({"prompt": _TEXT | _JSON, "completion": _TEXT | _JSON})
    | _JSON
)
_ROW = st.one_of(_CHAT, _CHAT, _MALFORMED)


@settings(max_examples=400, deadline=None)
@given(row=_ROW, index=st.integers(0, 10_000))
def test_any_row_is_a_validated_row_or_an_error_naming_it(row: Any, index: int) -> None:
    try:
        parsed = parse_row(row, index=index)
    except InvalidSample as exc:
        assert exc.sample == index and (exc.field is None or isinstance(exc.field, str))
        return
    assert isinstance(parsed, (Conversation, PromptCompletion))
    if isinstance(parsed, Conversation):
        assert any(m.role == "assistant" for m in parsed.messages)


_SKIPPING = {"on_sample_error": "skip", "on_zero_labels": "skip", "overlong": "drop"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    rows=st.lists(_ROW, min_size=1, max_size=4),
    max_length=st.none() | st.integers(8, 96),
    label_format=st.sampled_from(["shifted", "unshifted", "loss_mask"]),
)
def test_the_engine_accounts_for_every_row(
    qwen_processor: Processor, rows: list[Any], max_length: int | None, label_format: str
) -> None:
    """With skip/drop policies nothing raises for a bad row: each row has one report, the batch holds exactly
    the rows reported ok, each with the supervised tokens its report counts; a second run gives the same bytes."""
    options = CollateOptions.from_mapping({**_SKIPPING, "label_format": label_format, "max_length": max_length})
    batch = collate(qwen_processor, rows, options)
    assert [r.index for r in batch.reports] == list(range(len(rows)))
    ok = [r for r in batch.reports if r.status == "ok"]
    assert all(r.status in ("skipped", "dropped") and r.error and r.error["kind"] for r in batch.reports if r not in ok)
    tensors = batch.tensors
    assert tensors["input_ids"].shape[0] == len(ok)
    supervised = tensors["loss_mask"].astype(bool) if label_format == "loss_mask" else tensors["labels"] != IGNORE_INDEX
    assert supervised.sum(axis=1).tolist() == [r.num_label_tokens for r in ok]
    assert not (supervised & (tensors["attention_mask"][:, : supervised.shape[1]] == 0)).any()
    again = collate(qwen_processor, rows, options).tensors
    assert all(np.array_equal(again[k], v) and again[k].dtype == v.dtype for k, v in tensors.items())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_ROW, min_size=1, max_size=3))
def test_with_error_policies_a_bad_row_fails_the_request_and_names_itself(
    qwen_processor: Processor, rows: list[Any]
) -> None:
    try:
        batch = collate(qwen_processor, rows, CollateOptions())
    except FeedlineError as exc:
        assert exc.sample is not None and 0 <= exc.sample < len(rows)
        return
    assert batch.tensors["input_ids"].shape[0] == len(rows)


@settings(max_examples=300, deadline=None)
@given(
    options=st.dictionaries(
        st.sampled_from([*CollateOptions.__dataclass_fields__, "packing", "bogus"]),
        _JSON
        | st.fixed_dictionaries({}, optional={"pack_size": _JSON, "window": _JSON, "seed": _JSON, "layout": _JSON}),
        max_size=4,
    )
)
def test_any_options_are_valid_options_or_an_error_naming_the_option(options: dict[str, Any]) -> None:
    try:
        CollateOptions.from_mapping(options)
    except InvalidOptions as exc:
        assert exc.field
        return


# --- schemathesis over the OpenAPI schema (in process) -----------------------------------------------------
# (Driven through hypothesis directly: schemathesis' lazy pytest loader reads a node attribute pytest 9 removed.)

_PER_OPERATION = 100


@pytest.fixture(scope="module")
def api_schema(qwen_processor: Processor) -> Any:
    state = ServingState(ProcessorRegistry.of(qwen_processor), limits=Limits(max_request_bytes=1 << 20))
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(state))


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_the_http_api_never_answers_5xx(api_schema: Any, mode: Any) -> None:
    statuses: dict[str, Counter[int]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to make invalid in a GET without parameters
        seen = statuses.setdefault(operation.label, Counter())

        @settings(max_examples=_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(mode))
        def call(case: Any) -> None:
            response = case.call()
            seen[response.status_code] += 1  # noqa: B023 (call() runs within this iteration)
            case.validate_response(response, checks=[not_a_server_error])

        call()
    assert {"POST /v1/collate", "POST /v1/mask"} <= set(statuses)
    assert all(code < 500 for codes in statuses.values() for code in codes)
    print(
        f"RELIABILITY schemathesis {schemathesis.__version__} {mode.value}: "
        f"{sum(sum(c.values()) for c in statuses.values())} requests over {len(statuses)} operations, statuses "
        f"{ {label: dict(sorted(c.items())) for label, c in sorted(statuses.items())} }"
    )
