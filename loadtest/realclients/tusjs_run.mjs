// Drive the real tus-js-client (the official browser/Node tus client) the way a candidate
// team's web page or script would: default options unless the spec sets chunkSize,
// parallelUploads or headers. We only observe (onAfterResponse records status and
// Retry-After); we never change its retry behaviour, because the point is to see what a
// stock client experiences against a server.
//
// Usage: node tusjs_run.mjs '<json spec>'   (or: node tusjs_run.mjs @spec.json)
// Spec: {endpoint, uploads, size, chunkSize?, parallelUploads?, headers?,
//        rate?, duration?, timeout?, metadata?, lazy?, file?}
//   file: upload the bytes of this file (size is then its size) instead of random bodies.
//   rate + duration: open loop, one new upload every 1/rate s for duration s
//   (uploads is then ignored); otherwise all `uploads` start at once.
//   lazy: bodies are made when the client reads them (see LazyBody), not up front.
// Prints one JSON object on stdout.
import { readFileSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { Upload } from 'tus-js-client';

function loadSpec(arg) {
  if (!arg) throw new Error('usage: node tusjs_run.mjs <json spec | @file>');
  return JSON.parse(arg.startsWith('@') ? readFileSync(arg.slice(1), 'utf8') : arg);
}

const spec = loadSpec(process.argv[2]);
const given = spec.file ? readFileSync(spec.file) : null;
const size = given ? given.length : Number(spec.size);
const timeoutMs = Number(spec.timeout ?? 600) * 1000;

// One random template, and each upload gets its own copy with a distinct prefix, so
// bodies differ (no server can deduplicate) without generating N random buffers.
const template = Buffer.alloc(size);
randomFillSync(template);
function body(i) {
  if (given) return given;
  const b = Buffer.from(template);
  b.write(`upload-${i}-`.padEnd(Math.min(32, size), '.'), 0, 'latin1');
  return b;
}

// An open loop at 3x capacity for a minute starts thousands of uploads; holding each body
// from the start would need tens of GB. A LazyBody makes the bytes of a slice when the
// client asks for them (on its PATCH), the same bytes every time, through the client's
// documented `fileReader` option. Retries, chunking and everything else stay the client's.
class LazyBody {
  constructor(i) { this.i = i; this.size = size; }
  slice(start, end) {
    end = Math.min(end, this.size);
    const value = Buffer.from(template.subarray(start, end));
    const prefix = Buffer.from(`upload-${this.i}-`.padEnd(Math.min(32, size), '.'), 'latin1');
    if (start < prefix.length) prefix.subarray(start, Math.min(prefix.length, end)).copy(value, 0);
    value.size = value.length;
    return Promise.resolve({ value, done: end >= this.size });
  }
  close() {}
}
const lazyReader = { openFile: (input) => Promise.resolve(input) };

const result = {
  client: 'tus-js-client',
  spec: { ...spec, headers: spec.headers ? Object.keys(spec.headers) : undefined },
  started: 0, succeeded: 0, failed: 0, unfinished: 0,
  creation_refused: 0,        // onError before upload.url was set
  failed_after_accepted: 0,   // onError after the creation was accepted
  errors: {},                 // "503 buffer-full" -> count (final errors)
  responses: {},              // "POST 201", "PATCH 503 buffer-full" -> count (every attempt)
  retry_after_on_refused_creation: {},  // Retry-After value -> count, POST answers >= 400
  urls: [],
  seconds: [],                // each successful upload's time from its start to onSuccess
  wall_s: 0, mb_s: 0, bytes_sent: 0,
};

function bump(obj, key) { obj[key] = (obj[key] || 0) + 1; }

function describe(err) {
  const res = err && err.originalResponse;
  if (res && typeof res.getStatus === 'function') {
    const reason = res.getHeader('Unggah-Reason') || res.getHeader('unggah-reason') || '';
    return `${res.getStatus()}${reason ? ' ' + reason : ''}`;
  }
  // No response: a network error; keep the first line, without upload-specific URLs.
  const msg = String((err && err.message) || err).split('\n')[0];
  return msg.replace(/https?:\/\/\S+/g, '<url>').slice(0, 160);
}

const t0 = process.hrtime.bigint();
const pending = new Map();  // promise -> its Upload, while unsettled

function startOne(i) {
  result.started += 1;
  const file = spec.lazy ? new LazyBody(i) : body(i);
  const options = {
    endpoint: spec.endpoint,
    metadata: { filename: `tusjs-${i}.bin`, ...(spec.metadata || {}) },
    onAfterResponse(req, res) {
      const status = res.getStatus();
      const reason = res.getHeader('Unggah-Reason') || '';
      bump(result.responses, `${req.getMethod()} ${status}${reason ? ' ' + reason : ''}`);
      if (req.getMethod() === 'POST' && status >= 400) {
        const ra = res.getHeader('Retry-After');
        bump(result.retry_after_on_refused_creation, ra == null ? 'none' : String(ra));
      }
    },
  };
  if (spec.chunkSize) options.chunkSize = Number(spec.chunkSize);
  if (spec.parallelUploads) options.parallelUploads = Number(spec.parallelUploads);
  if (spec.headers) options.headers = spec.headers;
  if (spec.lazy) options.fileReader = lazyReader;
  let upload;
  const began = process.hrtime.bigint();
  const p = new Promise((resolve) => {
    options.onSuccess = () => {
      result.seconds.push(Number(process.hrtime.bigint() - began) / 1e9);
      result.succeeded += 1;
      result.bytes_sent += size;
      if (upload.url) result.urls.push(upload.url);
      resolve('ok');
    };
    options.onError = (err) => {
      result.failed += 1;
      bump(result.errors, describe(err));
      // With parallelUploads the parent has no url of its own until the final concatenation.
      if (upload.url || (upload._parallelUploadUrls && upload._parallelUploadUrls.some(Boolean))) {
        result.failed_after_accepted += 1;
      } else {
        result.creation_refused += 1;
      }
      resolve('error');
    };
    upload = new Upload(file, options);
    upload.start();
  });
  // Only `pending` holds the upload, and only until it settles: every promise stays in `all`,
  // and through one a finished upload would keep its body's bytes for the rest of the run.
  pending.set(p, upload);
  p.then(() => pending.delete(p));
  return p;
}

const all = [];
if (spec.rate && spec.duration) {
  const interval = 1000 / Number(spec.rate);
  const n = Math.max(1, Math.round(Number(spec.rate) * Number(spec.duration)));
  for (let i = 0; i < n; i++) {
    const due = i * interval;
    const now = Number(process.hrtime.bigint() - t0) / 1e6;
    if (due > now) await new Promise((r) => setTimeout(r, due - now));
    all.push(startOne(i));
  }
} else {
  for (let i = 0; i < Number(spec.uploads); i++) all.push(startOne(i));
}

let timer;
const timedOut = new Promise((r) => { timer = setTimeout(() => r('timeout'), timeoutMs); });
await Promise.race([Promise.all(all), timedOut]);
clearTimeout(timer);
result.unfinished = pending.size;
for (const upload of pending.values()) {
  try { upload.abort(false); } catch { /* best effort */ }
}
result.wall_s = Number(process.hrtime.bigint() - t0) / 1e9;
result.mb_s = result.bytes_sent / (1 << 20) / result.wall_s;
// Aborted requests may keep sockets open, so leave once the result is out: exiting before a
// pipe has taken the whole line (it holds 64 KiB) would cut a long list of URLs short.
process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
