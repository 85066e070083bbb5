// Replays host-sim recordings of the benchmark's request paths on V8 and times the guest.
//
// usage: node --no-liftoff bench/v8/replay.mjs [--rounds R] [--requests N] [--json FILE]
//            RECORDING_DIR A.wasm [B.wasm]
//
// RECORDING_DIR holds `retry-guard bench --record DIR` output: for each path, what host-sim's
// host did from a VM's start to the end of one request (callbacks with their arguments, and
// in each the host calls the guest made: status, buffers allocated, bytes written). This
// script instantiates each module on V8 with imports that answer from the recording (each
// write placed at the address the guest passes now, so another build of the same filter
// replays too), runs the VM's start and the earlier requests once, then times the recorded
// request over and over: `--rounds` rounds of `--requests` requests, the modules taking turns
// within each round (their order alternating from round to round).
//
// What the time is: the guest's own code on V8's optimizing compiler (Envoy's V8 runs with
// Liftoff off, so `--no-liftoff` here), plus the JavaScript import calls answering the host
// calls. Both modules make the same host calls, so the paired difference is the guest code's.
// A module that makes a host call the recording does not have stops the run with the callback
// and the call where it diverged.

import fs from 'node:fs';
import path from 'node:path';

function usage(msg) {
  console.error(`replay.mjs: ${msg}`);
  console.error('usage: node --no-liftoff bench/v8/replay.mjs [--rounds R] [--requests N] [--json FILE] RECORDING_DIR A.wasm [B.wasm]');
  process.exit(2);
}

const argv = process.argv.slice(2);
const opts = { rounds: 15, requests: 20000, json: null };
const positional = [];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--rounds' || a === '--requests') {
    const v = Number(argv[++i]);
    if (!Number.isInteger(v) || v < 1) usage(`${a} needs a positive whole number, got ${argv[i]}`);
    opts[a.slice(2)] = v;
  } else if (a === '--json') {
    opts.json = argv[++i];
    if (!opts.json) usage('--json needs a file');
  } else if (a.startsWith('--')) {
    usage(`unknown option ${a}`);
  } else {
    positional.push(a);
  }
}
if (positional.length < 2 || positional.length > 3) usage('give a recording directory and one or two modules');
const [dir, ...wasmFiles] = positional;

// The benchmark's paths, in their usual order; a recording directory may hold fewer.
const ORDER = ['unmatched', 'read_only', 'token_issuing_allow', 'replay_428'];
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json'));
if (files.length === 0) usage(`${dir} holds no recordings; make them with \`retry-guard bench --record ${dir}\``);
const recordings = files
  .map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')))
  .sort((a, b) => ORDER.indexOf(a.path) - ORDER.indexOf(b.path));

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

// A recording's callbacks in a compact form the import functions read quickly.
function compile(callbacks) {
  return callbacks.map((cb) => ({
    exp: cb.export,
    args: cb.args.map(Number),
    calls: cb.calls.map((c) => ({
      imp: c.import,
      ret: c.ret ?? undefined,
      allocs: c.allocs,
      writes: c.writes.map((w) => ({
        arg: 'arg' in w.base ? w.base.arg : -1,
        alloc: 'alloc' in w.base ? w.base.alloc : -1,
        off: w.offset,
        bytes: hexBytes(w.hex),
        ptrTo: w.pointer_to ?? null,
      })),
    })),
  }));
}

// One module instantiated against one recording.
class Replay {
  constructor(module, label) {
    this.label = label;
    this.queue = [];
    this.qi = 0;
    this.where = '';
    const imports = {};
    for (const imp of WebAssembly.Module.imports(module)) {
      if (imp.kind !== 'function') throw new Error(`${label}: imports a ${imp.kind} (${imp.module}.${imp.name}); only functions are replayed`);
      const name = imp.name;
      (imports[imp.module] ??= {})[name] = (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9) =>
        this.answer(name, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9);
    }
    this.instance = new WebAssembly.Instance(module, imports);
    const ex = this.instance.exports;
    this.memory = ex.memory;
    this.alloc = ex.proxy_on_memory_allocate ?? ex.malloc;
    if (!this.memory || !this.alloc) throw new Error(`${label}: exports no memory or allocator`);
    this.view();
    this.ptrs = [];
    this.args = new Array(10);
  }

  view() {
    this.u8 = new Uint8Array(this.memory.buffer);
    this.dv = new DataView(this.memory.buffer);
  }

