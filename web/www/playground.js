// The policy playground: configuration editor, calls, and what the filter does with each.
// State (configuration and calls) lives in the URL fragment: #s=<base64url of JSON>.
import { loadCore, h, facts, show, call } from "./common.js";

const $ = (id) => document.getElementById(id);
const core = await loadCore();
$("loading").remove();
const EXAMPLES = call(core.examples);

const UPSTREAMS = [
  ["200", "answers 200 OK", { status: 200 }],
  ["201", "answers 201 Created", { status: 201 }],
  ["400", "answers 400 (rejected)", { status: 400 }],
  ["401", "answers 401 (unauthenticated)", { status: 401 }],
  ["429", "answers 429 (rate limited)", { status: 429 }],
  ["500", "answers 500", { status: 500 }],
  ["503", "answers 503", { status: 503 }],
  ["503u", "answers 503 + retry-guard-state: unchanged", { status: 503, unchanged: true }],
  ["refused", "connection refused (never sent)", { fail: "connection_refused" }],
  ["nohealthy", "no healthy upstream (never sent)", { fail: "no_healthy_upstream" }],
  ["timeout", "times out (30 s)", { fail: "timeout" }],
  ["reset", "resets the connection", { fail: "reset" }],
];
const METHODS = ["POST", "PUT", "PATCH", "DELETE", "GET"];

function upstreamKey(u) {
  u = u || {};
  const hit = UPSTREAMS.find(([, , s]) => (s.fail || null) === (u.fail || null)
    && (s.status || null) === (u.fail ? null : (u.status || 200)) && !!s.unchanged === !!u.unchanged);
  return hit ? hit[0] : "200";
}

// ---- state and the URL fragment ----
const b64url = {
  encode: (s) => btoa(String.fromCharCode(...new TextEncoder().encode(s))).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, ""),
  decode: (s) => new TextDecoder().decode(Uint8Array.from(atob(s.replaceAll("-", "+").replaceAll("_", "/")), (c) => c.charCodeAt(0))),
};

function exampleState(i) {
  const e = EXAMPLES[i];
  return { config: e.config, calls: JSON.parse(e.calls) };
}

function stateFromUrl() {
  const m = location.hash.match(/^#s=([A-Za-z0-9_-]+)$/);
  if (!m) return null;
  try {
    const s = JSON.parse(b64url.decode(m[1]));
    if (typeof s.config === "string" && Array.isArray(s.calls)) return s;
  } catch (_) { /* fall back to the first example */ }
  return null;
}

let state = stateFromUrl() || exampleState(0);

function saveUrl() {
  history.replaceState(null, "", `#s=${b64url.encode(JSON.stringify(state))}`);
}

// ---- the call editors ----
function headersText(c) {
  return (c.headers || []).map(([k, v]) => `${k}: ${v}`).join("\n");
}

function parseHeaders(text) {
  return text.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
    const i = l.indexOf(":");
    return i < 1 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()];
  });
}

