// The approver's console: a 428 in plain words, a signed confirmation, verify mode.
// Every answer comes from the filter's policy core (wasm); the key never leaves memory.
import { loadCore, h, facts, show, call, copyButton, nowSeconds } from "./common.js";

const $ = (id) => document.getElementById(id);
const core = await loadCore();
$("loading").remove();

let approver = null; // the loaded key (a wasm object; its private key stays in wasm memory)
let view = null; // the 428 as read

function readProblem() {
  const text = $("problem").value;
  if (!text.trim()) { view = null; show("problem-view"); return; }
  const v = call(core.explainProblem, text, nowSeconds());
  if (v.error) {
    view = null;
    show("problem-view", h("div", { class: "status bad", role: "alert" }, v.error));
    return;
  }
  view = v;
  const left = v.seconds_left === null ? null
    : v.seconds_left === 0 ? "the window has ended" : `${Math.floor(v.seconds_left / 60)} min ${v.seconds_left % 60} s left`;
  show("problem-view",
    h("div", { class: "status warn" },
      h("div", { class: "big" }, `Approve a repeat of ${v.class.replaceAll("_", " ")} on ${v.route}?`),
      h("ul", { class: "story" }, v.sentences.map((s) => h("li", {}, s)))),
    facts([
      ["Route", v.route], ["Class", v.class], ["Owner", v.owner], ["Escalation", v.escalation],
      ["Earlier attempt", v.previous_outcome && `${v.previous_outcome} (status ${v.previous_status})`],
      ["Earlier call", v.since_previous_ms !== null && v.since_previous_ms !== undefined
        ? `${(v.since_previous_ms / 1000).toFixed(1)} s before this one` : null],
      ["Attempt", v.attempt], ["First seen", v.first_seen],
      ["Window ends", v.window_ends && `${v.window_ends}${left ? ` (${left})` : ""}`],
      ["Refused confirmation", v.confirmation_error],
      ["Request id", v.request_id], ["Fingerprint", h("code", {}, v.fingerprint)],
      ["Challenge", h("code", {}, v.challenge)], ["Header", h("code", {}, v.confirmation_header)],
    ]));
}

function fillExpiries() {
  const max = Number($("max-ttl").value) || 0;
  const choices = call(core.expiryChoices, max);
  const sel = $("ttl");
  const before = Number(sel.value);
  if (choices.error) { sel.replaceChildren(); return; }
  sel.replaceChildren(...choices.map((c) => h("option", { value: c.seconds }, c.label)));
  const keep = choices.find((c) => c.seconds === before) || choices.find((c) => c.seconds === 300) || choices[0];
  if (keep) sel.value = String(keep.seconds);
}

async function loadKey() {
  const file = $("keyfile").files[0];
  if (approver) { approver.free(); approver = null; }
  if (!file) { show("key-status"); return; }
  const text = await file.text();
  try {
    approver = new core.Approver(text, file.name);
    $("kid").value = approver.kid;
    show("key-status", h("div", { class: "status ok" },
      `Key loaded (kid ${approver.kid}, public key `, h("code", {}, approver.publicKey), "). It is held in memory only."));
  } catch (e) {
    show("key-status", h("div", { class: "status bad", role: "alert" }, e.message));
  }
  // Keep no copy of the file around: the wasm object holds the key.
  $("keyfile").value = "";
}

function sign() {
  const fail = (m) => show("sign-result", h("div", { class: "status bad", role: "alert" }, m));
  if (!view) return fail("Paste the 428 first (step 1).");
  if (!approver) return fail("Load your approver key file first.");
  const r = call((...a) => approver.sign(...a), view.challenge, view.fingerprint, $("approver").value,
    $("kid").value, nowSeconds(), Number($("ttl").value), Number($("max-ttl").value),
    view.confirmation_header, $("caller-curl").value);
  if (r.error) return fail(r.error);
  show("sign-result",
    h("div", { class: "status ok" }, `Signed by ${$("approver").value.trim()} with key ${r.kid}; valid until ${r.expires_at}. Give the caller one of these:`),
    h("label", { for: "token" }, "Token"),
    h("div", { class: "copyline" }, h("pre", { id: "token", tabindex: "0" }, r.token), copyButton("token", "Copy the token")),
    h("label", { for: "header-line" }, "Header line"),
    h("div", { class: "copyline" }, h("pre", { id: "header-line", tabindex: "0" }, r.header_line), copyButton("header-line", "Copy the header line")),
    h("label", { for: "curl" }, "curl"),
    h("div", { class: "copyline" }, h("pre", { id: "curl", tabindex: "0" }, r.curl), copyButton("curl", "Copy the curl command")),
    h("details", {}, h("summary", {}, "Signed claims"), h("pre", {}, r.payload)));
  $("verify-token").value = r.token;
}

function verify() {
  const fail = (m) => show("verify-result", h("div", { class: "status bad", role: "alert" }, m));
  if (!view) return fail("Paste the 428 the token is for (step 1).");
  const r = call(core.verifyToken, $("verify-token").value, $("verify-keys").value,
    view.fingerprint, view.challenge, Number($("skew").value) || 0, nowSeconds());
  if (r.error) return fail(r.error);
  show("verify-result",
    r.accepted
      ? h("div", { class: "status ok", id: "verdict", "data-accepted": "true" },
        h("div", { class: "big" }, "Accepted"), r.explanation)
      : h("div", { class: "status bad", id: "verdict", "data-refusal": r.refusal },
        h("div", { class: "big" }, "Refused: ", h("code", {}, r.refusal)), r.explanation),
    r.claims && h("details", {}, h("summary", {}, "Claims in the token"), h("pre", {}, JSON.stringify(r.claims, null, 1))));
}

$("problem").addEventListener("input", readProblem);
$("max-ttl").addEventListener("input", fillExpiries);
$("keyfile").addEventListener("change", loadKey);
$("sign").addEventListener("click", sign);
$("verify").addEventListener("click", verify);
$("forget").addEventListener("click", () => {
  if (approver) approver.free();
  approver = null;
  $("kid").value = "";
  show("key-status", h("div", { class: "status warn" }, "Key forgotten."));
});
fillExpiries();
readProblem();
document.body.dataset.ready = "true";
