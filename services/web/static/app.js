// Loupe's page: search, ask about screenshots, feedback, status. Talks to /api/v1/<RPC>.
// Everything that came from users or models is put in the page as text (textContent), never
// as HTML; the server's content security policy allows no inline script.
"use strict";

const KEY = "loupe-api-key";
const PAGE = 12;
const $ = (id) => document.getElementById(id);
const state = { offset: 0, lastSearch: null, uploads: [], collections: [], showAll: false };

// -- small helpers -------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

function notice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "";
    this.violations = error.field_violations || [];
    this.retryAfter = error.retry_after_s;
    this.requestId = (body && body.request_id) || "";
  }
}

async function api(rpc, body = {}) {
  const headers = { "content-type": "application/json" };
  const key = sessionStorage.getItem(KEY);
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(`/api/v1/${rpc}`, { method: "POST", headers, body: JSON.stringify(body) });
  let payload = null;
  try { payload = await response.json(); } catch (e) { payload = null; }
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

// A failed call, said so that a person can act on it.
function explain(err) {
  if (!(err instanceof ApiError)) return `The service could not be reached: ${err.message}`;
  if (err.status === 401) return `Your API key was not accepted (${err.message}). Enter a valid key at the top.`;
  if (err.status === 403) return `Your key may not do this: ${err.message}`;
  if (err.status === 429) return `The service is busy: ${err.message}. Try again in ${Math.ceil(err.retryAfter || 1)} s.`;
  if (err.status === 413) return `That is too large: ${err.message}`;
  const fields = err.violations.map((v) => `${v.field}: ${v.description}`).join("; ");
  return `${err.message}${fields && !err.message.includes(fields) ? ` (${fields})` : ""}`;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function clock(seconds) {
  const s = Math.floor(seconds || 0);
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

// "team=it year>=2020 tag=a|b" -> a loupe.v1.Filter as JSON.
function parseWhere(text) {
  const must = [];
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const m = part.match(/^([^<>=!]+)(>=|<=|>|<|=)(.*)$/);
    if (!m) throw new Error(`Cannot read the filter "${part}": use k=v, k=a|b, k>=n or k<n.`);
    const [, field, op, raw] = m;
    if (op === "=") {
      const values = raw.split("|").map(scalar);
      must.push(values.length > 1 ? { field, any_of: { values } } : { field, equals: values[0] });
    } else {
      const n = Number(raw);
      if (!Number.isFinite(n)) throw new Error(`"${part}": a range needs a number after ${op}.`);
      const bound = { ">=": "gte", "<=": "lte", ">": "gt", "<": "lt" }[op];
      must.push({ field, range: { [bound]: n } });
    }
  }
  return { must };
}

function scalar(text) {
  if (text === "true" || text === "false") return text === "true";
  if (text !== "" && Number.isFinite(Number(text))) return Number(text);
  return text;
}

// -- tabs and key ----------------------------------------------------------------------------
function show(tab) {
  for (const button of document.querySelectorAll(".tab")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === tab));
  }
  for (const name of ["search", "ask", "status"]) $(`panel-${name}`).hidden = name !== tab;
  if (tab === "status") loadStatus();
}

function keyState() {
  $("key-state").textContent = sessionStorage.getItem(KEY) ? "key set for this browser session" : "";
}

// -- collections and status ------------------------------------------------------------------
async function loadCollections() {
  try {
    const status = await api("GetStatus");
    state.collections = status.collections.map((c) => c.name);
  } catch (err) {
    notice(explain(err));
    return;
  }
  for (const select of [$("collection"), $("ask-collection")]) {
    const chosen = select.value;
    clear(select);
    for (const name of state.collections.length ? state.collections : ["default"]) {
      select.append(el("option", { value: name, text: name }));
    }
    if (state.collections.includes(chosen)) select.value = chosen;
  }
  notice("");
}

