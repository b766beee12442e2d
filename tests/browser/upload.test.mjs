// End-to-end test of the web client (web/) in Debian's Chromium, driven by playwright-core.
//
//   FM_TEST_BASE_URL=http://127.0.0.1:PORT node --test tests/browser/upload.test.mjs
//
// FM_TEST_BASE_URL is an fm-control serving web/ (FM_WEB_DIR) whose S3 bucket's CORS rules allow that origin, with
// an fm-worker processing its jobs; tests/integration/test_browser_upload.py starts both and runs this file.
// Screenshots (one at the end, one per failing test) go to FM_TEST_ARTIFACTS (default: a new temporary folder);
// their paths are printed.
// FM_CHROMIUM overrides the browser (default /usr/bin/chromium).
//
// What it does, through the page as a person would: registers a fresh user, uploads a small (300 KiB) and a
// large (105 MiB: multipart) file of random bytes with the file input, waits for status UPLOADED (or later), checks
// the SHA-256 the page computed against Node's crypto (and the incremental web/sha256.js against crypto.subtle),
// uploads another file after its access token was spoiled (the page must refresh it once), resumes a multipart
// upload after its tab was closed, and, once the worker has made the small file READY, chooses it again and gets
// the server's dedupe answer (no bytes move). Each later test that needs a fresh upload uses bytes of its own, so a
// blob the worker verified meanwhile never turns it into a dedupe hit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const BASE = (process.env.FM_TEST_BASE_URL || '').replace(/\/+$/, '');
const CHROMIUM = process.env.FM_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.FM_TEST_ARTIFACTS || fs.mkdtempSync(path.join(os.tmpdir(), 'fm-browser-artifacts-'));
const UPLOAD_TIMEOUT_MS = Number(process.env.FM_TEST_UPLOAD_TIMEOUT_MS || 5 * 60 * 1000);
const MiB = 1024 * 1024;
// How long the worker may take to make a 300 KiB file READY (its queue may hold two 105 MiB files before it).
const READY_TIMEOUT_MS = Number(process.env.FM_TEST_READY_TIMEOUT_MS || 3 * 60 * 1000);
// Statuses that mean "the bytes arrived": UPLOADED, or later (the worker may have processed the file already).
const ARRIVED = ['UPLOADED', 'PROCESSING', 'READY'];
// The flags of shared/notes/browser-tests.md (headless is added by playwright-core).
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let workDir, context, page;
const files = {}; // name → {path, size, sha256}
let firstSmallId = null; // the file id of small.bin's first (PUT) upload
const pageErrors = [];
const email = `browser-${crypto.randomBytes(6).toString('hex')}@example.test`;
const password = `pw-${crypto.randomBytes(12).toString('hex')}`;

function writeRandomFile(name, size) {
  const p = path.join(workDir, name);
  const fd = fs.openSync(p, 'w');
  const hash = crypto.createHash('sha256');
  try {
    for (let left = size; left > 0;) {
      const chunk = crypto.randomBytes(Math.min(left, 4 * MiB));
      fs.writeSync(fd, chunk);
      hash.update(chunk);
      left -= chunk.length;
    }
  } finally {
    fs.closeSync(fd);
  }
  files[name] = { path: p, size, sha256: hash.digest('hex') };
  return files[name];
}

async function screenshot(name) {
  if (!page || page.isClosed()) return null;
  const file = path.join(ARTIFACTS, `${name.replace(/[^a-z0-9_-]+/gi, '_')}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot: ${file}`);
    return file;
  } catch (e) {
    console.log(`screenshot ${file} failed: ${e.message}`);
    return null;
  }
}

/** A test whose failure leaves a screenshot of the page behind. */
function pageTest(name, fn) {
  test(name, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      await screenshot(`failure-${name}`);
      if (pageErrors.length) console.log(`errors in the page:\n  ${pageErrors.join('\n  ')}`);
      throw e;
    }
  });
}

function watch(p) {
  p.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  p.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });
}

async function openPage() {
  const p = await context.newPage();
  watch(p);
  await p.goto(`${BASE}/`);
  await p.waitForSelector('body[data-ready="true"]');
  return p;
}

/** Waits until upload #seq is finished (done, error or cancelled) and returns its data attributes. */
async function waitForUpload(seq, timeout = UPLOAD_TIMEOUT_MS) {
  const sel = `#upload-${seq}`;
  await page.waitForSelector(`${sel}:is([data-state="done"], [data-state="error"], [data-state="cancelled"])`,
    { timeout, state: 'attached' });
  return page.$eval(sel, (el) => ({
    ...el.dataset,
    statusText: el.querySelector('.upload-status').textContent,
    progress: el.querySelector('progress').value,
    progressMax: el.querySelector('progress').max,
  }));
}

