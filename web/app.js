/*
 * Files Manager — the browser upload client (no framework, no build step; served by fm-control from web/).
 *
 * One file's way (docs/uploads.md is the contract):
 *   hashFile      SHA-256 in the browser (crypto.subtle up to 256 MiB, the incremental web/sha256.js above)
 *   startUpload   POST /v1/uploads {name, size, content_type, sha256, on_conflict: rename} → deduplicated | PUT |
 *                 MULTIPART
 *   putSingle     one PUT of the whole file to the presigned URL (XMLHttpRequest, for progress events)
 *   putMultipart  parts PUT 4 at a time to presigned part URLs, more URLs from POST /v1/uploads/{id}/parts,
 *                 each part's ETag kept, a failed part retried up to 3 times with a fresh URL
 *   complete      POST /v1/uploads/{id}/complete
 *   pollStatus    GET /v1/files/{id} a few times: PENDING_UPLOAD → UPLOADED → … READY
 *
 * Auth: POST /v1/auth/login (or register, then login) gives an access and a refresh token, kept in memory and in
 * sessionStorage (this tab only). An API call answered 401 refreshes the pair once (POST /v1/auth/refresh; one
 * refresh at a time, since refresh tokens rotate and presenting a spent one revokes the session) and is retried.
 *
 * Resume: a multipart upload in progress is remembered in localStorage (by name, size and modification time);
 * choosing the same file again after the tab was closed asks GET /v1/uploads/{id}/parts and sends only the
 * parts S3 does not hold yet.
 *
 * Each upload's <li> carries data attributes for tests and tools: data-state (queued, hashing, starting,
 * uploading, completing, checking, done, error, cancelled), data-status (the file's status from the API),
 * data-sha256, data-file-id, data-upload-id, data-method (PUT, MULTIPART, DEDUPLICATED), data-deduplicated,
 * data-sent (bytes), and for multipart data-part-size, data-part-count, data-resumed-parts.
 */