async function loadStatus() {
  const box = clear($("status"));
  try {
    const health = await fetch("/api/v1/health").then((r) => r.json());
    const st = await api("GetStatus");
    box.append(
      el("p", {}, "Health: ", el("strong", { text: health.status })),
      el("p", { text: `Model ${st.model_id} (${st.model_version}), profile ${st.profile}, store ${st.store_backend}, Loupe ${st.version}` }),
    );
    const table = el("table", {}, el("tr", {}, el("th", { text: "collection" }), el("th", { text: "items" }),
      el("th", { text: "model" }), el("th", { text: "dimensions" })));
    for (const c of st.collections) {
      table.append(el("tr", {}, el("td", { text: c.name }), el("td", { text: String(c.count) }),
        el("td", { text: c.model_id }), el("td", { text: String(c.dim) })));
    }
    box.append(st.collections.length ? table : el("p", { text: "No collections yet." }));
  } catch (err) {
    box.append(el("p", { text: explain(err) }));
  }
}

// -- search ----------------------------------------------------------------------------------
function searchOptions() {
  const options = {
    collection: $("collection").value || "",
    limit: PAGE,
    offset: state.offset,
    with_thumbnails: true,
    modalities: [...document.querySelectorAll("input[name=modality]:checked")].map((i) => i.value),
  };
  const where = $("where").value.trim();
  if (where) options.filter = parseWhere(where);
  if (state.showAll) options.min_confidence = 0;  // "show the nearest anyway" after a no match
  const rerank = $("rerank").value.trim();
  if (rerank) options.rerank = rerank;
  if ($("diverse").checked) options.mmr_lambda = 0.7;
  return options;
}

async function runSearch(kind, payload) {
  state.lastSearch = { kind, payload };
  const stateLine = $("search-state");
  stateLine.textContent = "Searching…";
  let result;
  try {
    const options = searchOptions();
    if (kind === "text") {
      options.mode = document.querySelector("input[name=mode]:checked").value;
      result = await api("SearchText", { query: payload, options });
    } else {
      result = await api("SearchImage", { image: payload, options });
    }
  } catch (err) {
    stateLine.textContent = err instanceof ApiError ? explain(err) : err.message;
    clear($("hits"));
    $("pager").hidden = true;
    $("search-feedback").hidden = true;
    return;
  }
  renderHits(result);
  requestAnimationFrame(() => requestAnimationFrame(() => performance.mark("loupe-results-painted")));
}

function renderHits(result) {
  const list = clear($("hits"));
  const fields = new Set();
  for (const hit of result.hits) {
    const item = hit.item;
    const modality = item.modality.replace("MODALITY_", "").toLowerCase();
    const card = el("li", { class: "hit", "data-id": item.id });
    if (item.thumbnail) {
      card.append(el("img", { src: `data:image/jpeg;base64,${item.thumbnail}`, alt: item.sources[0] || item.id }));
    }
    const confidence = hit.confidence === undefined ? "" : ` · ${Math.round(hit.confidence * 100)}% likely relevant`;
    const reranked = hit.rerank_score === undefined ? "" : ` · rerank ${hit.rerank_score.toFixed(3)}`;
    card.append(el("div", { class: "meta" }, el("span", { class: "score", text: hit.score.toFixed(4) }),
      confidence, reranked, ` · ${modality} · `, el("span", { class: "source", text: item.sources.join(", ") || item.id })));
    if (modality === "audio_segment") {
      card.append(el("div", { class: "meta", text: `${clock(item.start_s)}–${clock(item.end_s)} of ${item.parent_id}` }));
    }
    if (item.text) card.append(el("p", { class: "text", text: item.text }));
    for (const [k, v] of Object.entries(item.metadata || {})) {
      fields.add(k);
      card.append(el("div", { class: "meta", text: `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}` }));
    }
    const used = el("input", { type: "checkbox", class: "used", value: item.id });
    card.append(el("label", { class: "meta" }, used, " useful"));
    list.append(card);
  }
  const datalist = clear($("fields"));
  for (const f of fields) datalist.append(el("option", { value: `${f}=` }));
  const line = clear($("search-state"));
  if (result.no_match) {
    const nearest = el("button", { type: "button", id: "show-all", text: "Show the nearest anyway" });
    nearest.addEventListener("click", () => {
      state.showAll = true;
      runSearch(state.lastSearch.kind, state.lastSearch.payload);
    });
    line.append("No match: nothing in this collection looks relevant to that. ", nearest);
  } else {
    line.textContent = result.hits.length
      ? `${result.hits.length} result(s)${state.offset ? ` from ${state.offset + 1}` : ""}, model ${result.model_id}`
      : "No results. Try other words, another mode, or fewer filters.";
    const stages = [result.rerank && `rerank: ${result.rerank}`, result.diversity && `diversity: ${result.diversity}`];
    if (stages.some(Boolean)) line.textContent += ` (${stages.filter(Boolean).join("; ")})`;
  }
  $("pager").hidden = !(result.next_offset || state.offset);
  $("prev").disabled = !state.offset;
  $("next").disabled = !result.next_offset;
  state.nextOffset = result.next_offset;
  feedbackBox($("search-feedback"), result.request_id, () =>
    [...document.querySelectorAll("#hits input.used:checked")].map((i) => i.value));
}

