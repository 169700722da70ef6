// The gateway's dashboard: plain JavaScript over the gateway's own routes.
// Every request carries the key typed in (kept in sessionStorage: this tab only).
"use strict";

const KEY_ITEM = "gateway.key";
const POLL_MS = 1500;
const state = { scopes: [], tab: null, timer: null, models: [], curves: new Map() };

// ---- helpers -------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function can(scope) {
  return state.scopes.includes(scope) || state.scopes.includes("admin");
}

function notify(message, isError = false) {
  const notice = $("#notice");
  notice.textContent = message;
  notice.className = isError ? "error" : "ok";
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { notice.hidden = true; }, isError ? 10000 : 4000);
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// Whatever dialect answered, its error message.
function errorMessage(body, status) {
  if (body && typeof body === "object") {
    const error = body.error;
    if (error && typeof error === "object" && error.message) return error.message;
    if (typeof error === "string") return error;
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    if (body.message) return body.message;
  }
  return `HTTP ${status}`;
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(path, { method = "GET", json, form, raw = false } = {}) {
  const init = { method, headers: headers() };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const reply = await fetch(path, init);
  if (raw && reply.ok) return reply;
  const text = await reply.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!reply.ok) {
    if (reply.status === 401) showLogin(errorMessage(body, reply.status));
    throw new ApiError(errorMessage(body, reply.status), reply.status);
  }
  return body;
}

function guarded(action) {
  return async (event) => {
    if (event) event.preventDefault();
    try { await action(event); } catch (error) { notify(error.message, true); }
  };
}

// ---- session -------------------------------------------------------------------------

function showLogin(message = "") {
  clearInterval(state.timer);
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = true;
  $("#tabs").hidden = true;
}

async function start() {
  let session;
  try {
    session = await api("/ui/session");
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(KEY_ITEM);
      return;
    }
    notify(error.message, true);
    return;
  }
  if (session.key_required) {
    if (session.key_error) sessionStorage.removeItem(KEY_ITEM);
    showLogin(session.key_error || "");
    return;
  }
  state.scopes = session.scopes;
  $("#login").hidden = true;
  $("#tabs").hidden = false;
  $("#forget").hidden = !sessionStorage.getItem(KEY_ITEM);
  $("#who").textContent = session.actor ? `${session.actor}: ${session.scopes.join(", ")}` : "";
  for (const node of document.querySelectorAll("[data-scope]")) {
    node.hidden = !can(node.dataset.scope);
  }
  const first = [...document.querySelectorAll("#tabs button")].find((b) => !b.hidden);
  const wanted = location.hash.slice(1);
  const chosen = document.querySelector(`#tabs button[data-tab="${wanted}"]:not([hidden])`) || first;
  if (chosen) show(chosen.dataset.tab);
}

function show(tab) {
  state.tab = tab;
  history.replaceState(null, "", `#${tab}`);
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  for (const section of document.querySelectorAll(".tab")) section.hidden = section.id !== tab;
  clearInterval(state.timer);
  const view = VIEWS[tab];
  if (view.enter) view.enter().catch((error) => notify(error.message, true));
  if (view.poll) {
    const tick = () => view.poll().catch((error) => notify(error.message, true));
    tick();
    state.timer = setInterval(tick, POLL_MS);
  }
}

async function loadModels() {
  const listing = await api("/v1/models");
  state.models = listing.data;
  return state.models;
}

function fillModelSelect(select, models) {
  const current = select.value;
  const names = models.map((m) => m.id);
  select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
  if (names.includes(current)) select.value = current;
}

// ---- status --------------------------------------------------------------------------

