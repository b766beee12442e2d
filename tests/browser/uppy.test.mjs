// Stock Uppy (@uppy/core + @uppy/aws-s3 from npm, unmodified) in Debian's Chromium against fm-control's
// Companion S3 routes under /v1/uppy (control-plane/uppy.c, README "### Uppy").
//
//   FM_TEST_BASE_URL=http://127.0.0.1:PORT node --test tests/browser/uppy.test.mjs
//
// FM_TEST_BASE_URL is an fm-control whose S3 bucket's CORS rules allow that origin (the browser PUTs to S3
// directly); tests/integration/test_browser_uppy.py starts one and runs this file. uppy-entry.mjs is bundled with
// esbuild into memory and added, with the test's page code, to a document fm-control serves (/healthz), so the page
// is on the control plane's own origin and the API calls are same-origin.
//
// Pinned to @uppy/aws-s3 5.x (`endpoint` + `headers`): 6.x renamed the option to `companionEndpoint`, sends no
// headers to the Companion routes (no Bearer token possible) and uploads single files with a POST form, not PUT.
//
// What it does: registers and logs in a fresh user (fetch), then in the page adds a 300 KiB file (single PUT via
// getUploadParameters) and a 20 MiB file (multipart: createMultipartUpload, signPart for each of Uppy's own
// chunks, completeMultipartUpload), with `size` and `sha256` (crypto.subtle) in their meta; `await uppy.upload()`
// must report both successful, and the multipart one's file (file_id from complete's answer) must be UPLOADED.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.FM_TEST_BASE_URL || '').replace(/\/+$/, '');
const CHROMIUM = process.env.FM_CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.FM_TEST_ARTIFACTS || fs.mkdtempSync(path.join(os.tmpdir(), 'fm-uppy-artifacts-'));
const UPLOAD_TIMEOUT_MS = Number(process.env.FM_TEST_UPLOAD_TIMEOUT_MS || 3 * 60 * 1000);
const MiB = 1024 * 1024;
const ARRIVED = ['UPLOADED', 'PROCESSING', 'READY'];
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const PAGE_SCRIPT = `
  // Runs stock Uppy with the options of README "### Uppy"; files are [{name, size, type}] of random bytes.
  window.runUppy = async ({ token, files, multipartAbove }) => {
    const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
    const uppy = new Uppy({ autoProceed: false });
    uppy.use(AwsS3, {
      endpoint: location.origin + '/v1/uppy',
      headers: { authorization: 'Bearer ' + token },
      allowedMetaFields: ['name', 'size', 'sha256'],
      shouldUseMultipart: (file) => file.size > multipartAbove,
    });
    const calls = [];
    uppy.on('upload-error', (file, error, response) =>
      calls.push({ event: 'upload-error', name: file && file.name, error: String(error), response }));
    const sha = {};
    for (const f of files) {
      const bytes = new Uint8Array(f.size);
      for (let off = 0; off < f.size; off += 65536) crypto.getRandomValues(bytes.subarray(off, Math.min(off + 65536, f.size)));
      const blob = new Blob([bytes], { type: f.type });
      const id = uppy.addFile({ name: f.name, type: f.type, data: blob, source: 'test' });
      sha[f.name] = hex(await crypto.subtle.digest('SHA-256', bytes));
      uppy.setFileMeta(id, { size: f.size, sha256: sha[f.name] });
    }
    const result = await uppy.upload();
    const brief = (file) => ({ name: file.name, size: file.size, meta: file.meta, response: file.response,
      error: file.error || null, isMultipart: Boolean(file.s3Multipart && file.s3Multipart.uploadId), s3Multipart: file.s3Multipart || null });
    return { sha, calls, successful: (result.successful || []).map(brief), failed: (result.failed || []).map(brief) };
  };
  document.body.dataset.ready = 'true';
`;

let workDir, context, page, bundle, token;
const pageErrors = [];
const apiCalls = [];

async function screenshot(name) {
  if (!page || page.isClosed()) return;
  const file = path.join(ARTIFACTS, `${name.replace(/[^a-z0-9_-]+/gi, '_')}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot: ${file}`);
  } catch (e) {
    console.log(`screenshot ${file} failed: ${e.message}`);
  }
}