  answer(name, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9) {
    const c = this.queue[this.qi++];
    if (c === undefined || c.imp !== name) {
      throw new Error(`${this.label}: diverged in ${this.where}: the guest called ${name}, the recording has ${c ? c.imp : 'no more host calls'} (host call ${this.qi})`);
    }
    if (c.allocs.length === 0 && c.writes.length === 0) return c.ret;
    const ptrs = this.ptrs;
    ptrs.length = 0;
    for (const size of c.allocs) ptrs.push(this.alloc(size));
    if (this.u8.buffer !== this.memory.buffer || this.u8.byteLength === 0) this.view();
    const args = this.args;
    args[0] = a0; args[1] = a1; args[2] = a2; args[3] = a3; args[4] = a4;
    args[5] = a5; args[6] = a6; args[7] = a7; args[8] = a8; args[9] = a9;
    for (const w of c.writes) {
      const base = w.arg >= 0 ? Number(args[w.arg]) >>> 0 : ptrs[w.alloc];
      const at = base + w.off;
      if (w.ptrTo !== null) this.dv.setUint32(at, ptrs[w.ptrTo[0]] + w.ptrTo[1], true);
      else this.u8.set(w.bytes, at);
    }
    return c.ret;
  }

  run(callbacks) {
    const ex = this.instance.exports;
    for (const cb of callbacks) {
      const f = ex[cb.exp];
      if (typeof f !== 'function') throw new Error(`${this.label}: does not export ${cb.exp}, which the recording calls`);
      this.queue = cb.calls;
      this.qi = 0;
      this.where = cb.exp;
      f(...cb.args);
      if (this.qi !== cb.calls.length) {
        throw new Error(`${this.label}: diverged in ${cb.exp}: the guest made ${this.qi} host calls, the recording ${cb.calls.length}`);
      }
    }
  }
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const stat = (v) => ({ median: median(v), min: Math.min(...v), max: Math.max(...v) });
const fmt = (s, d = 0) => `${s.median.toFixed(d)} (${s.min.toFixed(d)}–${s.max.toFixed(d)})`;

const modules = wasmFiles.map((f) => ({ file: f, module: new WebAssembly.Module(fs.readFileSync(f)), bytes: fs.statSync(f).size }));
const results = [];
for (const rec of recordings) {
  const setup = compile(rec.setup);
  const warm = compile(rec.warm);
  const request = compile(rec.request);
  const hostCalls = request.reduce((n, cb) => n + cb.calls.length, 0);
  const replays = modules.map((m, i) => {
    const r = new Replay(m.module, `${path.basename(m.file)} (${rec.path})`);
    r.run(setup);
    r.run(warm);
    // Let V8 compile and settle before the clock runs.
    for (let k = 0; k < 2000; k++) r.run(request);
    return r;
  });
  const ns = modules.map(() => []);
  for (let round = 0; round < opts.rounds; round++) {
    const order = modules.map((_, i) => i);
    if (round % 2 === 1) order.reverse();
    for (const i of order) {
      const r = replays[i];
      const t0 = process.hrtime.bigint();
      for (let k = 0; k < opts.requests; k++) r.run(request);
      ns[i].push(Number(process.hrtime.bigint() - t0) / opts.requests);
    }
  }
  const row = { path: rec.path, status: rec.status, host_calls: hostCalls, ns_per_request: ns.map(stat), rounds_ns: ns };
  if (modules.length === 2) {
    const diff = ns[1].map((b, k) => b - ns[0][k]);
    row.difference_ns = stat(diff);
    row.rounds_b_lower = diff.filter((d) => d < 0).length;
  }
  results.push(row);
}

console.log(`V8 ${process.versions.v8} (node ${process.version}, flags ${process.execArgv.join(' ') || 'none'}); ${opts.rounds} rounds of ${opts.requests} requests per module and path; ns per request, median (min–max)`);
console.log(modules.map((m, i) => `${'AB'[i]}: ${m.file} (${m.bytes} bytes)`).join('\n'));
console.log('');
if (modules.length === 2) {
  console.log('| path | host calls | A (ns) | B (ns) | B − A, round by round (ns) | rounds B cost less |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const r of results) {
    console.log(`| ${r.path} | ${r.host_calls} | ${fmt(r.ns_per_request[0])} | ${fmt(r.ns_per_request[1])} | ${fmt(r.difference_ns)} | ${r.rounds_b_lower} of ${opts.rounds} |`);
  }
} else {
  console.log('| path | host calls | ns per request |');
  console.log('|---|---:|---:|');
  for (const r of results) console.log(`| ${r.path} | ${r.host_calls} | ${fmt(r.ns_per_request[0])} |`);
}
if (opts.json) {
  fs.writeFileSync(opts.json, JSON.stringify({
    tool: 'bench/v8/replay.mjs',
    v8: process.versions.v8,
    node: process.version,
    flags: process.execArgv,
    rounds: opts.rounds,
    requests_per_round: opts.requests,
    modules: modules.map((m) => ({ file: m.file, bytes: m.bytes })),
    paths: results,
  }, null, 2) + '\n');
  console.log(`\nwritten: ${opts.json}`);
}
