// Shared helpers of the two pages: loading the policy core and building DOM nodes safely
// (text is always set as text, never parsed as HTML).
import init, * as core from "./pkg/retry_guard_web.js";

/** Loads the wasm policy core once; resolves to its exports. */
export async function loadCore() {
  await init();
  return core;
}

/** h("p", {class: "x"}, "text", child, ...): an element; strings become text nodes. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A definition list of [term, value] pairs; null values are left out. */
export function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** Replaces the children of the element with id `id`. */
export function show(id, ...children) {
  const el = document.getElementById(id);
  el.replaceChildren(...children.flat(Infinity).filter((c) => c));
  return el;
}

/** Runs a core call that returns JSON text; a JsError becomes {error: message}. */
export function call(fn, ...args) {
  try {
    return JSON.parse(fn(...args));
  } catch (e) {
    return { error: e && e.message ? e.message : String(e) };
  }
}

/** A "Copy" button for the text of element `id` (clipboard where allowed; selects it anyway). */
export function copyButton(id, label) {
  return h("button", {
    type: "button", class: "small secondary", "aria-label": label,
    onclick: async () => {
      const el = document.getElementById(id);
      const range = document.createRange();
      range.selectNodeContents(el);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      try { await navigator.clipboard.writeText(el.textContent); } catch (_) { /* selection stays */ }
    },
  }, "Copy");
}

/** Unix seconds now. */
export const nowSeconds = () => Math.floor(Date.now() / 1000);