function callEditor(c, i) {
  const id = (n) => `call${i}-${n}`;
  const update = (f) => (ev) => { f(ev.target.value); changed(); };
  const confirmOptions = [h("option", { value: "" }, "none")];
  for (let j = 0; j < i; j++) {
    confirmOptions.push(h("option", { value: String(j) }, `approve call ${j + 1}'s 428 (TEST key, alice@example.com)`));
  }
  const conf = h("select", { id: id("confirm"), onchange: update((v) => { c.confirmation = v === "" ? undefined : { from: Number(v) }; }) }, confirmOptions);
  conf.value = c.confirmation ? String(c.confirmation.from) : "";
  const method = h("select", { id: id("method"), onchange: update((v) => { c.method = v; }) }, METHODS.map((m) => h("option", {}, m)));
  method.value = c.method || "POST";
  const up = h("select", { id: id("upstream"), onchange: update((v) => { c.upstream = { ...UPSTREAMS.find(([k]) => k === v)[2] }; }) },
    UPSTREAMS.map(([k, label]) => h("option", { value: k }, label)));
  up.value = upstreamKey(c.upstream);
  return h("fieldset", { class: "call" },
    h("legend", {}, `Call ${i + 1}`),
    h("div", { class: "row" },
      h("div", {}, h("label", { for: id("wait") }, "Seconds before it"),
        h("input", { id: id("wait"), type: "number", min: "0", value: c.wait || 0, oninput: update((v) => { c.wait = Math.max(0, Number(v) || 0); }) })),
      h("div", {}, h("label", { for: id("method") }, "Method"), method),
      h("div", {}, h("label", { for: id("path") }, "Path"),
        h("input", { id: id("path"), type: "text", value: c.path || "/oauth/token", spellcheck: "false", oninput: update((v) => { c.path = v; }) }))),
    h("label", { for: id("headers") }, "Headers ", h("span", { class: "hint" }, "(one per line: idempotency-key: \"k-1\", authorization: Bearer …, x-client-id: ci-bot)")),
    h("textarea", { id: id("headers"), spellcheck: "false", oninput: update((v) => { c.headers = parseHeaders(v); }) }, headersText(c)),
    h("label", { for: id("body") }, "Body"),
    h("textarea", { id: id("body"), spellcheck: "false", oninput: update((v) => { c.body = v; }) }, c.body || ""),
    h("div", { class: "row" },
      h("div", {}, h("label", { for: id("upstream") }, "The upstream"), up),
      h("div", {}, h("label", { for: id("confirm") }, "Confirmation"), conf)),
    h("button", { type: "button", class: "small secondary", "aria-label": `Remove call ${i + 1}`,
      onclick: () => { state.calls.splice(i, 1); for (const x of state.calls) if (x.confirmation && x.confirmation.from >= i) delete x.confirmation; renderCalls(); changed(); } }, "Remove"));
}

function renderCalls() {
  show("calls", state.calls.map(callEditor));
}

// ---- the results ----
function policyTable(t) {
  const cells = t.cells.map((c) => h("td", {
    class: [c.policy, c.decided ? "decided" : "", c.overridden ? "overridden" : ""].join(" ").trim(),
    "data-outcome": c.outcome,
  }, h("span", { class: "o" }, `after ${c.outcome.replaceAll("_", " ")}`),
  h("span", { class: "p" }, c.policy.replaceAll("_", " ")),
  c.decided ? h("span", { class: "sr" }, "(this cell decided the call)") : null));
  const rows = [];
  for (let i = 0; i < cells.length; i += 3) rows.push(h("tr", {}, cells.slice(i, i + 3)));
  return h("table", { class: "policy" },
    h("caption", { class: "hint" }, `Retry-policy table of route ${t.route} (class ${t.class}): the earlier attempt's outcome → the policy for a retry${t.cells.some((c) => c.overridden) ? " (* the route's override)" : ""}`),
    h("tbody", {}, rows));
}

function message(m) {
  let body = m.body;
  try { body = JSON.stringify(JSON.parse(m.body), null, 1); } catch (_) { /* not JSON */ }
  const head = m.headers.map(([k, v]) => `${k}: ${v}`).join("\n");
  return h("pre", {}, `${head}${body ? `\n\n${body}` : ""}`);
}

function problemLine(a) {
  if (a.by !== "retry-guard") return null;
  try {
    const p = JSON.parse(a.body);
    return [" ", h("b", {}, p.title), `: ${p.detail}`];
  } catch (_) { return null; }
}

function explain(s) {
  const a = s.audit;
  if (!a) return `No guarded route matched (listener route ${s.listener_route}): the filter let it through untouched.`;
  let text = `Decision ${a.decision}`;
  if (a.policy) text += ` by policy ${a.policy} (the earlier attempt ${a.previous_outcome}, status ${a.previous_status})`;
  text += `; reason ${a.reason}; attempt ${a.attempt}.`;
  if (a.approver) text += ` Approved by ${a.approver}.`;
  if (a.confirmation_error) text += ` The confirmation was refused: ${a.confirmation_error}.`;
  if (a.token_action && a.token_action !== "none") text += ` Token: ${a.token_action} (${a.token_reason}).`;
  if (a.mode === "shadow") text += a.would_block ? " Shadow mode: it would have been blocked, and went on." : " Shadow mode.";
  return text;
}