async function pollStatus() {
  const [status, health, decode] = await Promise.all([
    api("/v1/models/status"),
    fetch("/health", { headers: headers() }).then((r) => r.json()),
    api("/v1/stats/decode"),
  ]);
  const engines = new Map((health.models || []).map((m) => [m.name, m]));
  fill($("#status-models tbody"), status.models.map((m) => {
    const engine = engines.get(m.name) || {};
    const busy = engine.slots !== undefined ? `${engine.active ?? 0} / ${engine.slots}` : "-";
    return el("tr", { dataset: { model: m.name } },
      el("td", {}, m.name),
      el("td", { class: `state ${m.state}` }, m.state),
      el("td", {}, engine.runner || m.backend),
      el("td", {}, engine.dtype || "-"),
      el("td", {}, busy),
      el("td", {}, engine.queued ?? "-"),
      el("td", {}, bytes(m.memory_bytes)),
      el("td", {}, m.requests_served));
  }));
  $("#tok-s").textContent = decode.tok_per_sec.toFixed(1);
  $("#itl-p50").textContent = decode.p50_itl_ms.toFixed(1);
  $("#itl-p99").textContent = decode.p99_itl_ms.toFixed(1);
  $("#decode-window").textContent = `last ${decode.window_secs} s, ${decode.sample_count} samples`;
  if (can("admin")) {
    const recent = await api("/v1/stats/recent-requests");
    fill($("#recent tbody"), recent.slice(0, 20).map((r) => el("tr", {},
      el("td", {}, new Date(r.timestamp_unix_ms).toLocaleTimeString()),
      el("td", {}, r.model),
      el("td", { class: "preview" }, r.prompt_preview),
      el("td", { class: "preview" }, r.completion_preview),
      el("td", {}, `${r.prompt_tokens} + ${r.completion_tokens}`),
      el("td", {}, r.duration_ms),
      el("td", {}, r.finish_reason || "-"))));
  }
}

// ---- models --------------------------------------------------------------------------

async function pollModels() {
  const status = await api("/v1/models/status");
  const limit = status.max_loaded ? `at most ${status.max_loaded} loaded` : "no limit on how many load";
  const budget = status.memory_budget_bytes ? `, budget ${bytes(status.memory_budget_bytes)}` : "";
  $("#models-summary").textContent =
    `${status.loaded} loaded, ${limit}${budget}; ${bytes(status.available_bytes)} available. ` +
    (status.autoload ? "A request for a model that is not loaded loads it." : "Requests never load a model (autoload is off).");
  fill($("#models-table tbody"), status.models.map((m) => {
    const loaded = m.state === "ready";
    const action = !can("admin") ? "" : loaded
      ? el("button", { onclick: guarded(() => modelAction("unload", m.name)) }, "Unload")
      : el("button", { disabled: m.state === "loading" || m.state === "unloading", onclick: guarded(() => modelAction("load", m.name)) }, "Load");
    return el("tr", { dataset: { model: m.name } },
      el("td", {}, m.name),
      el("td", { class: `state ${m.state}` }, m.state + (m.error ? `: ${m.error}` : "")),
      el("td", {}, m.backend),
      el("td", {}, `${m.load === "startup" ? "at start" : "on demand"}, ${m.loads} so far`),
      el("td", {}, m.pinned ? "pinned" : ""),
      el("td", {}, bytes(m.memory_bytes ?? m.estimated_bytes) + (m.memory_bytes ? "" : " (est.)")),
      el("td", {}, seconds(m.uptime_seconds)),
      el("td", {}, action));
  }));
}

async function modelAction(action, name) {
  notify(`${action === "load" ? "Loading" : "Unloading"} ${name}...`);
  const reply = await api(`/v1/models/${action}`, { method: "POST", json: { name } });
  notify(reply.message);
  await pollModels();
}

// ---- adapters ------------------------------------------------------------------------

async function enterAdapters() {
  fillModelSelect($("#adapters-model"), await loadModels());
}

async function pollAdapters() {
  const model = $("#adapters-model").value;
  if (!model) return;
  const listing = await api(`/v1/adapters?model=${encodeURIComponent(model)}`);
  $("#adapters-default").textContent = listing.active || "the base model";
  const mayChange = can("adapters");
  fill($("#adapters-table tbody"), listing.available.map((a) => el("tr", { dataset: { adapter: a.name } },
    el("td", {}, a.name, a.name === listing.active ? el("em", {}, " (default)") : ""),
    el("td", {}, bytes(a.size_bytes)),
    el("td", {}, a.modified_at ? new Date(a.modified_at).toLocaleString() : "-"),
    el("td", { class: "actions" },
      el("button", { onclick: guarded(() => download(model, a.name)) }, "Download"),
      mayChange && el("button", { onclick: guarded(() => setDefault(model, a.name)) }, "Set default"),
      mayChange && el("button", { class: "danger", onclick: guarded(() => removeAdapter(model, a.name)) }, "Delete")))));
  const sources = $("#merge-sources");
  const known = new Set([...sources.querySelectorAll("input[type=checkbox]")].map((c) => c.value));
  const names = listing.available.map((a) => a.name);
  if (names.length !== known.size || names.some((n) => !known.has(n))) {
    sources.replaceChildren(...names.map((name) => el("div", { class: "source" },
      el("label", {}, el("input", { type: "checkbox", value: name }), ` ${name}`),
      el("input", { type: "number", step: "0.1", value: "1", "aria-label": `weight of ${name}` }))));
  }
}

