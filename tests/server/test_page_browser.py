"""The mask-debugging page end to end: a real `feedline serve` process, driven in headless Debian Chromium.

Needs Debian's `chromium` and the `playwright` Python driver (`scripts/install_browser.sh` installs both).
Playwright's own browser builds are never used: it launches the system executable. Screenshots land in
`test-artifacts/` at the repository root.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import Served as _Served

_INSTALL_HINT = "run `bash scripts/install_browser.sh <venv python>` (scripts/test.sh does)"
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason=f"BROWSER TEST SKIPPED: the playwright driver is not installed; {_INSTALL_HINT}"
)
CHROMIUM = os.environ.get("FEEDLINE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(f"BROWSER TEST SKIPPED: no chromium executable on PATH; {_INSTALL_HINT}", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWPORT = {"width": 1366, "height": 900}  # a common laptop screen

CONVERSATION: dict[str, Any] = {
    "messages": [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a prime number between 10 and 20."},
        {"role": "assistant", "content": "13 is prime."},
        {"role": "user", "content": "And one between 20 and 30?"},
        {"role": "assistant", "content": "23 is prime too."},
        {"role": "user", "content": "Is 91 prime?"},
        {"role": "assistant", "content": "No: 91 = 7 × 13."},
    ]
}
REASONING: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": "Is 57 prime?"},
        {"role": "assistant", "reasoning_content": "57 = 3 × 19.", "content": "No, it is divisible by 3."},
        {"role": "user", "content": "And 59?"},
        {"role": "assistant", "reasoning_content": "No divisor up to 7 works.", "content": "Yes, 59 is prime."},
    ]
}

# (case id, processor, row, form actions as (kind, selector, value), options the page must send)
CASES = [
    ("default", "qwen2.5", CONVERSATION, [], {"label_policy": "assistant"}),
    ("nemo", "qwen2.5", CONVERSATION, [("select", "#label_policy", "nemo")], {"label_policy": "nemo"}),
    (
        "last-turn",
        "qwen2.5",
        CONVERSATION,
        [("check", "#train_on_last_turn_only", True)],
        {"train_on_last_turn_only": True},
    ),
    (
        "truncated",
        "qwen2.5",
        CONVERSATION,
        [("fill", "#max_length", "60"), ("select", "#truncation", "right")],
        {"max_length": 60, "truncation": "right"},
    ),
    (
        "nemo-unshifted",
        "qwen2.5",
        CONVERSATION,
        [("select", "#label_policy", "nemo"), ("select", "#label_format", "unshifted")],
        {"label_policy": "nemo", "label_format": "unshifted"},
    ),
    (
        "qwen3-reasoning",
        "qwen3",
        REASONING,
        [("check", "#mask_reasoning_content", True)],
        {"mask_reasoning_content": True},
    ),
]


@pytest.fixture(scope="module")
def server() -> Iterator[_Served]:
    from feedline.service.tokenizers.builtin._multimodal import builtin_processor_dir

    vlm = builtin_processor_dir("qwen2.5-vl")
    served = _Served("--processor", "qwen2.5=qwen2.5", "--processor", "qwen3=qwen3", "--processor", f"qwen2.5-vl={vlm}")
    assert served.http.get("/readyz").status_code == 200
    yield served
    served.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, server: _Served) -> Iterator[Any]:
    """The page, loaded, with its first (automatic) render done; fails the test on any script error."""
    context = browser.new_context(viewport=VIEWPORT)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.requests = []  # every URL the page asked for: all must be the server's own
    opened.on("request", lambda request: opened.requests.append(request.url))
    opened.goto(f"http://127.0.0.1:{server.http_port}/")
    opened.wait_for_selector('#results[data-seq="1"]')
    yield opened
    context.close()
    assert not errors, errors


def _submit(page: Any, row: dict[str, Any]) -> dict[str, Any]:
    """Put ``row`` in the editor, press the button, wait for the render; return the /v1/mask body sent."""
    page.fill("#sample", json.dumps(row, ensure_ascii=False, indent=1))
    page.wait_for_selector('#status:not([data-state="busy"])')  # a render the form started itself is done
    seq = int(page.get_attribute("#results", "data-seq"))
    with page.expect_request(lambda r: r.url.endswith("/v1/mask") and r.method == "POST") as sent:
        page.click("#submit")
    page.wait_for_selector(f'#results[data-seq="{seq + 1}"]')
    return json.loads(sent.value.post_data)


def _positions(page: Any, selector: str) -> list[int]:
    return [int(p) for p in page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.pos)")]


def _screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"page-{name}.png"), full_page=True)


def _apply(page: Any, actions: list[tuple[str, str, Any]]) -> None:
    for kind, selector, value in actions:
        if kind == "fill":
            page.fill(selector, value)
        elif kind == "select":
            page.select_option(selector, value)
        else:
            page.set_checked(selector, value)


@pytest.mark.parametrize(("name", "processor", "row", "actions", "sent_options"), CASES, ids=[c[0] for c in CASES])
def test_supervised_tokens_shown_equal_num_label_tokens(
    page: Any,
    server: _Served,
    name: str,
    processor: str,
    row: dict[str, Any],
    actions: list[tuple[str, str, Any]],
    sent_options: dict[str, Any],
) -> None:
    page.select_option("#processor", processor)
    _apply(page, actions)
    body = _submit(page, row)
    assert body["processor"] == processor and body["sample"] == row
    assert sent_options.items() <= body["options"].items()

    report = server.http.post("/v1/mask", json=body).json()  # the API's own answer to the same request
    supervised = [i for i, t in enumerate(report["tokens"]) if t["supervised"]]
    truncated = [i for i, t in enumerate(report["tokens"]) if t["kind"] == "truncated"]
    assert report["num_label_tokens"] == len(supervised) > 0
    assert len(page.query_selector_all("#tokens .tok.sup")) == report["num_label_tokens"]
    assert _positions(page, "#tokens .tok.sup") == supervised
    assert _positions(page, "#tokens .tok.cut") == truncated
    assert page.inner_text("#sum-label") == str(report["num_label_tokens"])
    assert page.inner_text('#legend .count[data-state="supervised"]') == str(report["num_label_tokens"])
    assert page.inner_text("#turns-total td:nth-child(4)") == str(report["num_label_tokens"])
    assert page.inner_text("#sum-strategy") == report["strategy"]
    assert page.inner_text("#sum-fingerprint") == report["fingerprint"]
    shown_warnings = page.eval_on_selector_all("#warnings li:not(.ok)", "els => els.map(e => e.textContent)")
    assert shown_warnings == report["warnings"]
    if name == "truncated":
        assert truncated and any("truncation cuts" in w for w in report["warnings"])
    if name in ("default", "nemo"):  # no format chosen: the server applies the policy's convention
        assert "label_format" not in body["options"]
        assert report["label_format"] == {"default": "unshifted", "nemo": "shifted"}[name]
        assert page.inner_text("#sum-labels").startswith(report["label_format"])
    _screenshot(page, name)


def test_hover_click_and_arrow_keys_show_id_piece_and_label(page: Any, server: _Served) -> None:
    body = _submit(page, CONVERSATION)
    tokens = server.http.post("/v1/mask", json=body).json()["tokens"]
    first = next(i for i, t in enumerate(tokens) if t["supervised"])
    page.hover(f'#tokens .tok[data-pos="{first}"]')
    assert page.inner_text("#detail .d-id") == str(tokens[first]["id"])
    assert json.loads(page.inner_text("#detail .d-piece")) == tokens[first]["piece"]
    assert page.inner_text("#detail .d-label") == str(tokens[first]["label"])
    assert page.inner_text("#detail .d-state") == "supervised"
    page.click(f'#tokens .tok[data-pos="{first}"]')
    page.keyboard.press("ArrowLeft")
    assert page.get_attribute("#tokens", "aria-activedescendant") == page.get_attribute(
        f'#tokens .tok[data-pos="{first - 1}"]', "id"
    )
    assert page.inner_text("#detail .d-label") == "-100" and page.inner_text("#detail .d-state") == "masked"
    _screenshot(page, "detail")


def test_padding_shown_is_what_collate_pads(page: Any, server: _Served) -> None:
    page.fill("#max_length", "120")
    page.check("#pad_to_max_length")
    body = _submit(page, CONVERSATION)
    options = {**body["options"], "padding": "max_length"}
    batch = server.http.post(
        "/v1/collate", json={"processor": body["processor"], "samples": [body["sample"]], "options": options}
    ).json()
    pads = batch["tensors"]["attention_mask"][0].count(0)
    assert pads > 0
    counts = page.eval_on_selector_all("#tokens .tok.pad", "els => els.map(e => Number(e.dataset.count))")
    assert sum(counts) == pads
    assert page.inner_text('#legend .count[data-state="padding"]') == str(pads)
    _screenshot(page, "padding")


def test_attached_image_goes_into_the_last_user_message_as_a_data_url(page: Any, tmp_path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    path = tmp_path / "red.png"
    path.write_bytes(buffer.getvalue())
    page.fill("#sample", json.dumps(CONVERSATION))
    page.set_input_files("#image", str(path))
    page.wait_for_function("document.getElementById('image-status').textContent.startsWith('Attached')")
    row = json.loads(page.input_value("#sample"))
    expected_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    last_user = row["messages"][5]
    assert last_user["content"] == [{"type": "image", "image": expected_url}, {"type": "text", "text": "Is 91 prime?"}]
    assert row["messages"][:5] == CONVERSATION["messages"][:5]


def test_errors_are_shown_and_bad_json_is_not_sent(page: Any) -> None:
    body = _submit(page, {"messages": [{"role": "user", "content": "no answer here"}]})
    assert body["sample"]["messages"][0]["content"] == "no answer here"
    assert page.is_visible("#error") and not page.is_visible("#report")
    assert "invalid_sample" in page.inner_text("#error")
    _screenshot(page, "error")

    seq = page.get_attribute("#results", "data-seq")
    sent_before = len(page.requests)
    page.fill("#sample", '{"messages": [')
    page.click("#submit")
    assert "Not a valid row" in page.inner_text("#sample-error")
    assert page.get_attribute("#results", "data-seq") == seq and len(page.requests) == sent_before


def test_everything_the_page_loads_comes_from_the_server(page: Any, server: _Served) -> None:
    _submit(page, CONVERSATION)
    origin = f"http://127.0.0.1:{server.http_port}/"
    assert page.requests and all(url.startswith(origin) for url in page.requests), page.requests
    assert (
        page.evaluate("getComputedStyle(document.querySelector('#tokens .tok.sup')).textDecorationLine") == "underline"
    )
    assert (
        page.evaluate("getComputedStyle(document.querySelector('#legend .tok.cut')).textDecorationLine")
        == "line-through"
    )


def test_media_placeholders_are_shown_and_never_supervised(page: Any, server: _Served, tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (20, 120, 200)).save(path, format="PNG")
    page.select_option("#processor", "qwen2.5-vl")
    page.fill("#sample", json.dumps(CONVERSATION))
    page.set_input_files("#image", str(path))
    page.wait_for_function("document.getElementById('image-status').textContent.startsWith('Attached')")
    body = _submit(page, json.loads(page.input_value("#sample")))
    report = server.http.post("/v1/mask", json=body).json()
    media = [t for t in report["tokens"] if t["kind"] == "media"]
    assert media and not any(t["supervised"] for t in media)
    assert page.inner_text('#legend .count[data-state="media"]') == str(len(media))
    assert len(page.query_selector_all("#tokens .tok.sup")) == report["num_label_tokens"] > 0
    _screenshot(page, "media")


def test_docs_render_offline_with_assets_from_the_server(browser: Any, server: _Served) -> None:
    """/docs is Swagger UI served by feedline itself: any request to another host is aborted (as on an offline
    cluster), and the page still lists the API's operations with no script error."""
    origin = f"http://127.0.0.1:{server.http_port}/"
    context = browser.new_context(viewport=VIEWPORT)
    requests: list[str] = []
    errors: list[str] = []
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(origin) else route.abort())
    opened = context.new_page()
    opened.on("request", lambda request: requests.append(request.url))
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.goto(f"{origin}docs")
    opened.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = opened.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path)")
    assert {"/v1/collate", "/v1/mask", "/v1/processors", "/healthz"} <= set(paths), paths
    assert opened.title() == "feedline API" and not errors, errors
    assert requests and all(url.startswith(origin) for url in requests), requests
    assert any(url.endswith("/docs-assets/swagger-ui-bundle.js") for url in requests)
    _screenshot(opened, "docs")
    context.close()