/** Selects, in the editor, the line of the field a configuration error names. */
function showInEditor(path) {
  const ta = $("config");
  const text = ta.value;
  const segs = path.split(".").flatMap((p) => p.split(/\[(\d+)\]/)).filter(Boolean);
  let at = 0;
  for (let i = 0; i < segs.length; i++) {
    if (/^\d+$/.test(segs[i])) continue;
    // After `[n]`, the key of the n-th element: its (n+1)-th occurrence from the list.
    const n = i > 0 && /^\d+$/.test(segs[i - 1]) ? Number(segs[i - 1]) : 0;
    const key = segs[i].replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const re = new RegExp(`["']?${key}["']?\\s*:`, "g");
    re.lastIndex = at;
    let m = null;
    for (let k = 0; k <= n; k++) { m = re.exec(text); if (!m) break; }
    if (!m) break;
    at = m.index;
  }
  const start = text.lastIndexOf("\n", at) + 1;
  const endNl = text.indexOf("\n", at);
  const end = endNl < 0 ? text.length : endNl;
  ta.focus();
  ta.setSelectionRange(start, end);
  const line = text.slice(0, start).split("\n").length - 1;
  const lh = parseFloat(getComputedStyle(ta).lineHeight) || 18;
  ta.scrollTop = Math.max(0, (line - 2) * lh);
}

let firstNow = 0;
function stepCard(s) {
  const d = s.decision || "none";
  const who = s.answer.by === "retry-guard" ? "answered by retry-guard" : s.answer.by === "envoy" ? "answered by Envoy's router" : "answered by the upstream";
  const method = s.request.headers.find(([k]) => k === ":method")[1];
  const path = s.request.headers.find(([k]) => k === ":path")[1];
  return h("article", { class: `step ${d}`, "data-decision": d, "data-status": s.answer.status ?? "", "aria-labelledby": `step${s.index}` },
    h("h3", { id: `step${s.index}`, title: s.at }, `Call ${s.index + 1} · t+${s.now - firstNow} s · ${method} ${path} → ${s.answer.status ?? "no answer"} `,
      h("span", { class: `badge ${d}` }, d)),
    s.note && h("p", { class: "hint" }, s.note),
    s.warning && h("div", { class: "status warn" }, s.warning),
    h("p", { class: "why" }, explain(s)),
    s.table && (s.table.cells.some((c) => c.decided) ? policyTable(s.table)
      : h("details", {}, h("summary", {}, "Retry-policy table (no earlier attempt: no cell decided)"), policyTable(s.table))),
    h("p", { class: "hint" }, `The client got ${s.answer.status ?? "nothing"}, ${who}.`, problemLine(s.answer)),
    h("details", {}, h("summary", {}, "The client's answer"), message(s.answer)),
    s.audit && h("details", {}, h("summary", {}, "Audit line"), h("pre", {}, `retry-guard audit ${JSON.stringify(s.audit)}`)),
    s.outcome && h("p", { class: "hint" }, `Outcome recorded: ${s.outcome.outcome} (status ${s.outcome.status}${s.outcome.response_flags ? `, response flags ${s.outcome.response_flags}` : ""}).`),
    s.ledger && h("details", {}, h("summary", {}, `Ledger entry: ${s.ledger.attempts} attempt(s), ${s.ledger.outcome}`), facts([
      ["Fingerprint", s.ledger.fingerprint], ["Attempts", s.ledger.attempts], ["Outcome", `${s.ledger.outcome} (status ${s.ledger.status})`],
      ["First seen", s.ledger.first_seen], ["Latest attempt", s.ledger.last_attempt], ["Expires", s.ledger.expires],
      ["Outstanding challenge", s.ledger.challenge], ["Consumed challenge", s.ledger.consumed], ["Credential holder", s.ledger.holder],
    ])),
    s.upstream && h("details", {}, h("summary", {}, "What the upstream received"), message(s.upstream)),
    h("details", {}, h("summary", {}, `Log lines (${s.logs.length}) and counters`),
      h("pre", {}, s.logs.map(([l, line]) => `[${l}] ${line}`).join("\n") || "(none)"),
      h("pre", {}, s.counters.join("\n") || "(none)")));
}