function assertArrived(item, file, method) {
  assert.equal(item.state, 'done', `upload of ${item.fileName} ended "${item.state}": ${item.statusText}`);
  assert.ok(ARRIVED.includes(item.status), `status ${item.status} (${item.statusText})`);
  assert.match(item.statusText, new RegExp(`^${item.status}\\b`));
  assert.equal(item.statusTrail.split(' ')[0], 'PENDING_UPLOAD', `status trail ${item.statusTrail}`);
  assert.equal(item.method, method);
  assert.equal(Number(item.sent), file.size, 'bytes sent');
  assert.equal(item.progress, item.progressMax, 'progress bar full');
  assert.match(item.fileId, /^[0-9a-f-]{36}$/);
}

/** GET an API route with the page's own access token (read from its sessionStorage); wants 200 unless told. */
async function apiGet(p, route, { raw = false } = {}) {
  const token = await p.evaluate(() => JSON.parse(sessionStorage.getItem('fm.auth')).access);
  const res = await fetch(`${BASE}${route}`, { headers: { Authorization: `Bearer ${token}` } });
  if (raw) return res;
  assert.equal(res.status, 200, `GET ${route}: ${res.status} ${await res.clone().text()}`);
  return res.json();
}

before(async () => {
  assert.ok(BASE, 'FM_TEST_BASE_URL must name the fm-control serving the page (e.g. http://127.0.0.1:8080)');
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: run infra/setup (Debian package chromium)`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  console.log(`artifacts: ${ARTIFACTS}`);
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fm-browser-'));
  writeRandomFile('small.bin', 300 * 1024);
  writeRandomFile('refreshed.bin', 300 * 1024);
  writeRandomFile('large.bin', 105 * MiB);
  writeRandomFile('resumed.bin', 105 * MiB);
  writeRandomFile('cancelled.bin', 105 * MiB);
  writeRandomFile('retried.bin', 105 * MiB);
  context = await chromium.launchPersistentContext(path.join(workDir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 800 },
  });
  for (const p of context.pages()) await p.close();
  page = await openPage();
});

after(async () => {
  await screenshot('final');
  if (context) await context.close();
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
});

pageTest('the page registers a fresh user and shows the upload form', async () => {
  assert.equal(await page.title(), 'Files Manager — upload');
  assert.ok(await page.isVisible('#auth-form'));
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.waitForSelector('#upload-section', { state: 'visible', timeout: 30_000 });
  assert.equal(await page.textContent('#account-email'), email);
  assert.ok(await page.isHidden('#auth-section'));
  assert.ok(await page.isVisible('label[for="file-input"]'), 'the "Choose files" button shows');
});

pageTest('web/sha256.js agrees with crypto.subtle on random inputs fed in random chunks', async () => {
  const mismatches = await page.evaluate(async () => {
    const sizes = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4095, 4096, 65539, 8 * 1048576 + 17];
    for (let i = 0; i < 24; i++) sizes.push(Math.floor(Math.random() * 1048576));
    const bad = [];
    for (const size of sizes) {
      const data = new Uint8Array(size);
      for (let off = 0; off < size; off += 65536) crypto.getRandomValues(data.subarray(off, Math.min(off + 65536, size)));
      const want = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', data)),
        (b) => b.toString(16).padStart(2, '0')).join('');
      const whole = new Sha256().update(data).hex();
      const h = new Sha256();
      for (let off = 0; off < size;) {
        const n = 1 + Math.floor(Math.random() * (Math.random() < 0.5 ? 130 : 300000));
        h.update(data.subarray(off, off + n));
        off += n;
      }
      const chunked = h.hex();
      if (whole !== want || chunked !== want) bad.push({ size, want, whole, chunked });
    }
    return bad;
  });
  assert.deepEqual(mismatches, []);
});

pageTest('a small and a 105 MiB file go straight to S3 and reach UPLOADED', async () => {
  // Make the page use the contract's less common paths against the real server: the first answer's part URLs
  // are cut to 2 (so the page must ask POST /v1/uploads/{id}/parts for more), and the first PUT of part 3 fails
  // at the network level (so the page must retry it with a fresh URL).
  const partCalls = [], partPuts = [];
  let failedPart3 = 0;
  page.on('request', (r) => {
    if (r.method() === 'POST' && /\/v1\/uploads\/[^/]+\/parts$/.test(r.url())) partCalls.push(r.url());
    if (r.method() === 'PUT' && /[?&]partNumber=/.test(r.url())) partPuts.push(r.url());
  });
  await page.route((url) => url.pathname === '/v1/uploads', async (route) => {
    const response = await route.fetch();
    const answer = await response.json();
    if (answer.method === 'MULTIPART') answer.multipart.parts = answer.multipart.parts.slice(0, 2);
    await route.fulfill({ response, json: answer });
  });
  await page.route((url) => url.searchParams.get('partNumber') === '3', async (route) => {
    if (route.request().method() === 'PUT' && failedPart3++ === 0) await route.abort('connectionreset');
    else await route.continue();
  });

  const t0 = Date.now();
  await page.setInputFiles('#file-input', [files['small.bin'].path, files['large.bin'].path]);
  await page.waitForSelector('#upload-2[data-state="uploading"][data-sent]:not([data-sent="0"])',
    { timeout: UPLOAD_TIMEOUT_MS, state: 'attached' });
  await screenshot('uploading');
  const small = await waitForUpload(1);
  const large = await waitForUpload(2);
  console.log(`small and large uploads done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await page.unrouteAll({ behavior: 'wait' });

  assert.equal(small.fileName, 'small.bin');
  assertArrived(small, files['small.bin'], 'PUT');
  firstSmallId = small.fileId;
  assert.equal(large.fileName, 'large.bin');
  assertArrived(large, files['large.bin'], 'MULTIPART');
  assert.ok(partCalls.length >= 1, 'the page asked for more part URLs');
  assert.equal(failedPart3, 2, 'part 3 was tried twice (one failure, one retry)');
  const numbers = new Set(partPuts.map((u) => new URL(u).searchParams.get('partNumber')));
  assert.ok(numbers.size >= 2 && numbers.size <= 10000, `parts sent: ${numbers.size}`);

  // What the server recorded matches what the page sent.
  for (const [item, file] of [[small, files['small.bin']], [large, files['large.bin']]]) {
    const record = await apiGet(page, `/v1/files/${item.fileId}`);
    assert.equal(record.size, file.size);
    assert.equal(record.sha256, file.sha256);
    assert.equal(record.name, item.fileName);
    assert.ok(ARRIVED.includes(record.status), record.status);
  }
});

