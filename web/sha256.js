/*
 * Incremental SHA-256 (FIPS 180-4) for the browser.
 *
 * Why it exists: crypto.subtle.digest() takes the whole input at once (it has no streaming API), so hashing a
 * file of several GiB with it would need the whole file in memory. app.js uses crypto.subtle for files up to
 * 256 MiB and this class, fed chunk by chunk, above that. tests/browser/upload.test.mjs checks it against
 * crypto.subtle on random inputs fed in random chunk sizes, and against Node's crypto on the uploaded files.
 *
 *   const h = new Sha256();
 *   h.update(uint8Array);  h.update(moreBytes);   // any chunk sizes, any number of calls
 *   h.hex();                                      // "e3b0c442…" (64 hex digits); digest() gives the 32 bytes
 *
 * Plain script (no module): defines window.Sha256. Speed in V8: roughly 150–300 MB/s.
 */
(function (global) {
  'use strict';

  // First 32 bits of the fractional parts of the cube roots of the first 64 primes.
  const K = new Int32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);

  // First 32 bits of the fractional parts of the square roots of the first 8 primes.
  const H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

  class Sha256 {
    constructor() {
      this.h = new Int32Array(H0);
      this.w = new Int32Array(64);
      this.block = new Uint8Array(64); // bytes waiting for a full 64-byte block
      this.blockLen = 0;
      this.bytes = 0; // total length so far (a Number is exact up to 2^53 bytes)
      this.done = false;
    }

    /** Adds bytes (Uint8Array, ArrayBuffer or a view); returns this. */
    update(data) {
      if (this.done) throw new Error('Sha256: update() after digest()');
      const bytes = data instanceof Uint8Array ? data
        : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
          : new Uint8Array(data);
      let pos = 0;
      const len = bytes.length;
      this.bytes += len;
      if (this.blockLen > 0) { // top up the pending block first
        const take = Math.min(64 - this.blockLen, len);
        this.block.set(bytes.subarray(0, take), this.blockLen);
        this.blockLen += take;
        pos = take;
        if (this.blockLen < 64) return this;
        this.compress(this.block, 0);
        this.blockLen = 0;
      }
      for (; pos + 64 <= len; pos += 64) this.compress(bytes, pos); // whole blocks straight from the input
      if (pos < len) {
        this.block.set(bytes.subarray(pos), 0);
        this.blockLen = len - pos;
      }
      return this;
    }

    /** Finishes: the 32-byte digest. The object cannot be updated afterwards. */
    digest() {
      if (!this.done) {
        const bitsHigh = Math.floor(this.bytes / 0x20000000); // length in bits = bytes * 8, as two 32-bit words
        const bitsLow = (this.bytes * 8) >>> 0;
        // Padding: 0x80, zeros up to 56 mod 64, then the 64-bit big-endian bit length.
        const padLen = (this.blockLen < 56 ? 56 : 120) - this.blockLen;
        const pad = new Uint8Array(padLen + 8);
        pad[0] = 0x80;
        const dv = new DataView(pad.buffer);
        dv.setUint32(padLen, bitsHigh);
        dv.setUint32(padLen + 4, bitsLow);
        const total = this.bytes;
        this.update(pad);
        this.bytes = total;
        this.done = true;
      }
      const out = new Uint8Array(32);
      const dv = new DataView(out.buffer);
      for (let i = 0; i < 8; i++) dv.setUint32(i * 4, this.h[i] >>> 0);
      return out;
    }

    /** Finishes: the digest as 64 lowercase hex digits. */
    hex() {
      return Array.from(this.digest(), (b) => b.toString(16).padStart(2, '0')).join('');
    }

    /** One 64-byte block of `b` starting at `off` (FIPS 180-4 §6.2.2). */
    compress(b, off) {
      const w = this.w;
      for (let i = 0; i < 16; i++, off += 4) {
        w[i] = (b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3];
      }
      for (let i = 16; i < 64; i++) {
        const x = w[i - 15], y = w[i - 2];
        const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      const h = this.h;
      let a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
      for (let i = 0; i < 64; i++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const ch = (e & f) ^ (~e & g);
        const t1 = (hh + S1 + ch + K[i] + w[i]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const maj = (a & bb) ^ (a & c) ^ (bb & c);
        const t2 = (S0 + maj) | 0;
        hh = g; g = f; f = e; e = (d + t1) | 0;
        d = c; c = bb; bb = a; a = (t1 + t2) | 0;
      }
      h[0] = (h[0] + a) | 0; h[1] = (h[1] + bb) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
      h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0; h[6] = (h[6] + g) | 0; h[7] = (h[7] + hh) | 0;
    }
  }

  global.Sha256 = Sha256;
})(typeof window !== 'undefined' ? window : globalThis);