// -- feedback --------------------------------------------------------------------------------
function feedbackBox(box, requestId, usedIds = () => []) {
  clear(box);
  box.hidden = !requestId;
  if (!requestId) return;
  const comment = el("input", { type: "text", placeholder: "Comment (optional)", "aria-label": "Comment" });
  const said = el("span", { role: "status" });
  const send = async (vote) => {
    try {
      await api("Submit", { request_id: requestId, vote, comment: comment.value, used_ids: usedIds() });
      said.textContent = "Thank you: feedback sent.";
      for (const b of box.querySelectorAll("button")) b.disabled = true;
    } catch (err) {
      said.textContent = explain(err);
    }
  };
  box.append(
    el("span", { text: "Was this helpful?" }),
    el("button", { type: "button", class: "quiet", "aria-label": "Helpful", on: { click: () => send("VOTE_UP") } }, "Yes"),
    el("button", { type: "button", class: "quiet", "aria-label": "Not helpful", on: { click: () => send("VOTE_DOWN") } }, "No"),
    comment,
    said,
  );
}

// -- ask -------------------------------------------------------------------------------------
function addUploads(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    state.uploads.push(file);
  }
  renderUploads();
}

function renderUploads() {
  const list = clear($("uploads"));
  state.uploads.forEach((file, i) => {
    const remove = el("button", { type: "button", class: "quiet", "aria-label": `Remove ${file.name}`,
      on: { click: () => { state.uploads.splice(i, 1); renderUploads(); } } }, "Remove");
    list.append(el("li", {}, el("img", { src: URL.createObjectURL(file), alt: file.name }),
      el("span", { text: `upload-${i + 1}: ${file.name || "pasted image"}` }), " ", remove));
  });
}

async function runAsk(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  const k = Number($("ask-k").value || 0);
  const line = $("ask-state");
  if (!question) { line.textContent = "Type a question first."; return; }
  if (!state.uploads.length && !k) { line.textContent = "Add a screenshot, or look at some indexed items."; return; }
  line.textContent = "Asking… (a few seconds)";
  $("answer").hidden = true;
  try {
    const images = await Promise.all(state.uploads.map(readFile));
    const body = { question, images, retrieval: { k, collection: k ? $("ask-collection").value : "" } };
    renderAnswer(await api("Ask", body));
    line.textContent = "";
  } catch (err) {
    line.textContent = explain(err);
  }
}