async function download(model, name) {
  const reply = await api(`/v1/adapters/${encodeURIComponent(name)}/download?model=${encodeURIComponent(model)}`, { raw: true });
  const blob = await reply.blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: `${name}.tar.gz` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function setDefault(model, name) {
  await api("/v1/adapters/load", { method: "POST", json: { name, model } });
  notify(`${name} is the default of ${model}`);
  await pollAdapters();
}

async function removeAdapter(model, name) {
  if (!confirm(`Delete adapter ${name}?`)) return;
  await api(`/v1/adapters/${encodeURIComponent(name)}?model=${encodeURIComponent(model)}`, { method: "DELETE" });
  notify(`${name} deleted`);
  await pollAdapters();
}

async function serveBase() {
  const model = $("#adapters-model").value;
  await api("/v1/adapters/unload", { method: "POST", json: { model } });
  notify(`${model} serves the base model by default`);
  await pollAdapters();
}

async function upload(event) {
  const form = event.target;
  const data = new FormData(form);
  data.set("model", $("#adapters-model").value);
  const reply = await api("/v1/adapters/upload", { method: "POST", form: data });
  notify(`Uploaded ${reply.name} (${reply.files} files, ${bytes(reply.size_bytes)})`);
  form.reset();
  await pollAdapters();
}

async function merge(event) {
  const form = event.target;
  const sources = [...form.querySelectorAll(".source")]
    .filter((row) => $("input[type=checkbox]", row).checked)
    .map((row) => ({ name: $("input[type=checkbox]", row).value, weight: Number($("input[type=number]", row).value) }));
  if (sources.length === 0) throw new Error("Pick the adapters to merge.");
  const mode = form.elements.mode.value;
  const body = { sources, mode, output_name: form.elements.output_name.value, model: $("#adapters-model").value };
  if (mode === "ties") body.density = Number(form.elements.density.value);
  const reply = await api("/v1/adapters/merge", { method: "POST", json: body });
  notify(`Merged ${reply.sources.length} adapters into ${reply.output_name} (${reply.mode})`);
  await pollAdapters();
}

// ---- training ------------------------------------------------------------------------

async function enterTraining() {
  fillModelSelect($("#training-model"), await loadModels());
}

function jsonField(form, name) {
  try { return JSON.parse(form.elements[name].value); } catch (error) {
    throw new Error(`${name}: not valid JSON (${error.message})`);
  }
}

function optional(form, name) {
  const value = form.elements[name].value.trim();
  return value === "" ? undefined : value;
}

async function submitSft(event) {
  const form = event.target;
  const config = {
    epochs: Number(form.elements.epochs.value),
    learning_rate: Number(form.elements.learning_rate.value),
    lora_rank: Number(form.elements.lora_rank.value),
    output_name: optional(form, "output_name"),
  };
  const reply = await api("/v1/train/sft", {
    method: "POST",
    json: { examples: jsonField(form, "examples"), config, model: $("#training-model").value },
  });
  notify(`SFT job ${reply.job_id} ${reply.state}: it writes ${reply.adapter_name}`);
  await pollTraining();
}

async function submitGrpo(event) {
  const form = event.target;
  const config = {
    learning_rate: Number(form.elements.learning_rate.value),
    kl_coeff: Number(form.elements.kl_coeff.value),
    output_name: optional(form, "output_name"),
  };
  const reply = await api("/v1/train/grpo", {
    method: "POST",
    json: { groups: jsonField(form, "groups"), config, model: $("#training-model").value },
  });
  notify(`GRPO job ${reply.job_id} ${reply.state}: it writes ${reply.adapter_name}`);
  await pollTraining();
}

async function submitFinetune(event) {
  const form = event.target;
  const data = new FormData(form);
  data.set("model_id", $("#training-model").value);
  if (!optional(form, "output_name")) data.delete("output_name");
  const reply = await api("/api/finetune/start", { method: "POST", form: data });
  notify(`Fine-tune job ${reply.job_id} ${reply.status}`);
  await pollTraining();
}

async function pollTraining() {
  const queue = await api("/v1/train/queue");
  const jobs = [
    ...queue.running_jobs,
    ...queue.queued.map((q) => ({ ...q, state: "queued", progress: 0, step: 0, total_steps: 0 })),
    ...queue.completed.slice(0, 10),
  ];
  // Curves: fetched while a job runs, once more when it has ended.
  await Promise.all(jobs.map(async (job) => {
    const kept = state.curves.get(job.job_id);
    const ended = ["completed", "failed", "cancelled"].includes(job.state);
    if (job.state === "queued" || (kept && kept.final)) return;
    const detail = await api(`/v1/train/status/${encodeURIComponent(job.job_id)}`);
    state.curves.set(job.job_id, { points: detail.loss_history || [], final: ended });
  }));
  $("#jobs").replaceChildren(...jobs.map(jobCard));
}

function jobCard(job) {
  const curve = state.curves.get(job.job_id);
  const percent = Math.round((job.progress || 0) * 100);
  const cancellable = job.state === "queued" || job.state === "running";
  return el("article", { class: `job ${job.state}`, dataset: { job: job.job_id } },
    el("header", {},
      el("strong", {}, `${job.job_type} ${job.adapter_name}`),
      el("span", { class: `state ${job.state}` }, job.state),
      job.position ? el("span", {}, `#${job.position} in the queue`) : "",
      cancellable && el("button", { class: "danger", onclick: guarded(() => cancelJob(job.job_id)) }, "Cancel")),
    progressBar(percent),
    el("p", {},
      job.total_steps ? `step ${job.step} of ${job.total_steps}` : "",
      job.current_loss !== undefined && job.current_loss !== null ? `, loss ${job.current_loss.toFixed(4)}` : "",
      job.elapsed_secs !== undefined ? `, ${seconds(job.elapsed_secs)}` : ""),
    job.error ? el("p", { class: "error" }, job.error) : "",
    curve && curve.points.length ? lossCurve(curve.points) : "");
}

function progressBar(percent) {
  const bar = el("div");
  bar.style.width = `${percent}%`; // through the CSSOM: the page's policy forbids style attributes
  return el("div", { class: "progress" }, bar);
}

// The loss as an SVG polyline over the steps, with its range on the axis.
function lossCurve(points) {
  const W = 480, H = 120, PAD = 28;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "curve");
  svg.setAttribute("role", "img");
  const losses = points.map((p) => p.loss);
  const lo = Math.min(...losses), hi = Math.max(...losses);
  const first = points[0].step, last = points[points.length - 1].step;
  const x = (step) => PAD + ((step - first) / Math.max(last - first, 1)) * (W - 2 * PAD);
  const y = (loss) => H - PAD / 2 - ((loss - lo) / Math.max(hi - lo, 1e-9)) * (H - PAD);
  svg.setAttribute("aria-label", `loss from ${losses[0].toFixed(3)} to ${losses[losses.length - 1].toFixed(3)} over ${points.length} steps`);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", points.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" "));
  svg.append(line);
  const end = points[points.length - 1];
  const dot = document.createElementNS(NS, "circle"); // the latest step (the only one, at first)
  dot.setAttribute("cx", x(end.step).toFixed(1));
  dot.setAttribute("cy", y(end.loss).toFixed(1));
  dot.setAttribute("r", "3");
  svg.append(dot);
  for (const [value, at] of [[hi, y(hi)], [lo, y(lo)]]) {
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", "2");
    label.setAttribute("y", String(at + 4));
    label.textContent = value.toFixed(2);
    svg.append(label);
  }
  const steps = document.createElementNS(NS, "text");
  steps.setAttribute("x", String(W - PAD));
  steps.setAttribute("y", String(H - 2));
  steps.setAttribute("text-anchor", "end");
  steps.textContent = `step ${last}`;
  svg.append(steps);
  return svg;
}

