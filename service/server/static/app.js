// feedline mask debugger: posts one conversation to /v1/mask and shows every token with its training state.
// Plain browser JavaScript, no build step and no network access beyond the serving feedline process.
"use strict";

(() => {
  const PRESETS = {
    "Multi-turn chat": {
      messages: [
        { role: "system", content: "You are a concise assistant." },
        { role: "user", content: "What is the capital of France?" },
        { role: "assistant", content: "Paris." },
        { role: "user", content: "And its population, roughly?" },
        { role: "assistant", content: "About 2.1 million people live in the city proper." },
      ],
    },
    "Tool call": {
      tools: [{
        type: "function",
        function: {
          name: "get_weather",
          description: "Current weather for a city",
          parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
        },
      }],
      messages: [
        { role: "user", content: "Is it warm in Lisbon right now?" },
        { role: "assistant", content: "", tool_calls: [
          { id: "call_1", type: "function", function: { name: "get_weather", arguments: { city: "Lisbon" } } },
        ] },
        { role: "tool", tool_call_id: "call_1", content: "{\"temp_c\": 24, \"sky\": \"clear\"}" },
        { role: "assistant", content: "Yes: 24 °C under a clear sky." },
      ],
    },
    "Reasoning (use a template that renders it, e.g. qwen3)": {
      messages: [
        { role: "user", content: "Is 91 prime?" },
        { role: "assistant", reasoning_content: "91 = 7 × 13, so it has divisors other than 1 and itself.",
          content: "No: 91 = 7 × 13." },
      ],
    },
    "ShareGPT row": {
      conversations: [
        { from: "human", value: "Give me a synonym for 'quick'." },
        { from: "gpt", value: "Swift." },
        { from: "human", value: "One more?" },
        { from: "gpt", value: "Rapid." },
      ],
    },
    "Prompt / completion": { prompt: "Translate to German: good morning\n", completion: "Guten Morgen" },
  };
  const PAD_NOTE_ZERO = "padding not shown: collate rejects a row with no supervised tokens";
  const RUNS = new Set(["media", "padding"]); // long runs of one media or pad token collapse into one chip
  const RUN = 4;
  const $ = (id) => document.getElementById(id);
  const state = { processors: [], seq: 0, cells: [], selected: -1 };

  // ---- HTTP ----------------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.kind = err.kind || "http";
      this.field = err.field == null ? null : err.field;
    }
  }

  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    };
    const reply = await fetch(path, init);
    const text = await reply.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!reply.ok) throw new ApiError(reply.status, data);
    return data;
  }

  // ---- processors and options -------------------------------------------------------------------------------

  async function loadProcessors() {
    const data = await api("v1/processors");
    state.processors = data.processors || [];
    const select = $("processor");
    select.replaceChildren(...state.processors.map((p) => new Option(`${p.name} (${p.class})`, p.name)));
    if (!state.processors.length) {
      const failed = Object.entries(data.status || {}).map(([n, s]) => `${n}: ${JSON.stringify(s)}`);
      throw new ApiError(503, { error: { kind: "no_processor", message: `no processor is loaded. ${failed.join("; ")}` } });
    }
    showProcessor();
  }

  function currentProcessor() {
    return state.processors.find((p) => p.name === $("processor").value);
  }

  function showProcessor() {
    const p = currentProcessor();
    if (!p) return;
    $("processor-info").textContent = `${p.family} · ${p.vocab_size} tokens · fingerprint ${p.fingerprint.slice(0, 16)}…`;
    $("processor-info").title = p.fingerprint;
    applyDefaults(p.defaults || {});
  }

  function applyDefaults(d) {
    $("label_policy").value = d.label_policy || "assistant";
    $("label_format").value = d.label_format || "";  // "": the policy's convention, decided by the server
    $("max_length").value = d.max_length == null ? "" : String(d.max_length);
    $("truncation").value = d.max_length != null && d.truncation ? d.truncation : "right";
    $("train_on_last_turn_only").checked = Boolean(d.train_on_last_turn_only);
    $("mask_reasoning_content").checked = Boolean(d.mask_reasoning_content);
  }

  function readOptions() {
    const raw = $("max_length").value.trim();
    const maxLength = raw === "" ? null : Number(raw);
    if (maxLength !== null && !(Number.isInteger(maxLength) && maxLength >= 2)) {
      throw new ApiError(400, { error: { kind: "invalid_options", message: "max_length must be an integer ≥ 2", field: "max_length" } });
    }
    return {
      label_policy: $("label_policy").value,
      label_format: $("label_format").value || undefined,  // unset: follows the label policy
      max_length: maxLength,
      truncation: maxLength === null ? "none" : $("truncation").value,
      padding: "longest",
      train_on_last_turn_only: $("train_on_last_turn_only").checked,
      mask_reasoning_content: $("mask_reasoning_content").checked,
    };
  }

  // ---- the conversation editor ---------------------------------------------------------------------------

  function setSample(row) {
    $("sample").value = JSON.stringify(row, null, 2);
    $("sample-error").textContent = "";
  }

  function readSample() {
    try {
      const row = JSON.parse($("sample").value);
      if (row === null || typeof row !== "object" || Array.isArray(row)) throw new SyntaxError("the row must be a JSON object");
      $("sample-error").textContent = "";
      return row;
    } catch (e) {
      $("sample-error").textContent = `Not a valid row: ${e.message}`;
      $("sample").focus();
      return null;
    }
  }

  function attachImage(file) {
    const row = readSample();
    if (!row) return;
    const messages = Array.isArray(row.messages) ? row.messages : null;
    const index = messages ? messages.map((m) => m && m.role).lastIndexOf("user") : -1;
    if (index < 0) {
      $("image-status").textContent = "Images attach to a 'messages' row with a user message.";
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      const msg = messages[index];
      const parts = typeof msg.content === "string" ? [{ type: "text", text: msg.content }] : (msg.content || []);
      const images = parts.filter((p) => p && p.type === "image").length;
      parts.splice(images, 0, { type: "image", image: reader.result });
      msg.content = parts;
      setSample(row);
      $("image-status").textContent = `Attached ${file.name} (${(file.size / 1024).toFixed(1)} KiB) to messages[${index}].`;
    };
    reader.onerror = () => { $("image-status").textContent = `Could not read ${file.name}.`; };
    reader.readAsDataURL(file);
  }

  // ---- submit --------------------------------------------------------------------------------------------

  async function submit() {
    const sample = readSample();
    if (!sample) return;
    const seq = ++state.seq;
    setStatus("busy", "Tokenizing…");
    try {
      const body = { processor: $("processor").value || null, sample, options: readOptions() };
      const report = await api("v1/mask", body);
      const padding = await paddingFor(body, report);
      if (seq !== state.seq) return; // a newer request superseded this one
      render(report, padding);
      $("results").dataset.seq = String(seq);
      setStatus("ready", `${report.num_label_tokens} of ${report.num_tokens} tokens supervised.`);
    } catch (e) {
      if (seq !== state.seq) return;
      showError(e);
      $("results").dataset.seq = String(seq);
    }
  }

  async function paddingFor(body, report) {
    const maxLength = body.options.max_length;
    if (!$("pad_to_max_length").checked) return { cells: [], note: "" };
    if (maxLength === null) return { cells: [], note: "padding not shown: set max_length to pad to it" };
    if (report.num_label_tokens === 0) return { cells: [], note: PAD_NOTE_ZERO };
    const options = { ...body.options, padding: "max_length" };
    try {
      const batch = await api("v1/collate", { processor: body.processor, samples: [body.sample], options });
      return { cells: paddingCells(batch, report), note: "" };
    } catch (e) {
      return { cells: [], note: `padding not shown: ${e.kind}: ${e.message}` };
    }
  }

  function paddingCells(batch, report) {
    const t = batch.tensors;
    const ids = t.input_ids[0];
    const mask = t.attention_mask ? t.attention_mask[0] : null;
    const labels = t.labels ? t.labels[0] : t.loss_mask ? t.loss_mask[0] : null;
    if (!mask) return [];
    const pieces = new Map(report.tokens.map((tok) => [tok.id, tok.piece]));
    const cells = [];
    mask.forEach((m, i) => {
      if (m !== 0) return;
      cells.push({ id: ids[i], piece: pieces.has(ids[i]) ? pieces.get(ids[i]) : "", turn: -1, role: null,
        supervised: false, label: labels ? labels[i] : null, kind: "padding", position: i });
    });
    return cells;
  }

  // ---- rendering -----------------------------------------------------------------------------------------

  function setStatus(kind, text) {
    $("status").dataset.state = kind;
    $("status").textContent = text;
  }

  function showError(e) {
    const box = $("error");
    const where = e.field ? ` (field ${e.field})` : "";
    box.textContent = `${e.kind || "error"}: ${e.message}${where}`;
    box.hidden = false;
    $("report").hidden = true;
    setStatus("error", "The request failed.");
  }

  function stateOf(tok) {
    if (tok.kind === "padding") return "padding";
    if (tok.kind === "truncated") return "truncated";
    if (tok.kind === "media") return "media";
    return tok.supervised ? "supervised" : "masked";
  }

  function render(report, padding) {
    $("error").hidden = true;
    $("report").hidden = false;
    renderSummary(report);
    renderWarnings(report.warnings || []);
    state.cells = buildCells(report.tokens.map((tok, i) => ({ ...tok, position: i })).concat(padding.cells));
    renderTokens();
    renderLegend();
    renderTurns(report.tokens);
    $("padding-note").textContent = padding.note;
  }

  function renderSummary(r) {
    const total = r.tokens.length;
    $("sum-label").textContent = String(r.num_label_tokens);
    $("sum-tokens").textContent = total > r.num_tokens ? `${r.num_tokens} kept of ${total}` : String(r.num_tokens);
    $("sum-strategy").textContent = r.strategy;
    $("sum-labels").textContent = `${r.label_format} · policy ${r.label_policy}`;
    $("sum-processor").textContent = r.processor;
    $("sum-fingerprint").textContent = r.fingerprint;
  }

  function renderWarnings(warnings) {
    const list = $("warnings");
    list.replaceChildren(...warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
    $("warnings-box").classList.toggle("none", warnings.length === 0);
    if (!warnings.length) list.append(Object.assign(document.createElement("li"), { textContent: "None.", className: "ok" }));
  }

  // A cell is one shown token, or one chip standing for a run of identical media or pad tokens.
  function buildCells(tokens) {
    const cells = [];
    for (let i = 0; i < tokens.length; ) {
      let j = i + 1;
      const tok = tokens[i];
      if (RUNS.has(stateOf(tok))) {
        while (j < tokens.length && tokens[j].id === tok.id && stateOf(tokens[j]) === stateOf(tok)) j += 1;
      }
      const run = j - i > RUN ? j - i : 1;
      cells.push({ ...tok, state: stateOf(tok), count: run, last: tokens[i + run - 1].position });
      i += run;
    }
    return cells;
  }

  function shown(cell) {
    const piece = cell.piece;
    if (cell.state === "padding" && piece === "") return "pad";
    if (piece === "") return "∅";
    if (/^ +$/.test(piece)) return "·".repeat(piece.length);
    return piece.replace(/\r/g, "␍").replace(/\t/g, "⇥").replace(/\n/g, "↵\n");
  }

  const CLASS = { supervised: "sup", masked: "masked", media: "media", padding: "pad", truncated: "cut" };

  function tokenElement(cell, index) {
    const el = document.createElement("span");
    el.className = `tok ${CLASS[cell.state]}${cell.kind === "special" ? " special" : ""}`;
    el.id = `tok-${index}`;
    el.setAttribute("role", "option");
    el.setAttribute("aria-selected", "false");
    el.dataset.index = String(index);
    el.dataset.turn = String(cell.turn);
    el.dataset.pos = String(cell.position);
    el.dataset.count = String(cell.count);
    el.textContent = cell.count > 1 ? `${shown(cell)} ×${cell.count}` : shown(cell);
    el.title = `${cell.state} · id ${cell.id} · label ${cell.label}`;
    return el;
  }

  function renderTokens() {
    const box = $("tokens");
    const frag = document.createDocumentFragment();
    let previous = null;
    state.cells.forEach((cell, i) => {
      const boundary = previous !== null && (previous === "truncated") !== (cell.state === "truncated");
      if (boundary) frag.append(marker("✂ max_length", "cutmark"));
      if (cell.state === "padding" && previous !== "padding") frag.append(marker("padding →", "padmark"));
      frag.append(tokenElement(cell, i));
      previous = cell.state;
    });
    box.replaceChildren(frag);
    box.dataset.supervised = String(state.cells.filter((c) => c.state === "supervised").length);
    box.removeAttribute("aria-activedescendant");
    state.selected = -1;
    showDetail(-1);
  }

  function marker(text, className) {
    const el = Object.assign(document.createElement("span"), { textContent: text, className });
    el.setAttribute("aria-hidden", "true");
    return el;
  }

  function renderLegend() {
    const counts = { supervised: 0, masked: 0, media: 0, padding: 0, truncated: 0 };
    state.cells.forEach((c) => { counts[c.state] += c.count; });
    document.querySelectorAll("#legend .count").forEach((el) => {
      el.textContent = String(counts[el.dataset.state]);
    });
  }

  function renderTurns(tokens) {
    const turns = new Map();
    tokens.forEach((tok) => {
      const row = turns.get(tok.turn) || { role: tok.role, tokens: 0, supervised: 0, truncated: 0 };
      if (tok.kind === "truncated") row.truncated += 1; else row.tokens += 1;
      if (tok.supervised) row.supervised += 1;
      turns.set(tok.turn, row);
    });
    const body = $("turns");
    body.replaceChildren(...[...turns.entries()].sort((a, b) => a[0] - b[0]).map(([turn, row]) => turnRow(turn, row)));
    const sum = (key) => [...turns.values()].reduce((n, r) => n + r[key], 0);
    const foot = document.createElement("tr");
    foot.append(cell("th", "All", "row"), cell("td", ""), cell("td", sum("tokens")), cell("td", sum("supervised")),
      cell("td", sum("truncated")));
    $("turns-total").replaceChildren(foot);
  }

  function cell(tag, text, scope) {
    const el = Object.assign(document.createElement(tag), { textContent: String(text) });
    if (scope) el.scope = scope;
    return el;
  }

  function turnRow(turn, row) {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    tr.dataset.turn = String(turn);
    tr.append(cell("th", turn < 0 ? "—" : turn, "row"), cell("td", row.role || "—"), cell("td", row.tokens),
      cell("td", row.supervised), cell("td", row.truncated));
    if (row.supervised) tr.classList.add("has-sup");
    const toggle = () => highlightTurn(turn, tr);
    tr.addEventListener("click", toggle);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(); } });
    return tr;
  }

  function highlightTurn(turn, tr) {
    const on = !tr.classList.contains("active");
    document.querySelectorAll("#turns tr.active").forEach((r) => r.classList.remove("active"));
    document.querySelectorAll("#tokens .tok.hl").forEach((t) => t.classList.remove("hl"));
    if (!on) return;
    tr.classList.add("active");
    const toks = document.querySelectorAll(`#tokens .tok[data-turn="${turn}"]`);
    toks.forEach((t) => t.classList.add("hl"));
    if (toks.length) toks[0].scrollIntoView({ block: "nearest" });
  }

  // ---- token details and selection -----------------------------------------------------------------------

  function showDetail(index) {
    const box = $("detail");
    const c = state.cells[index];
    if (!c) {
      box.replaceChildren(Object.assign(document.createElement("p"), { className: "hint", textContent: "No token selected." }));
      return;
    }
    const rows = [
      ["Position", c.count > 1 ? `${c.position}–${c.last} (${c.count} tokens)` : c.position],
      ["Id", c.id], ["Piece", JSON.stringify(c.piece)], ["State", c.state], ["Kind", c.kind],
      ["Turn", c.turn < 0 ? "—" : c.turn], ["Role", c.role || "—"], ["Label", c.label == null ? "—" : c.label],
    ];
    const dl = document.createElement("dl");
    rows.forEach(([k, v]) => dl.append(Object.assign(document.createElement("dt"), { textContent: k }),
      Object.assign(document.createElement("dd"), { textContent: String(v), className: `d-${k.toLowerCase()}` })));
    box.replaceChildren(dl);
  }

  function select(index) {
    const box = $("tokens");
    const old = $(`tok-${state.selected}`);
    if (old) { old.classList.remove("sel"); old.setAttribute("aria-selected", "false"); }
    state.selected = index;
    const el = $(`tok-${index}`);
    if (!el) return;
    el.classList.add("sel");
    el.setAttribute("aria-selected", "true");
    box.setAttribute("aria-activedescendant", el.id);
    el.scrollIntoView({ block: "nearest" });
    showDetail(index);
  }

  function tokenIndex(target) {
    const el = target.closest && target.closest(".tok");
    return el && el.dataset.index !== undefined ? Number(el.dataset.index) : -1;
  }

  function wireTokens() {
    const box = $("tokens");
    box.addEventListener("click", (e) => { const i = tokenIndex(e.target); if (i >= 0) select(i); });
    box.addEventListener("mouseover", (e) => { const i = tokenIndex(e.target); if (i >= 0) showDetail(i); });
    box.addEventListener("mouseleave", () => showDetail(state.selected));
    box.addEventListener("keydown", (e) => {
      const last = state.cells.length - 1;
      const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
      let next = null;
      if (e.key in moves) next = Math.min(last, Math.max(0, (state.selected < 0 ? -1 : state.selected) + moves[e.key]));
      if (e.key === "Home") next = 0;
      if (e.key === "End") next = last;
      if (next === null || last < 0) return;
      e.preventDefault();
      select(next);
    });
  }

  // ---- start ---------------------------------------------------------------------------------------------

  function wireForm() {
    const preset = $("preset");
    Object.keys(PRESETS).forEach((name) => preset.append(new Option(name, name)));
    preset.addEventListener("change", () => { setSample(PRESETS[preset.value]); submit(); });
    $("processor").addEventListener("change", () => { showProcessor(); submit(); });
    $("form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
    $("sample").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
    });
    $("image").addEventListener("change", (e) => {
      const file = e.target.files && e.target.files[0];
      if (file) attachImage(file);
      e.target.value = "";
    });
    setSample(PRESETS[preset.value]);
  }

  async function start() {
    wireForm();
    wireTokens();
    try {
      await loadProcessors();
    } catch (e) {
      showError(e);
      return;
    }
    submit();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