function renderAnswer(a) {
  const box = clear($("answer"));
  box.hidden = false;
  const verdict = a.verdict.replace("ANSWER_VERDICT_", "").toLowerCase();
  const heading = { answered: "Answer", abstained: "No answer: the checks did not let one through", blocked: "Refused" }[verdict] || verdict;
  box.append(el("p", {}, el("span", { class: `verdict ${verdict}`, text: verdict }), " ", heading));
  if (a.text) box.append(el("p", { class: "answer-text", text: a.text }));
  if (a.cited.length) {
    const cites = el("ul", { class: "citations" });
    for (const c of a.cited) {
      const where = c.start_s !== undefined ? ` @ ${clock(c.start_s)}–${clock(c.end_s)}` : "";
      cites.append(el("li", {}, el("strong", { text: `[${c.id}]` }), ` ${c.source}${where}: `, el("q", { text: c.snippet })));
    }
    box.append(el("h3", { text: "Citations" }), cites);
  }
  const table = el("table", { class: "guards" }, el("tr", {}, el("th", { text: "check" }),
    el("th", { text: "result" }), el("th", { text: "why" })));
  for (const g of a.guards) {
    table.append(el("tr", {}, el("td", { text: g.guard }),
      el("td", { class: g.passed ? "" : "failed", text: g.passed ? "passed" : "failed" }),
      el("td", { text: [g.reason, g.action].filter(Boolean).join("; ") })));
  }
  box.append(el("h3", { text: "Checks" }), table);
  const timings = Object.entries(a.timings_s).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ");
  box.append(el("p", { class: "meta", text: `Model ${a.model_id}, prompt ${a.prompt_version}, ${a.attempts} draft(s); ${timings}` }));
  if (a.cached) {
    box.append(el("p", { class: "meta cached", text: `Repeated from an identical earlier question (request ${a.cached_request_id}); nothing was run again.` }));
  }
  const fb = el("div", { class: "feedback" });
  box.append(fb);
  feedbackBox(fb, a.request_id);
}

// -- drop, paste, pick -----------------------------------------------------------------------
function dropZone(zone, onFiles) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

function pastedFiles(event) {
  const items = event.clipboardData ? [...event.clipboardData.items] : [];
  return items.filter((i) => i.kind === "file").map((i) => i.getAsFile()).filter(Boolean);
}

async function searchByFile(files) {
  const image = files.find((f) => f.type.startsWith("image/"));
  if (!image) { $("search-state").textContent = "That is not an image file."; return; }
  state.offset = 0;
  state.showAll = false;
  await runSearch("image", await readFile(image));
}

function start() {
  for (const button of document.querySelectorAll(".tab")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("key").value.trim();
    if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
    $("key").value = "";
    keyState();
    loadCollections();
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("q").value.trim();
    if (!q) { $("search-state").textContent = "Type something to search for, or use an image."; return; }
    state.offset = 0;
    state.showAll = false;
    runSearch("text", q);
  });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); runSearch(state.lastSearch.kind, state.lastSearch.payload); });
  $("next").addEventListener("click", () => { state.offset = state.nextOffset; runSearch(state.lastSearch.kind, state.lastSearch.payload); });
  $("search-file").addEventListener("change", (e) => searchByFile([...e.target.files]));
  dropZone($("search-drop"), searchByFile);
  $("ask-files").addEventListener("change", (e) => { addUploads([...e.target.files]); e.target.value = ""; });
  dropZone($("ask-drop"), addUploads);
  document.addEventListener("paste", (e) => {
    const files = pastedFiles(e);
    if (!files.length) return;
    e.preventDefault();
    if (!$("panel-ask").hidden) addUploads(files); else searchByFile(files);
  });
  $("ask-form").addEventListener("submit", runAsk);
  keyState();
  loadCollections().then(() => {
    const params = new URLSearchParams(location.search);
    if (state.collections.includes(params.get("collection"))) $("collection").value = params.get("collection");
    const q = params.get("q");
    if (q) { $("q").value = q; runSearch("text", q); }
    document.body.dataset.ready = "true";
  });
}

document.addEventListener("DOMContentLoaded", start);