async function cancelJob(id) {
  const job = await api(`/v1/train/stop/${encodeURIComponent(id)}`, { method: "POST" });
  notify(job.state === "cancelled" ? `Job ${id} cancelled` : `Job ${id} stops at its next step`);
  await pollTraining();
}

// ---- distillation --------------------------------------------------------------------

let distillOpen = null;

async function pollDistillation() {
  const listing = await api("/v1/distillation?limit=50");
  fill($("#distill-table tbody"), listing.jobs.map((job) => el("tr", { dataset: { job: job.id } },
    el("td", {}, job.name || job.id),
    el("td", { class: `state ${job.status}` }, job.status),
    el("td", {}, job.phase),
    el("td", {}, progressText(job.progress)),
    el("td", {}, `$${job.cost_accrued.toFixed(4)}`),
    el("td", {}, new Date(job.updated_at).toLocaleTimeString()),
    el("td", {}, el("button", { onclick: guarded(() => openDistillation(job.id)) }, "Details")))));
  if (distillOpen) await openDistillation(distillOpen, false);
}

function progressText(progress) {
  const parts = [];
  if (progress.prompts_total) parts.push(`prompts ${progress.prompts_done || 0}/${progress.prompts_total}`);
  if (progress.training_steps) parts.push(`steps ${progress.training_step || 0}/${progress.training_steps}`);
  return parts.join(", ") || "-";
}