pageTest("the page's SHA-256 equals Node's crypto for the generated files", async () => {
  const shown = await page.$$eval('.upload-item', (els) => els.map((el) => [el.dataset.fileName, el.dataset.sha256]));
  assert.deepEqual(Object.fromEntries(shown), {
    'small.bin': files['small.bin'].sha256,
    'large.bin': files['large.bin'].sha256,
  });
  assert.equal(await page.textContent('#upload-2 .upload-sha-value'), files['large.bin'].sha256);
  // The same 105 MiB File through the incremental hasher (the page uses it above 256 MiB).
  const incremental = await page.evaluate(
    () => fm.hashFile(fm.uploads.find((u) => u.file.name === 'large.bin').file, null, { incremental: true }));
  assert.equal(incremental, files['large.bin'].sha256);
});

pageTest('a new file with a spoiled access token: refreshed once, a normal upload', async () => {
  // Bytes no blob holds yet: the answer is a PUT whatever the worker has done meanwhile (dedupe is tested below).
  const file = files['refreshed.bin'];
  const refreshes = [];
  page.on('request', (r) => { if (r.url().endsWith('/v1/auth/refresh')) refreshes.push(r); });
  await page.evaluate(() => {
    const saved = JSON.parse(sessionStorage.getItem('fm.auth'));
    saved.access = 'spoiled.access.token';
    sessionStorage.setItem('fm.auth', JSON.stringify(saved));
  });
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  await page.waitForSelector('#upload-section', { state: 'visible' });
  await page.setInputFiles('#file-input', file.path);
  const again = await waitForUpload(1); // a reloaded page numbers from 1 again
  assert.equal(refreshes.length, 1, 'one POST /v1/auth/refresh');
  assert.equal(again.fileName, 'refreshed.bin');
  assert.equal(again.sha256, file.sha256);
  assertArrived(again, file, 'PUT');
  const saved = await page.evaluate(() => JSON.parse(sessionStorage.getItem('fm.auth')).access);
  assert.notEqual(saved, 'spoiled.access.token');
});