(function () {
  'use strict';

  const MiB = 1024 * 1024;

  /** Tunables (window.fm.config; a test may change them before choosing files). */
  const config = {
    subtleMaxBytes: 256 * MiB,     // crypto.subtle.digest up to this size, the incremental Sha256 above
    hashChunkBytes: 8 * MiB,       // read size while hashing
    fileConcurrency: 2,            // files uploading at once
    partConcurrency: 4,            // parts of one file in flight at once
    partRetries: 3,                // a failed part is tried again this many times
    retryDelayMs: 500,             // first retry delay, doubled each time
    urlBatch: 100,                 // part URLs asked for at once
    statusPolls: 6,                // GET /v1/files/{id} at most this many times after completing
    statusPollMs: 1000,
  };

  const FINAL_STATUSES = new Set(['READY', 'QUARANTINED', 'FAILED']);
  const AUTH_KEY = 'fm.auth';
  const RESUME_PREFIX = 'fm.resume.';

  // ---------------------------------------------------------------------------------------------------------
  // Small helpers

  const $ = (sel, root = document) => root.querySelector(sel);

  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let v = n / 1024, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** An error answered by the API ({"error":{code,message,request_id}}) or by S3, or a network failure. */
  class ApiError extends Error {
    constructor(message, { status = 0, code = 'error', requestId = null, retryable = false } = {}) {
      super(message);
      this.status = status;
      this.code = code;
      this.requestId = requestId;
      this.retryable = retryable; // worth trying again (network, 5xx, 429; any S3 refusal of a part)
    }
  }

  class Cancelled extends Error {
    constructor() { super('cancelled'); this.code = 'cancelled'; }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Auth and API calls

  const auth = {
    access: null,
    refresh: null,
    user: null,
    load() {
      try {
        const saved = JSON.parse(sessionStorage.getItem(AUTH_KEY) || 'null');
        if (saved && saved.access && saved.refresh) Object.assign(this, saved);
      } catch (e) { /* nothing usable saved */ }
    },
    save(answer) {
      this.access = answer.access_token;
      this.refresh = answer.refresh_token;
      this.user = answer.user || this.user;
      sessionStorage.setItem(AUTH_KEY, JSON.stringify({ access: this.access, refresh: this.refresh, user: this.user }));
    },
    clear() {
      this.access = this.refresh = this.user = null;
      sessionStorage.removeItem(AUTH_KEY);
    },
  };

  let refreshing = null; // the refresh in flight, shared by every caller that got a 401

  async function rawApi(method, path, body, token) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ApiError(`cannot reach the server (${e.message})`, { code: 'network_error', retryable: true });
    }
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (e) { /* not JSON */ }
    if (!res.ok) {
      const err = json && json.error;
      throw new ApiError(err && err.message ? err.message : `${method} ${path}: HTTP ${res.status}`, {
        status: res.status,
        code: err && err.code ? err.code : `http_${res.status}`,
        requestId: (err && err.request_id) || res.headers.get('X-Request-Id'),
        retryable: res.status >= 500 || res.status === 429,
      });
    }
    return json;
  }

  function refreshTokens() {
    if (!refreshing) {
      refreshing = rawApi('POST', '/v1/auth/refresh', { refresh_token: auth.refresh })
        .then((answer) => auth.save(answer))
        .catch((e) => { signedOut('Your session has ended: sign in again.'); throw e; })
        .finally(() => { refreshing = null; });
    }
    return refreshing;
  }

  /** An authenticated API call: JSON in, JSON out; on 401 the tokens are refreshed once and the call retried. */
  async function api(method, path, body) {
    const token = auth.access;
    try {
      return await rawApi(method, path, body, token);
    } catch (e) {
      if (e.status !== 401 || !auth.refresh) throw e;
      if (auth.access === token) await refreshTokens(); // else another call refreshed meanwhile
      return rawApi(method, path, body, auth.access);
    }
  }

  async function login(email, password) {
    auth.save(await rawApi('POST', '/v1/auth/login', { email, password }));
  }

  async function register(email, password) {
    await rawApi('POST', '/v1/auth/register', { email, password });
    await login(email, password);
  }

  async function logout() {
    try {
      if (auth.access) await rawApi('POST', '/v1/auth/logout', undefined, auth.access);
    } catch (e) { /* the session ends locally anyway */ }
    signedOut('Signed out.');
  }

  // ---------------------------------------------------------------------------------------------------------
  // Hashing

  /**
   * SHA-256 of a File or Blob as 64 hex digits. onProgress(bytesRead) is called as the file is read.
   * options.incremental forces web/sha256.js (tests compare both ways).
   */
  async function hashFile(file, onProgress, options = {}) {
    const progress = onProgress || (() => {});
    const useSubtle = !options.incremental && window.crypto && crypto.subtle && file.size <= config.subtleMaxBytes;
    if (useSubtle) {
      // crypto.subtle has no streaming API: read the file into one buffer (with progress), digest it at once.
      const all = new Uint8Array(file.size);
      for (let off = 0; off < file.size; off += config.hashChunkBytes) {
        const chunk = new Uint8Array(await file.slice(off, off + config.hashChunkBytes).arrayBuffer());
        all.set(chunk, off);
        progress(off + chunk.length);
      }
      const digest = await crypto.subtle.digest('SHA-256', all);
      return toHex(new Uint8Array(digest));
    }
    const h = new window.Sha256();
    for (let off = 0; off < file.size; off += config.hashChunkBytes) {
      const chunk = new Uint8Array(await file.slice(off, off + config.hashChunkBytes).arrayBuffer());
      h.update(chunk);
      progress(off + chunk.length);
    }
    return h.hex();
  }

  function toHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------------------------------------------------
  // S3 requests (XMLHttpRequest: fetch() has no upload progress events)

  const FORBIDDEN_HEADERS = new Set(['host', 'content-length', 'connection', 'expect', 'keep-alive', 'te',
    'trailer', 'transfer-encoding', 'upgrade']);

  /** PUT body to a presigned URL; resolves with the XHR once S3 answered 2xx. onProgress(bytesSent). */
  function s3Put(upload, url, body, headers, onProgress) {
    return new Promise((resolve, reject) => {
      if (upload.cancelled) { reject(new Cancelled()); return; }
      const xhr = new XMLHttpRequest();
      upload.xhrs.add(xhr);
      xhr.open('PUT', url);
      for (const [name, value] of Object.entries(headers || {})) {
        if (!FORBIDDEN_HEADERS.has(name.toLowerCase())) xhr.setRequestHeader(name, value);
      }
      xhr.upload.onprogress = (ev) => onProgress(ev.loaded);
      xhr.onload = () => {
        upload.xhrs.delete(xhr);
        if (xhr.status >= 200 && xhr.status < 300) {
          onProgress(body.size);
          resolve(xhr);
        } else {
          reject(s3Error(xhr));
        }
      };
      xhr.onerror = () => {
        upload.xhrs.delete(xhr);
        reject(new ApiError('the storage server could not be reached (network error, or its CORS rules refuse this page)',
          { code: 'network_error', retryable: true }));
      };
      xhr.onabort = () => { upload.xhrs.delete(xhr); reject(new Cancelled()); };
      xhr.send(body);
    });
  }

  /** S3 answers errors as XML: <Error><Code>…</Code><Message>…</Message></Error>. */
  function s3Error(xhr) {
    let code = `http_${xhr.status}`, message = '';
    try {
      const doc = new DOMParser().parseFromString(xhr.responseText || '', 'application/xml');
      code = (doc.querySelector('Code') || {}).textContent || code;
      message = (doc.querySelector('Message') || {}).textContent || '';
    } catch (e) { /* not XML */ }
    // Retryable: a retry takes a fresh URL, which cures an expired signature (403), and 5xx/SlowDown pass.
    return new ApiError(`storage refused the upload: ${code}${message ? ` (${message})` : ''}, HTTP ${xhr.status}`,
      { status: xhr.status, code, retryable: true });
  }

  // ---------------------------------------------------------------------------------------------------------
  // The upload steps

  async function startUpload(upload) {
    const f = upload.file;
    return api('POST', '/v1/uploads', {
      name: f.name,
      size: f.size,
      content_type: f.type || 'application/octet-stream',
      sha256: upload.sha256,
      // A name the folder already holds: the new file is numbered, "name (1).ext", as desktop file managers and
      // Dropbox's web page do, rather than refused (docs/uploads.md "Names and on_conflict").
      on_conflict: 'rename',
    });
  }

  async function putSingle(upload, answer) {
    // A Blob of no type: the only Content-Type sent is the signed one from answer.headers.
    const body = upload.file.slice(0, upload.file.size, '');
    await s3Put(upload, answer.url, body, answer.headers, (sent) => setSent(upload, sent));
  }

  /**
   * Sends the parts that S3 does not hold yet (`done`: part number → etag, from a resume), config.partConcurrency
   * at a time. Returns every part's {part_number, etag}, ascending.
   */
  async function putMultipart(upload, mp, done = new Map()) {
    const { part_size: partSize, part_count: partCount } = mp;
    upload.el.dataset.partSize = String(partSize);
    upload.el.dataset.partCount = String(partCount);
    const urls = new Map((mp.parts || []).map((p) => [p.part_number, p.url]));
    const etags = new Map(done);
    const sent = new Map(); // bytes sent per part, for the progress bar
    for (const n of done.keys()) {
      const [start, end] = partBounds(n, partSize, upload.file.size);
      sent.set(n, end - start);
    }
    const reportSent = () => setSent(upload, Array.from(sent.values()).reduce((a, b) => a + b, 0));
    reportSent();

    let urlRequest = null; // one POST .../parts at a time; the others wait for it
    async function urlFor(n, fresh) {
      if (fresh) urls.delete(n);
      while (!urls.has(n)) {
        if (urlRequest) { await urlRequest.catch(() => {}); continue; }
        const wanted = [];
        for (let k = n; k <= partCount && wanted.length < (fresh ? 1 : config.urlBatch); k++) {
          if (!urls.has(k) && !etags.has(k)) wanted.push(k);
        }
        urlRequest = api('POST', `/v1/uploads/${upload.uploadId}/parts`, { part_numbers: wanted })
          .then((answer) => { for (const p of answer.parts || []) urls.set(p.part_number, p.url); })
          .finally(() => { urlRequest = null; });
        await urlRequest;
        if (!urls.has(n)) throw new ApiError(`the server gave no URL for part ${n}`, { code: 'no_part_url' });
      }
      return urls.get(n);
    }

    async function putPart(n) {
      const [start, end] = partBounds(n, partSize, upload.file.size);
      const body = upload.file.slice(start, end, '');
      for (let attempt = 0; ; attempt++) {
        try {
          const url = await urlFor(n, attempt > 0); // a retry takes a fresh URL (the old one may have expired)
          const xhr = await s3Put(upload, url, body, {}, (bytes) => { sent.set(n, bytes); reportSent(); });
          const etag = xhr.getResponseHeader('ETag');
          if (!etag) {
            throw new ApiError('the storage server did not expose the ETag header (its CORS rules must expose ETag)',
              { code: 'etag_hidden' });
          }
          return etag;
        } catch (e) {
          sent.set(n, 0);
          reportSent();
          if (e instanceof Cancelled || upload.cancelled || !e.retryable || attempt >= config.partRetries) throw e;
          upload.retries++;
          await sleep(config.retryDelayMs * 2 ** attempt);
        }
      }
    }

    const todo = [];
    for (let n = 1; n <= partCount; n++) if (!etags.has(n)) todo.push(n);
    let failure = null;
    async function lane() {
      while (todo.length && !failure && !upload.cancelled) {
        const n = todo.shift();
        try {
          etags.set(n, await putPart(n));
          saveResume(upload, mp);
        } catch (e) {
          failure = failure || e;
          for (const xhr of upload.xhrs) xhr.abort(); // no point in sending the rest
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(config.partConcurrency, todo.length) }, lane));
    if (upload.cancelled) throw new Cancelled();
    if (failure) throw failure;
    return Array.from({ length: partCount }, (_, i) => ({ part_number: i + 1, etag: etags.get(i + 1) }));
  }

  function partBounds(n, partSize, size) {
    const start = (n - 1) * partSize;
    return [start, Math.min(start + partSize, size)];
  }

  async function complete(upload, parts) {
    return api('POST', `/v1/uploads/${upload.uploadId}/complete`, parts ? { parts } : {});
  }

  /**
   * GET /v1/files/{id} now and then a few more times (config.statusPolls, growing intervals) until a final status
   * (READY, QUARANTINED, FAILED); each answer is shown. Resolves after the first answer, so that the upload counts
   * as done as soon as its bytes are known to have arrived; the later polls run on in the background.
   */
  async function pollStatus(upload) {
    const check = async () => {
      const file = await api('GET', `/v1/files/${upload.fileId}`);
      setStatus(upload, file.status);
      showFinalStatus(upload);
      return FINAL_STATUSES.has(file.status);
    };
    if (await check()) return;
    (async () => {
      for (let i = 1; i < config.statusPolls && !upload.cancelled; i++) {
        await sleep(config.statusPollMs * i);
        if (await check()) return;
      }
    })().catch((e) => console.warn('status poll failed', upload.file.name, e.message));
  }

  const STATUS_NOTES = {
    PENDING_UPLOAD: 'the bytes have not arrived',
    UPLOADED: 'uploaded, waiting for processing',
    PROCESSING: 'being processed',
    READY: 'ready',
    QUARANTINED: 'quarantined: the content failed a check',
    FAILED: 'processing failed',
  };

  function showFinalStatus(upload) {
    const status = upload.status;
    const text = `${status}${STATUS_NOTES[status] ? ` — ${STATUS_NOTES[status]}` : ''}`;
    const state = status === 'FAILED' || status === 'QUARANTINED' ? 'error'
      : status === 'PENDING_UPLOAD' ? 'checking' : 'done';
    setState(upload, state, upload.el.dataset.deduplicated === 'true' ? `Deduplicated: ${text}` : text);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Resume records (multipart only): localStorage, keyed by user, file name, size and modification time

  function resumeKey(upload) {
    const f = upload.file;
    return `${RESUME_PREFIX}${auth.user ? auth.user.id : ''}:${f.name}:${f.size}:${f.lastModified}`;
  }

  function saveResume(upload, mp) {
    if (upload.resumeSaved) return;
    upload.resumeSaved = true;
    try {
      localStorage.setItem(resumeKey(upload), JSON.stringify({
        upload_id: upload.uploadId, file_id: upload.fileId, sha256: upload.sha256,
        part_size: mp.part_size, part_count: mp.part_count, saved_at: Date.now(),
      }));
    } catch (e) { /* storage full or off: no resume, nothing else lost */ }
  }

  function loadResume(upload) {
    try { return JSON.parse(localStorage.getItem(resumeKey(upload)) || 'null'); } catch (e) { return null; }
  }

  function dropResume(upload) {
    try { localStorage.removeItem(resumeKey(upload)); } catch (e) { /* nothing */ }
  }

  /** A remembered multipart upload of this file that S3 still holds: its parts, or null. */
  async function findResumable(upload) {
    const saved = loadResume(upload);
    if (!saved) return null;
    try {
      const answer = await api('GET', `/v1/uploads/${saved.upload_id}/parts`);
      const partSize = answer.part_size || saved.part_size;
      const partCount = answer.part_count || saved.part_count;
      const done = new Map();
      for (const p of answer.parts || []) {
        const [start, end] = partBounds(p.part_number, partSize, upload.file.size);
        if (p.etag && p.size === end - start) done.set(p.part_number, p.etag);
      }
      return { saved, mp: { part_size: partSize, part_count: partCount, parts: [] }, done };
    } catch (e) {
      dropResume(upload); // gone, completed or expired: start afresh
      return null;
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // One file, start to end

  let sequence = 0;
  const queue = [];
  let running = 0;

  function addFiles(files) {
    for (const file of files) {
      const upload = {
        seq: ++sequence, file, el: null, state: 'queued', status: null, statusTrail: [], sha256: null,
        uploadId: null, fileId: null, sent: 0, xhrs: new Set(), cancelled: false, aborted: false, retries: 0,
        resumeSaved: false,
      };
      upload.el = renderUpload(upload);
      fm.uploads.push(upload);
      queue.push(upload);
    }
    pump();
  }

  function pump() {
    while (running < config.fileConcurrency && queue.length) {
      const upload = queue.shift();
      if (upload.cancelled) continue;
      running++;
      runUpload(upload).finally(() => { running--; pump(); });
    }
  }

  async function runUpload(upload) {
    try {
      setState(upload, 'hashing', 'Hashing…');
      const resumable = await findResumable(upload);
      if (resumable) {
        upload.sha256 = resumable.saved.sha256;
        upload.uploadId = resumable.saved.upload_id;
        upload.fileId = resumable.saved.file_id;
        showIds(upload);
        upload.el.dataset.resumedParts = String(resumable.done.size);
        showSha(upload);
        setMethod(upload, 'MULTIPART');
        setStatus(upload, 'PENDING_UPLOAD');
        setState(upload, 'uploading', `Resuming: ${resumable.done.size} of ${resumable.mp.part_count} parts already stored…`);
        const parts = await putMultipart(upload, resumable.mp, resumable.done);
        await finish(upload, parts);
        return;
      }

      upload.sha256 = await hashFile(upload.file, (read) => setProgress(upload, read, 'Hashing'));
      showSha(upload);
      if (upload.cancelled) throw new Cancelled();
      setProgress(upload, 0, 'Sent');

      setState(upload, 'starting', 'Starting the upload…');
      const answer = await startUpload(upload);
      upload.fileId = answer.file_id;
      upload.uploadId = answer.upload_id || null;
      showIds(upload);
      if (upload.cancelled) { // Cancel was pressed while the upload was being created
        await abortOnServer(upload);
        throw new Cancelled();
      }

      if (answer.deduplicated) {
        setMethod(upload, 'DEDUPLICATED');
        upload.el.dataset.deduplicated = 'true';
        setSent(upload, upload.file.size);
        setStatus(upload, answer.status || 'READY');
        setState(upload, 'checking', 'Deduplicated: you already store this content, no bytes were sent.');
        await pollStatus(upload);
        return;
      }

      upload.el.dataset.deduplicated = 'false';
      setMethod(upload, answer.method);
      setStatus(upload, 'PENDING_UPLOAD');
      setState(upload, 'uploading', 'Uploading…');
      if (answer.method === 'MULTIPART') {
        saveResume(upload, answer.multipart);
        const parts = await putMultipart(upload, answer.multipart);
        await finish(upload, parts);
      } else if (answer.method === 'PUT') {
        await putSingle(upload, answer);
        await finish(upload, null);
      } else {
        throw new ApiError(`unknown upload method ${answer.method}`, { code: 'bad_answer' });
      }
    } catch (e) {
      if (e instanceof Cancelled || upload.cancelled) {
        // cancelUpload() tells the user, once the server has aborted the upload too
      } else {
        console.error('upload failed', upload.file.name, e);
        const ref = e.requestId ? ` (request ${e.requestId})` : '';
        const resumable = loadResume(upload) ? ' Choose the file again to resume.' : '';
        setState(upload, 'error', `Error: ${e.message.replace(/\.$/, '')}${ref}.${resumable}`);
        upload.el.dataset.errorCode = e.code || 'error';
      }
    }
  }

  async function finish(upload, parts) {
    setState(upload, 'completing', 'Completing…');
    const answer = await complete(upload, parts);
    dropResume(upload);
    setStatus(upload, answer.status || 'UPLOADED');
    setState(upload, 'checking', 'Uploaded; checking its status…');
    await pollStatus(upload);
  }

  async function cancelUpload(upload) {
    if (upload.cancelled || !CANCELLABLE.has(upload.state)) return;
    upload.cancelled = true;
    for (const xhr of upload.xhrs) xhr.abort();
    setState(upload, 'cancelled', 'Cancelling…');
    await abortOnServer(upload); // (no upload id yet: runUpload aborts it once POST /v1/uploads answers)
    setState(upload, 'cancelled', 'Cancelled.');
  }

  async function abortOnServer(upload) {
    if (!upload.uploadId || upload.aborted) return;
    upload.aborted = true;
    try {
      await api('DELETE', `/v1/uploads/${upload.uploadId}`);
      dropResume(upload);
    } catch (e) { /* the server's cleanup job aborts abandoned uploads */ }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Rendering

  function renderUpload(upload) {
    const el = $('#upload-template').content.firstElementChild.cloneNode(true);
    el.id = `upload-${upload.seq}`;
    el.dataset.seq = String(upload.seq);
    el.dataset.fileName = upload.file.name;
    $('.upload-name', el).textContent = upload.file.name;
    $('.upload-size', el).textContent = formatBytes(upload.file.size);
    const bar = $('.upload-progress', el);
    bar.id = `upload-progress-${upload.seq}`;
    bar.setAttribute('aria-label', `Progress of ${upload.file.name}`);
    const cancel = $('.upload-cancel', el);
    cancel.setAttribute('aria-label', `Cancel the upload of ${upload.file.name}`);
    cancel.addEventListener('click', () => cancelUpload(upload));
    $('#uploads').prepend(el);
    $('#uploads-empty').hidden = true;
    return el;
  }

  const CANCELLABLE = new Set(['queued', 'hashing', 'starting', 'uploading']);

  function setState(upload, state, text) {
    upload.state = state;
    upload.el.dataset.state = state;
    $('.upload-cancel', upload.el).hidden = !CANCELLABLE.has(state);
    $('.upload-status', upload.el).textContent = text;
    if (state === 'error') upload.el.classList.add('failed');
  }

  function setStatus(upload, status) {
    if (!status) return;
    upload.status = status;
    upload.el.dataset.status = status;
    if (upload.statusTrail[upload.statusTrail.length - 1] !== status) upload.statusTrail.push(status);
    upload.el.dataset.statusTrail = upload.statusTrail.join(' ');
    $('.upload-trail', upload.el).textContent = `Status: ${upload.statusTrail.join(' → ')}`;
  }

  function setMethod(upload, method) {
    upload.el.dataset.method = method || '';
  }

  function showIds(upload) {
    upload.el.dataset.fileId = upload.fileId || '';
    upload.el.dataset.uploadId = upload.uploadId || '';
  }

  function showSha(upload) {
    upload.el.dataset.sha256 = upload.sha256;
    $('.upload-sha-value', upload.el).textContent = upload.sha256;
  }

  function setProgress(upload, done, label) {
    const size = upload.file.size;
    const bar = $('.upload-progress', upload.el);
    bar.max = Math.max(size, 1);
    bar.value = size ? done : 1;
    $('.upload-bytes', upload.el).textContent =
      `${label}: ${formatBytes(done)} of ${formatBytes(size)}${size ? ` (${Math.floor((100 * done) / size)}%)` : ''}`;
  }

  function setSent(upload, sent) {
    upload.sent = Math.min(sent, upload.file.size);
    upload.el.dataset.sent = String(upload.sent);
    if (upload.state === 'uploading' || upload.state === 'starting') {
      setProgress(upload, upload.sent, 'Sent');
    } else {
      const bar = $('.upload-progress', upload.el);
      bar.max = Math.max(upload.file.size, 1);
      bar.value = upload.file.size ? upload.sent : 1;
    }
  }

  function signedIn() {
    $('#auth-section').hidden = true;
    $('#upload-section').hidden = false;
    $('#account').hidden = false;
    $('#account-email').textContent = auth.user ? auth.user.email : '';
    $('#auth-message').textContent = '';
    $('#file-input').focus();
  }

  function signedOut(message) {
    for (const upload of fm.uploads) cancelUpload(upload);
    auth.clear();
    $('#auth-section').hidden = false;
    $('#upload-section').hidden = true;
    $('#account').hidden = true;
    $('#auth-message').textContent = message || '';
  }

  // ---------------------------------------------------------------------------------------------------------
  // Wiring

  function init() {
    const form = $('#auth-form');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const action = ev.submitter && ev.submitter.value === 'register' ? 'register' : 'login';
      const email = $('#email').value.trim();
      const password = $('#password').value;
      const message = $('#auth-message');
      if (!email || !password) { message.textContent = 'Enter your email and password.'; return; }
      for (const b of form.querySelectorAll('button')) b.disabled = true;
      message.textContent = action === 'register' ? 'Creating your account…' : 'Signing in…';
      try {
        await (action === 'register' ? register(email, password) : login(email, password));
        $('#password').value = '';
        signedIn();
      } catch (e) {
        message.textContent = e.message;
      } finally {
        for (const b of form.querySelectorAll('button')) b.disabled = false;
      }
    });
    $('#sign-out').addEventListener('click', logout);

    const input = $('#file-input');
    input.addEventListener('change', () => {
      addFiles(Array.from(input.files));
      input.value = ''; // choosing the same file again fires change again
    });

    const zone = $('#drop-zone');
    const over = (on) => (ev) => { ev.preventDefault(); zone.classList.toggle('over', on); };
    zone.addEventListener('dragenter', over(true));
    zone.addEventListener('dragover', over(true));
    zone.addEventListener('dragleave', over(false));
    zone.addEventListener('drop', (ev) => {
      over(false)(ev);
      const files = Array.from((ev.dataTransfer && ev.dataTransfer.files) || []);
      if (files.length) addFiles(files);
    });
    // A file dropped beside the zone must not make the browser leave the page to show it.
    window.addEventListener('dragover', (ev) => ev.preventDefault());
    window.addEventListener('drop', (ev) => ev.preventDefault());
    window.addEventListener('beforeunload', (ev) => {
      if (fm.uploads.some((u) => ['hashing', 'starting', 'uploading', 'completing'].includes(u.state))) {
        ev.preventDefault();
        ev.returnValue = '';
      }
    });

    auth.load();
    if (auth.access) signedIn();
    document.body.dataset.ready = 'true';
  }

  // For tests and the console: the steps and the state, nothing secret (tokens stay in `auth`, not exported).
  const fm = { config, uploads: [], hashFile, addFiles, formatBytes };
  window.fm = fm;

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
