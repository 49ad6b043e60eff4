// The vectorstore console: plain JavaScript, no build step, nothing from another origin.
// The API key lives in `key` below and nowhere else (no cookie, no localStorage, no URL): reloading the page
// forgets it. Every call is the public API with that key. Data from the API is put into the page with
// textContent only, never as HTML.
"use strict";

(() => {
  let key = null;
  let canWrite = false;
  let store = null; // the selected store object

  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = cell === undefined || cell === null ? "" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function when(seconds) {
    return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "never";
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + key }, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch("/v1" + path, init);
    let payload = null;
    try { payload = await response.json(); } catch (_) { payload = null; }
    if (!response.ok) {
      const message = payload && payload.error && payload.error.message ? payload.error.message : response.statusText;
      throw new ApiError(response.status, message);
    }
    return payload;
  }

  async function listAll(path) {
    const out = [];
    let after = null;
    for (let page = 0; page < 50; page += 1) {
      const sep = path.includes("?") ? "&" : "?";
      const answer = await api("GET", path + sep + "limit=100" + (after ? "&after=" + encodeURIComponent(after) : ""));
      out.push(...answer.data);
      if (!answer.has_more || !answer.data.length) break;
      after = answer.data[answer.data.length - 1].id;
    }
    return out;
  }

  // --- login ----------------------------------------------------------------------------------------------

  async function login(event) {
    event.preventDefault();
    const candidate = $("key").value.trim();
    $("login-error").textContent = "";
    if (!candidate) { $("login-error").textContent = "Enter an API key."; return; }
    key = candidate;
    $("key").value = "";
    try {
      const stores = await listAll("/vector_stores");
      canWrite = await probeWrite();
      $("login").hidden = true;
      $("app").hidden = false;
      $("logout").hidden = false;
      $("who").hidden = false;
      $("who").textContent = canWrite ? "key scope: write" : "key scope: read (no write actions)";
      document.body.classList.toggle("read-only", !canWrite);
      showStores(stores);
    } catch (error) {
      key = null;
      $("login-error").textContent = error.status === 401
        ? "This key was refused: " + error.message
        : "Could not list the stores: " + error.message;
    }
  }

  // A read key gets 403 for any write route before the route looks at anything; a write key gets 404 for a
  // store id that can't exist. Nothing is changed either way.
  async function probeWrite() {
    try {
      await api("POST", "/vector_stores/vs_consolescopeprobe", {});
      return true;
    } catch (error) {
      return error.status !== 403;
    }
  }

  function logout() {
    key = null;
    window.location.reload();
  }

  // --- stores ---------------------------------------------------------------------------------------------

  function showStores(stores) {
    const body = $("stores").querySelector("tbody");
    body.replaceChildren();
    for (const item of stores) {
      const counts = item.file_counts || {};
      const tr = row([
        item.name, el("code", item.id), item.status, counts.completed, counts.in_progress,
        el("span", counts.failed, counts.failed ? "status-failed" : ""), counts.total, bytes(item.usage_bytes || 0),
        el("code", Object.keys(item.metadata || {}).length ? JSON.stringify(item.metadata) : ""),
        "", "", "", "",
      ]);
      fillSettings(item, tr);
      tr.className = "clickable";
      tr.dataset.storeId = item.id;
      tr.addEventListener("click", () => selectStore(item, tr));
      body.appendChild(tr);
    }
    if (!stores.length) body.appendChild(row(["No store is visible to this key."]));
  }

  // How the store is built and searched, from its settings route: four more cells of its row.
  async function fillSettings(item, tr) {
    const cells = tr.querySelectorAll("td");
    try {
      const s = await api("GET", "/vector_stores/" + encodeURIComponent(item.id) + "/settings");
      cells[9].textContent = s.declared ? "declared" : "API";
      cells[10].textContent = s.model + " · " + s.dimensions + " dims";
      cells[11].textContent = s.vector_type + " " + s.distance + " · " + s.quantization +
        " · m " + s.index.m + ", ef_search " + s.index.ef_search + (s.keyword_index === "ready" ? "" : " · keyword index upgrading");
      cells[12].textContent = s.search.mode + " · " + s.search.default_max_num_results + " results" +
        (s.search.mode === "hybrid" ? " · weights " + s.search.embedding_weight + "/" + s.search.text_weight : "") +
        (s.search.rerank ? " · rerank" : "");
    } catch (error) {
      cells[9].textContent = error.message;
    }
  }

  function selectStore(item, tr) {
    store = item;
    for (const other of document.querySelectorAll("#stores tr.selected")) other.classList.remove("selected");
    tr.classList.add("selected");
    $("store-detail").hidden = false;
    $("store-title").textContent = item.name + " (" + item.id + ")";
    $("file-detail").hidden = true;
    $("results-a").replaceChildren();
    $("results-b").replaceChildren();
    loadFiles();
    loadSources();
  }

  function showTab(name) {
    for (const button of document.querySelectorAll(".tabs button")) {
      button.classList.toggle("active", button.dataset.tab === name);
    }
    for (const tab of ["files", "sources", "search"]) $("tab-" + tab).hidden = tab !== name;
  }

  // --- files ----------------------------------------------------------------------------------------------

  async function loadFiles() {
    const current = store;
    const filter = $("file-filter").value;
    const body = $("files").querySelector("tbody");
    body.replaceChildren(row(["loading..."]));
    try {
      const files = await listAll("/vector_stores/" + encodeURIComponent(current.id) + "/files" +
        (filter ? "?filter=" + encodeURIComponent(filter) : ""));
      if (store !== current) return;
      body.replaceChildren();
      for (const file of files) body.appendChild(fileRow(file));
      if (!files.length) body.appendChild(row(["No file" + (filter ? " with status " + filter : "") + "."]));
    } catch (error) {
      body.replaceChildren(row([el("span", error.message, "error")]));
    }
  }

  function fileRow(file) {
    const error = file.last_error ? file.last_error.code + ": " + file.last_error.message : "";
    const chunks = el("span", "…");
    const open = el("button", "Chunks");
    open.type = "button";
    open.addEventListener("click", () => showFile(file));
    const actions = el("span");
    actions.appendChild(open);
    if (canWrite) {
      const remove = el("button", "Remove from store", "write-action");
      remove.type = "button";
      remove.addEventListener("click", () => removeFile(file));
      actions.appendChild(remove);
    }
    const tr = row([
      el("code", file.id), el("span", file.status, "status-" + file.status), el("span", error, "error"),
      el("code", Object.keys(file.attributes || {}).length ? JSON.stringify(file.attributes) : ""), chunks, actions,
    ]);
    tr.dataset.fileId = file.id;
    if (file.status === "completed") {
      fileChunks(file).then((texts) => { chunks.textContent = String(texts.length); }, () => { chunks.textContent = "?"; });
    } else {
      chunks.textContent = "0";
    }
    return tr;
  }

  async function fileChunks(file) {
    const answer = await api("GET", "/vector_stores/" + encodeURIComponent(store.id) + "/files/" +
      encodeURIComponent(file.id) + "/content");
    return answer.data.map((item) => item.text);
  }

  async function showFile(file) {
    $("file-detail").hidden = false;
    $("file-detail-title").textContent = "File " + file.id + " (" + file.status + ")";
    $("file-error").textContent = file.last_error
      ? "last_error: " + file.last_error.code + ": " + file.last_error.message : "";
    const list = $("chunks");
    list.replaceChildren();
    if (file.status !== "completed") return;
    try {
      for (const text of await fileChunks(file)) list.appendChild(el("li", text));
    } catch (error) {
      list.appendChild(el("li", error.message, "error"));
    }
  }

  async function removeFile(file) {
    if (!window.confirm("Remove file " + file.id + " from " + store.name + "?")) return;
    try {
      await api("DELETE", "/vector_stores/" + encodeURIComponent(store.id) + "/files/" + encodeURIComponent(file.id));
      loadFiles();
    } catch (error) {
      $("app-error").textContent = error.message;
    }
  }

  // --- sources --------------------------------------------------------------------------------------------

  async function loadSources() {
    const current = store;
    const body = $("sources").querySelector("tbody");
    const failures = $("source-failures");
    body.replaceChildren();
    failures.replaceChildren();
    try {
      const sources = (await api("GET", "/vector_stores/" + encodeURIComponent(current.id) + "/sources")).data;
      if (store !== current) return;
      for (const source of sources) {
        const last = source.last_sync || {};
        const files = source.files || {};
        body.appendChild(row([
          source.name, source.type, el("code", source.location), el("span", source.status, "status-" + source.status),
          last.finished_at ? when(last.finished_at) + " (" + last.duration_seconds + " s)" : "never",
          when(source.last_success_at),
          last.finished_at ? [last.added, last.updated, last.deleted, last.failed].join(" / ") : "",
          (files.completed || 0) + " completed, " + (files.failed || 0) + " failed of " + (files.total || 0),
          el("span", last.error || "", "error"),
        ]));
        for (const failure of last.failures || []) {
          failures.appendChild(el("li", source.name + ": " + failure.path + ": " + failure.reason, "error"));
        }
      }
      if (!sources.length) body.appendChild(row(["This store declares no source."]));
    } catch (error) {
      body.replaceChildren(row([el("span", error.message, "error")]));
    }
  }

  // --- search ---------------------------------------------------------------------------------------------

  function terms(query) {
    return Array.from(new Set(query.toLowerCase().match(/[\p{L}\p{N}]{2,}/gu) || []));
  }

  // The chunk's text with the query's words in <mark>, built from text nodes (never parsed as HTML).
  function highlighted(text, words) {
    const node = el("div", null, "text");
    if (!words.length) { node.textContent = text; return node; }
    const escaped = words.map((word) => word.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const pattern = new RegExp("(" + escaped.join("|") + ")", "giu");
    let last = 0;
    for (const match of text.matchAll(pattern)) {
      node.appendChild(document.createTextNode(text.slice(last, match.index)));
      node.appendChild(el("mark", match[0]));
      last = match.index + match[0].length;
    }
    node.appendChild(document.createTextNode(text.slice(last)));
    return node;
  }

  async function runSearch(mode, list, title, request) {
    const body = { ...request };
    if (mode) body.search_mode = mode;
    title.textContent = (mode || "store default") + ": searching...";
    list.replaceChildren();
    const started = performance.now();
    const answer = await api("POST", "/vector_stores/" + encodeURIComponent(store.id) + "/search", body);
    const words = terms(request.query);
    title.textContent = (mode || "store default") + ": " + answer.data.length + " results in " +
      Math.round(performance.now() - started) + " ms";
    for (const hit of answer.data) {
      const item = el("li");
      item.dataset.fileId = hit.file_id;
      const meta = el("div", "score " + hit.score.toFixed(4) + " · " + (hit.filename || hit.file_id) +
        (Object.keys(hit.attributes || {}).length ? " · " + JSON.stringify(hit.attributes) : ""), "meta");
      item.appendChild(meta);
      item.appendChild(highlighted(hit.content.map((part) => part.text).join("\n"), words));
      list.appendChild(item);
    }
    if (!answer.data.length) list.appendChild(el("li", "No result."));
  }

  async function search(event) {
    event.preventDefault();
    $("search-error").textContent = "";
    const query = $("query").value.trim();
    if (!query) { $("search-error").textContent = "Enter a query."; return; }
    const request = { query, max_num_results: Number($("max-results").value) || 5 };
    const filters = $("filters").value.trim();
    if (filters) {
      try { request.filters = JSON.parse(filters); } catch (error) {
        $("search-error").textContent = "The filters are not valid JSON: " + error.message;
        return;
      }
    }
    if (!$("rerank").checked) request.ranking_options = { ranker: "none" };
    const compare = $("compare").checked;
    $("column-b").hidden = !compare;
    const runs = [runSearch($("mode-a").value, $("results-a"), $("results-a-title"), request)];
    if (compare) runs.push(runSearch($("mode-b").value, $("results-b"), $("results-b-title"), request));
    const outcomes = await Promise.allSettled(runs);
    const failed = outcomes.filter((outcome) => outcome.status === "rejected");
    if (failed.length) $("search-error").textContent = failed.map((outcome) => outcome.reason.message).join("\n");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("file-filter").addEventListener("change", loadFiles);
    $("search-form").addEventListener("submit", search);
    for (const button of document.querySelectorAll(".tabs button")) {
      button.addEventListener("click", () => showTab(button.dataset.tab));
    }
    $("key").focus();
  });
})();