async function openDistillation(id, scroll = true) {
  distillOpen = id;
  const job = await api(`/v1/distillation/${encodeURIComponent(id)}`);
  const ended = ["completed", "failed", "cancelled"].includes(job.status);
  const artifacts = job.status === "completed" ? await api(`/v1/distillation/${encodeURIComponent(id)}/artifacts`) : job.artifacts;
  const before = job.results.before || {}, after = job.results.after || {};
  const metrics = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  const detail = el("div", { class: "detail" },
    el("h3", {}, `${job.name || job.id}: ${job.status}, ${job.phase}`),
    el("p", {}, `cost so far $${job.cost_accrued.toFixed(4)}; teacher ${job.config.teacher_model}`),
    job.error ? el("p", { class: "error" }, job.error) : "",
    el("ol", { class: "phases" }, (job.phases || []).map((p) => el("li", {}, `${p.name} (${new Date(p.started_at).toLocaleTimeString()})`))),
    metrics.length ? el("table", { class: "before-after" },
      el("thead", {}, el("tr", {}, el("th", {}, "held-out"), el("th", {}, "before"), el("th", {}, "after"))),
      el("tbody", {}, metrics.map((name) => el("tr", {},
        el("td", {}, name), el("td", {}, format(before[name])), el("td", {}, format(after[name])))))) : "",
    el("h4", {}, "Artifacts"),
    el("ul", {}, artifactItems(artifacts || {})),
    !ended && el("button", { class: "danger", onclick: guarded(() => cancelDistillation(id)) }, "Cancel"));
  $("#distill-detail").replaceChildren(detail);
  if (scroll) detail.scrollIntoView({ behavior: "smooth" });
}

function format(value) {
  if (value === undefined || value === null) return "-";
  return typeof value === "number" ? value.toFixed(4).replace(/\.?0+$/, "") : JSON.stringify(value);
}

function artifactItems(artifacts) {
  const items = [];
  for (const [name, value] of Object.entries(artifacts)) {
    if (value === null || value === undefined) continue;
    if (typeof value === "object") {
      for (const [inner, path] of Object.entries(value)) items.push(el("li", {}, `${name} ${inner}: `, el("code", {}, path)));
    } else {
      items.push(el("li", {}, `${name}: `, el("code", {}, value)));
    }
  }
  return items.length ? items : [el("li", {}, "none yet")];
}