pageTest('a multipart upload resumes after its tab was closed', async () => {
  const file = files['resumed.bin'];
  // Three part PUTs (whichever come first) go through, the others are held back; then the tab is closed.
  const partOf = (u) => Number(new URL(u).searchParams.get('partNumber'));
  const allowed = new Set();
  let stored = 0;
  page.on('requestfinished', (r) => { if (r.method() === 'PUT' && /[?&]partNumber=/.test(r.url())) stored++; });
  await page.route((url) => url.searchParams.has('partNumber') && url.searchParams.has('uploadId'), async (route) => {
    if (route.request().method() !== 'PUT') return route.continue();
    if (allowed.size < 3) {
      allowed.add(partOf(route.request().url()));
      return route.continue();
    }
    return new Promise(() => {}); // never answered: the tab closes first
  });
  await page.setInputFiles('#file-input', file.path);
  const deadline = Date.now() + UPLOAD_TIMEOUT_MS;
  while (stored < 3) {
    assert.ok(Date.now() < deadline, `only ${stored} parts were stored in time`);
    const [state, text] = await page.evaluate(() => {
      const el = document.querySelector('.upload-item[data-file-name="resumed.bin"]');
      return el ? [el.dataset.state, el.textContent] : [null, null];
    });
    assert.ok(!['error', 'cancelled'].includes(state), text);
    await page.waitForTimeout(100);
  }
  const first = await page.$eval('.upload-item[data-file-name="resumed.bin"]', (el) => ({ ...el.dataset }));
  await page.close({ runBeforeUnload: false });

  // A new tab: sessionStorage is gone (sign in again), localStorage remembers the upload.
  page = await openPage();
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForSelector('#upload-section', { state: 'visible', timeout: 30_000 });
  const puts = [];
  page.on('request', (r) => { if (r.method() === 'PUT' && /[?&]partNumber=/.test(r.url())) puts.push(r.url()); });
  let created = 0;
  page.on('request', (r) => { if (r.method() === 'POST' && new URL(r.url()).pathname === '/v1/uploads') created++; });
  await page.setInputFiles('#file-input', file.path);
  const resumed = await waitForUpload(1);
  assert.equal(created, 0, 'no new upload was started');
  assert.equal(resumed.uploadId, first.uploadId);
  assertArrived(resumed, file, 'MULTIPART');
  const numbers = new Set(puts.map(partOf));
  for (const n of allowed) assert.ok(!numbers.has(n), `part ${n} was sent again`);
  // At least the parts let through were found on S3 (a PUT cut off by the closing tab may have landed too);
  // the new tab sent exactly the others.
  assert.ok(Number(resumed.resumedParts) >= allowed.size, `only ${resumed.resumedParts} stored parts were found`);
  assert.equal(numbers.size + Number(resumed.resumedParts), Number(resumed.partCount),
               `parts sent in the new tab: ${[...numbers]}`);
  const record = await apiGet(page, `/v1/files/${resumed.fileId}`);
  assert.equal(record.sha256, file.sha256);
  assert.equal(record.size, file.size);
});

/** Chooses files with the file input; returns the seq number the page gives the first of them. */
async function choose(...paths) {
  const seq = await page.evaluate(() => fm.uploads.length + 1);
  await page.setInputFiles('#file-input', paths);
  return seq;
}

pageTest("the API's error message is shown (a content type the server refuses)", async () => {
  const p = path.join(workDir, 'page.html'); // Chromium types it text/html, not in FM_ALLOWED_CONTENT_TYPES
  fs.writeFileSync(p, '<!doctype html><title>x</title>');
  const seq = await choose(p);
  const item = await waitForUpload(seq, 60_000);
  assert.equal(item.state, 'error');
  assert.equal(item.errorCode, 'content_type_not_allowed');
  assert.match(item.statusText, /^Error: content type text\/html is not accepted here/);
  assert.match(item.statusText, /\(request [0-9a-f]+\)\.$/);
});