async function api(method, route, body, auth) {
  const headers = { 'content-type': 'application/json' };
  if (auth) headers.authorization = `Bearer ${auth}`;
  const res = await fetch(`${BASE}${route}`, { method, headers, body: body && JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, text };
}

before(async () => {
  assert.ok(BASE, 'FM_TEST_BASE_URL must name the fm-control to test (e.g. http://127.0.0.1:8080)');
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: run infra/setup (Debian package chromium)`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'fm-uppy-'));
  const built = await build({
    entryPoints: [path.join(HERE, 'uppy-entry.mjs')], bundle: true, format: 'iife', platform: 'browser',
    target: 'chrome100', write: false, logLevel: 'warning',
  });
  bundle = built.outputFiles[0].text;

  const email = `uppy-${crypto.randomBytes(6).toString('hex')}@example.test`;
  const password = `pw-${crypto.randomBytes(12).toString('hex')}`;
  const reg = await api('POST', '/v1/auth/register', { email, password });
  assert.equal(reg.status, 201, `register: ${reg.status} ${reg.text}`);
  const login = await api('POST', '/v1/auth/login', { email, password });
  assert.equal(login.status, 200, `login: ${login.status} ${login.text}`);
  token = login.body.access_token;

  context = await chromium.launchPersistentContext(path.join(workDir, 'profile'), {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, viewport: { width: 1024, height: 600 },
  });
  for (const p of context.pages()) await p.close();
  page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`); });
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/v1/uppy/') || u.searchParams.has('X-Amz-Signature')) {
      apiCalls.push(`${r.request().method()} ${u.origin === BASE ? u.pathname + u.search : u.origin + u.pathname +
        (u.searchParams.has('partNumber') ? `?partNumber=${u.searchParams.get('partNumber')}` : '')} → ${r.status()}`);
    }
  });
  // The document must come from fm-control over the network (loopback): a document fulfilled by page.route has no
  // address space, and Chromium's Local Network Access checks then refuse its XHRs to S3 on 127.0.0.1.
  // /healthz is a real fm-control answer with no CSP and no script of its own; the bundle and the test code are
  // added to it as script elements.
  await page.route(`${BASE}/favicon.ico`, (route) => route.fulfill({ status: 204 }));
  await page.goto(`${BASE}/healthz`);
  await page.addScriptTag({ content: bundle });
  await page.addScriptTag({ content: PAGE_SCRIPT });
  await page.waitForSelector('body[data-ready="true"]', { state: 'attached' });
});

after(async () => {
  if (apiCalls.length) console.log(`requests:\n  ${apiCalls.join('\n  ')}`);
  if (pageErrors.length) console.log(`errors in the page:\n  ${pageErrors.join('\n  ')}`);
  if (context) await context.close();
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
});

test('stock Uppy uploads a single-PUT and a multipart file through /v1/uppy', async () => {
  try {
    const t0 = Date.now();
    const result = await page.evaluate((args) => window.runUppy(args), {
      token,
      multipartAbove: 8 * MiB,
      files: [
        { name: 'small.bin', size: 300 * 1024, type: 'application/octet-stream' },
        { name: 'large.bin', size: 20 * MiB, type: 'application/octet-stream' },
      ],
    });
    console.log(`uppy.upload() done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    fs.writeFileSync(path.join(ARTIFACTS, 'uppy-result.json'), JSON.stringify(result, null, 2));
    assert.deepEqual(result.failed, [], `failed: ${JSON.stringify(result.failed)} ${JSON.stringify(result.calls)}`);
    const byName = Object.fromEntries(result.successful.map((f) => [f.name, f]));
    assert.deepEqual(Object.keys(byName).sort(), ['large.bin', 'small.bin']);

    const small = byName['small.bin'];
    assert.equal(small.isMultipart, false, 'small.bin went as one PUT');
    assert.match(small.response.uploadURL, /\/incoming\/[^/?]+$/, `small.bin uploadURL ${small.response.uploadURL}`);
    const smallPut = `PUT ${small.response.uploadURL} → 200`;
    assert.ok(apiCalls.includes(smallPut), `${smallPut} in ${apiCalls.join(', ')}`);

    const large = byName['large.bin'];
    assert.equal(large.isMultipart, true, 'large.bin went multipart');
    assert.match(large.s3Multipart.key, /^incoming\//);
    const body = large.response.body;
    assert.ok(body && /^[0-9a-f-]{36}$/.test(body.file_id), `complete answered ${JSON.stringify(body)}`);
    const parts = apiCalls.filter((c) => /^PUT .*partNumber=/.test(c) && c.endsWith('→ 200'));
    assert.equal(parts.length, 4, `Uppy's 5 MiB chunks of 20 MiB: ${parts.join(', ')}`);

    const record = await api('GET', `/v1/files/${body.file_id}`, undefined, token);
    assert.equal(record.status, 200, record.text);
    assert.ok(ARRIVED.includes(record.body.status), `status ${record.body.status}`);
    assert.equal(record.body.size, 20 * MiB);
    assert.equal(record.body.sha256, result.sha['large.bin']);
    assert.equal(record.body.name, 'large.bin');
  } catch (e) {
    await screenshot('failure-uppy');
    throw e;
  }
});