async function cancelDistillation(id) {
  await api(`/v1/distillation/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  notify(`Distillation job ${id} cancelling`);
  await pollDistillation();
}

// ---- chat ----------------------------------------------------------------------------

const chat = { messages: [], controller: null };

async function enterChat() {
  fillModelSelect($("#chat-model"), await loadModels());
  await chatAdapters();
}

async function chatAdapters() {
  const select = $("#chat-adapter");
  const current = select.value;
  const options = [el("option", { value: "" }, "the model's default"), el("option", { value: "none" }, "none (base model)")];
  try {
    const listing = await api(`/v1/adapters?model=${encodeURIComponent($("#chat-model").value)}`);
    options.push(...listing.available.map((a) => el("option", { value: a.name }, a.name)));
  } catch (error) {
    // a model without adapters: the default only
  }
  select.replaceChildren(...options);
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function renderMessages() {
  $("#messages").replaceChildren(...chat.messages.map((message, index) => {
    const node = el("div", { class: `message ${message.role}` }, el("div", { class: "role" }, message.role),
      el("div", { class: "content" }, message.content));
    if (message.role === "assistant" && !message.streaming && can("train")) {
      node.append(el("button", { class: "correct", onclick: () => correctionForm(node, index) }, "This answer was wrong"));
    }
    if (message.note) node.append(el("p", { class: "note" }, message.note));
    return node;
  }));
  $("#messages").scrollTop = $("#messages").scrollHeight;
}

function correctionForm(node, index) {
  if ($("form", node)) return;
  const form = el("form", { class: "correction" },
    el("label", {}, "The right answer", el("textarea", { name: "answer", rows: 3, required: true })),
    el("button", {}, "Teach it"));
  form.addEventListener("submit", guarded(() => submitCorrection(index, form.elements.answer.value)));
  node.append(form);
  form.elements.answer.value = chat.messages[index].content;
  form.elements.answer.focus();
}

async function submitCorrection(index, answer) {
  const history = chat.messages.slice(0, index).map(({ role, content }) => ({ role, content }));
  const adapter = $("#chat-adapter").value;
  const config = { epochs: 3 };
  if (adapter && adapter !== "none") config.base_adapter = adapter;
  const reply = await api("/v1/train/sft", {
    method: "POST",
    json: { examples: [{ messages: [...history, { role: "assistant", content: answer }] }], config, model: $("#chat-model").value },
  });
  chat.messages[index].note = `Correction submitted: job ${reply.job_id} trains ${reply.adapter_name}.`;
  renderMessages();
  notify(`Correction submitted as SFT job ${reply.job_id}`);
}

async function send(event) {
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text || chat.controller) return;
  input.value = "";
  chat.messages.push({ role: "user", content: text });
  const answer = { role: "assistant", content: "", streaming: true };
  chat.messages.push(answer);
  renderMessages();
  const body = {
    model: $("#chat-model").value,
    messages: chat.messages.filter((m) => m !== answer).map(({ role, content }) => ({ role, content })),
    stream: true,
    temperature: Number($("#chat-temperature").value),
    top_p: Number($("#chat-top-p").value),
    max_tokens: Number($("#chat-max-tokens").value),
  };
  const seed = $("#chat-seed").value;
  if (seed !== "") body.seed = Number(seed);
  const adapter = $("#chat-adapter").value;
  if (adapter === "none") body.adapter = null;
  else if (adapter) body.adapter = adapter;
  chat.controller = new AbortController();
  $("#chat-stop").hidden = false;
  $("#chat-send").disabled = true;
  try {
    const reply = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: chat.controller.signal,
    });
    if (!reply.ok) {
      const problem = await reply.json().catch(() => null);
      throw new Error(errorMessage(problem, reply.status));
    }
    await readEvents(reply.body, (event) => {
      const choice = (event.choices || [])[0];
      if (choice && choice.delta && choice.delta.content) {
        answer.content += choice.delta.content;
        const node = $("#messages .message.assistant:last-child .content");
        if (node) node.textContent = answer.content;
      }
      if (choice && choice.finish_reason) answer.finish = choice.finish_reason;
    });
  } catch (error) {
    if (error.name !== "AbortError") answer.note = error.message;
  } finally {
    answer.streaming = false;
    chat.controller = null;
    $("#chat-stop").hidden = true;
    $("#chat-send").disabled = false;
    renderMessages();
  }
}

// Server-sent events from a fetch body: each `data:` line's JSON, until [DONE].
async function readEvents(stream, onEvent) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new Error(errorMessage(event, 500));
        onEvent(event);
      }
    }
  }
}

// ---- wiring --------------------------------------------------------------------------

const VIEWS = {
  status: { poll: pollStatus },
  models: { poll: pollModels },
  adapters: { enter: async () => { await enterAdapters(); await pollAdapters(); }, poll: null },
  training: { enter: enterTraining, poll: pollTraining },
  distillation: { poll: pollDistillation },
  chat: { enter: enterChat },
};

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => show(button.dataset.tab));
  }
  $("#login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("#key").value.trim());
    $("#key").value = "";
    start();
  });
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    location.reload();
  });
  $("#adapters-model").addEventListener("change", guarded(pollAdapters));
  $("#adapters-base").addEventListener("click", guarded(serveBase));
  $("#upload-form").addEventListener("submit", guarded(upload));
  $("#merge-form").addEventListener("submit", guarded(merge));
  $("#sft-form").addEventListener("submit", guarded(submitSft));
  $("#grpo-form").addEventListener("submit", guarded(submitGrpo));
  $("#finetune-form").addEventListener("submit", guarded(submitFinetune));
  $("#training-model").addEventListener("change", guarded(pollTraining));
  $("#chat-model").addEventListener("change", guarded(chatAdapters));
  $("#chat-form").addEventListener("submit", guarded(send));
  $("#chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("#chat-form").requestSubmit();
    }
  });
  $("#chat-stop").addEventListener("click", () => chat.controller && chat.controller.abort());
  $("#chat-clear").addEventListener("click", () => { chat.messages = []; renderMessages(); });
  start();
});