/** Polls GET /v1/files/{id} until its status is `want`; fails at once on a final status that is not it. */
async function waitForStatus(fileId, want, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const record = await apiGet(page, `/v1/files/${fileId}`);
    if (record.status === want) return record;
    assert.ok(!['FAILED', 'QUARANTINED'].includes(record.status), `file ${fileId}: ${JSON.stringify(record)}`);
    assert.ok(Date.now() < deadline, `file ${fileId} is still ${record.status}, not ${want}, after ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

pageTest('the small file again once the worker made it READY: deduplicated by the server, no bytes move', async () => {
  // The stack's fm-worker verifies small.bin's first upload (its blob enters the owner's dedupe index); only then
  // does the same owner's POST /v1/uploads with that sha256 answer "deduplicated" (docs/uploads.md).
  assert.ok(firstSmallId, "small.bin's first upload has a file id");
  await waitForStatus(firstSmallId, 'READY', READY_TIMEOUT_MS);
  const puts = [], answers = [];
  const onRequest = (r) => { if (r.method() === 'PUT') puts.push(r.url()); };
  const onResponse = (r) => {
    if (r.request().method() === 'POST' && new URL(r.url()).pathname === '/v1/uploads') answers.push(r);
  };
  page.on('request', onRequest);
  page.on('response', onResponse);
  try {
    const seq = await choose(files['small.bin'].path);
    const item = await waitForUpload(seq, 60_000);
    assert.equal(answers.length, 1, 'one POST /v1/uploads');
    assert.equal(answers[0].status(), 200);
    const answer = await answers[0].json();
    assert.equal(answer.deduplicated, true, JSON.stringify(answer));
    assert.equal(answer.status, 'READY');
    assert.equal(answer.url, undefined, 'no upload URL is handed out');
    assert.equal(answer.file_id, item.fileId);
    assert.notEqual(item.fileId, firstSmallId, 'a new file record');
    assert.equal(item.state, 'done', item.statusText);
    assert.equal(item.method, 'DEDUPLICATED');
    assert.equal(item.deduplicated, 'true');
    assert.equal(item.status, 'READY');
    assert.match(item.statusText, /^Deduplicated: READY\b/);
    assert.equal(item.sha256, files['small.bin'].sha256);
    assert.deepEqual(puts, []);
    const record = await apiGet(page, `/v1/files/${item.fileId}`); // the real record of the new file
    assert.equal(record.status, 'READY');
    assert.equal(record.sha256, files['small.bin'].sha256);
    assert.equal(record.size, files['small.bin'].size);
    // the first small.bin still holds its name: the page asks for on_conflict "rename", so the new one is numbered
    assert.equal(record.name, 'small (1).bin');
  } finally {
    page.off('request', onRequest);
    page.off('response', onResponse);
  }
});

pageTest('Cancel stops a multipart upload and aborts it on the server', async () => {
  const seq = await choose(files['cancelled.bin'].path); // bytes of its own: never a dedupe hit
  await page.waitForSelector(`#upload-${seq}[data-state="uploading"][data-sent]:not([data-sent="0"])`,
    { timeout: UPLOAD_TIMEOUT_MS, state: 'attached' });
  const deleted = page.waitForResponse(
    (r) => r.request().method() === 'DELETE' && /\/v1\/uploads\/[^/]+$/.test(r.url()), { timeout: 30_000 });
  await page.getByRole('button', { name: 'Cancel the upload of cancelled.bin' }).click();
  assert.equal((await deleted).status(), 204);
  await page.waitForSelector(`#upload-${seq} .upload-status:text-is("Cancelled.")`, { timeout: 30_000 });
  const item = await waitForUpload(seq, 60_000);
  assert.equal(item.state, 'cancelled');
  // The contract does not say what becomes of the file record: today it is gone (404); it must not look uploaded.
  const res = await apiGet(page, `/v1/files/${item.fileId}`, { raw: true });
  if (res.status !== 404) {
    assert.equal(res.status, 200);
    assert.ok(!ARRIVED.includes((await res.json()).status));
  }
});

pageTest('a part failing 4 times fails the upload; choosing the file again resumes it', async () => {
  await page.evaluate(() => { fm.config.retryDelayMs = 50; });
  let attempts = 0;
  await page.route((url) => url.searchParams.get('partNumber') === '2', (route) => {
    if (route.request().method() !== 'PUT') return route.continue();
    attempts++;
    return route.abort('connectionreset');
  });
  const seq = await choose(files['retried.bin'].path); // bytes of its own: never a dedupe hit
  const failed = await waitForUpload(seq);
  await page.unrouteAll({ behavior: 'wait' });
  assert.equal(failed.state, 'error');
  assert.equal(attempts, 4, 'one try and 3 retries');
  assert.match(failed.statusText, /could not be reached.*Choose the file again to resume\.$/);

  const again = await choose(files['retried.bin'].path);
  const resumed = await waitForUpload(again);
  assert.equal(resumed.uploadId, failed.uploadId);
  assert.ok(Number(resumed.resumedParts) >= 1, `resumed parts: ${resumed.resumedParts}`);
  assertArrived(resumed, files['retried.bin'], 'MULTIPART');
});