function renderConfigStatus(c) {
  const ta = $("config");
  if (c.ok) {
    ta.removeAttribute("aria-invalid");
    const src = c.source.kind === "json" ? "" : ` (taken from the ${c.source.kind} at ${c.source.path})`;
    show("config-status", h("div", { class: "status ok", id: "config-ok" },
      `Accepted by the filter's parser${src}: `,
      c.routes.map((r, i) => [i ? "; " : "", h("b", {}, r.name), ` ${r.class} (${r.mode}, owner ${r.owner}) ${r.matcher}`]),
      `. Window ${c.window_seconds} s.`));
  } else {
    ta.setAttribute("aria-invalid", "true");
    const p = c.problem;
    show("config-status", h("div", { class: "status bad", id: "config-error", role: "alert" },
      h("div", {}, "The filter refuses this configuration at ", h("span", { class: "path", id: "config-path" }, p.document_path || "(the document)"), ":",
        p.path ? h("button", { type: "button", class: "small secondary", id: "show-path", onclick: () => showInEditor(p.document_path) }, "Show in the editor") : null),
      h("div", {}, p.message),
      h("pre", {}, p.log_line)));
  }
}

function run() {
  const t0 = performance.now();
  const r = call(core.play, JSON.stringify({ config: state.config, calls: state.calls }));
  const ms = performance.now() - t0;
  if (r.error) {
    show("steps", h("div", { class: "status bad", role: "alert" }, r.error));
    return;
  }
  renderConfigStatus(r.config);
  firstNow = r.steps.length ? r.steps[0].now - state.calls[0].wait : 0;
  const took = ms < 0.1 ? "under 0.1 ms" : `${ms.toFixed(1)} ms`;
  show("timing", r.config.ok ? `${r.steps.length} call(s) decided in ${took} by the filter's code in this page.` : "");
  show("steps",
    r.etcd_note && h("div", { class: "status warn" }, "This configuration uses the cluster ledger (etcd); the playground decides on the in-process ledger, which gives the same decisions for one caller at a time."),
    r.config.ok ? r.steps.map(stepCard) : h("p", { class: "hint" }, "Fix the configuration to see the calls decided."));
}

let pending = 0;
function changed() {
  saveUrl();
  clearTimeout(pending);
  pending = setTimeout(run, 60);
}

// ---- wiring ----
show("examples", EXAMPLES.map((e, i) => h("button", {
  type: "button", class: "small secondary", title: e.title,
  onclick: () => { state = exampleState(i); $("config").value = state.config; renderCalls(); changed(); },
}, e.name)));
$("config").value = state.config;
$("config").addEventListener("input", (ev) => { state.config = ev.target.value; changed(); });
$("add-call").addEventListener("click", () => {
  const last = state.calls[state.calls.length - 1];
  state.calls.push(last ? { ...JSON.parse(JSON.stringify(last)), confirmation: undefined, wait: 1 } : { method: "POST", path: "/oauth/token" });
  renderCalls();
  changed();
  $(`call${state.calls.length - 1}-wait`).focus();
});
$("copy-link").addEventListener("click", async () => {
  saveUrl();
  try { await navigator.clipboard.writeText(location.href); show("link-status", "Link copied."); } catch (_) { show("link-status", "The address bar holds the link."); }
});
window.addEventListener("hashchange", () => {
  const s = stateFromUrl();
  if (s) { state = s; $("config").value = state.config; renderCalls(); run(); }
});
renderCalls();
saveUrl();
run();
document.body.dataset.ready = "true";
