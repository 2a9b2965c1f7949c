// Checks a LogLine inclusion proof in the browser (docs/checkpoints.md): the span's leaf hash
// climbs its audit path to the root of the signed checkpoint (RFC 9162 §2.1.3.2, SHA-256 via
// SubtleCrypto), and the checkpoint's Ed25519 signature is checked when the browser supports
// Ed25519 in Web Crypto. Pure functions over the proof document; no DOM.

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();

async function sha256(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const buf = new Uint8Array(len);
  let off = 0;
  for (const p of parts) {
    buf.set(p, off);
    off += p.length;
  }
  return new Uint8Array(await subtle.digest("SHA-256", buf));
}

export function fromBase64(s) {
  const bin = atob(s);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

export function toBase64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

function fromHex(s) {
  if (!/^([0-9a-f]{2})*$/i.test(s)) throw new Error("not hex");
  return Uint8Array.from(s.match(/../g) || [], (h) => parseInt(h, 16));
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export const leafHash = (data) => sha256(Uint8Array.of(0), data);
export const nodeHash = (l, r) => sha256(Uint8Array.of(1), l, r);

/** The leaf of a span: SHA-256(0x00 || the 32 bytes of its `blake3:` curr_hash). */
export function spanLeaf(currHash) {
  const m = /^blake3:([0-9a-f]{64})$/.exec(currHash);
  if (!m) throw new Error(`curr_hash ${currHash} is not blake3:<64 hex>`);
  return leafHash(fromHex(m[1]));
}

/** RFC 9162 §2.1.3.2: the root `proof` leads `leaf` (at `index` of `size`) to, or null. */
export async function rootFromInclusion(leaf, index, size, proof) {
  if (index >= size) return null;
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0) return null;
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 ? r : null;
}

/** Splits a C2SP signed note into origin, size, root and its signature lines. */
export function parseCheckpoint(note) {
  const cut = note.indexOf("\n\n");
  if (cut < 0) throw new Error("the checkpoint has no signature block");
  const body = note.slice(0, cut + 1);
  const [origin, size, root] = body.split("\n");
  if (!/^(0|[1-9][0-9]*)$/.test(size || "")) throw new Error("the checkpoint has no tree size");
  const sigs = note.slice(cut + 2).split("\n").filter(Boolean).map((line) => {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) throw new Error("a signature line is malformed");
    return { name: m[1], blob: fromBase64(m[2]) };
  });
  return { body, origin, size: Number(size), root: fromBase64(root || ""), sigs };
}

/** Whether the note carries a valid Ed25519 signature by `publicKey` under its origin; null
 * when this browser cannot check Ed25519. */
export async function checkpointSigned(cp, publicKey) {
  const m = /^ed25519:([0-9a-f]{64})$/.exec(publicKey || "");
  if (!m) return false;
  const pub = fromHex(m[1]);
  const keyId = (await sha256(enc.encode(cp.origin), Uint8Array.of(10, 1), pub)).slice(0, 4);
  const sig = cp.sigs.find((s) => s.name === cp.origin && s.blob.length === 68 && equal(s.blob.slice(0, 4), keyId));
  if (!sig) return false;
  let key;
  try {
    key = await subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  } catch {
    return null;
  }
  return subtle.verify({ name: "Ed25519" }, key, sig.blob.slice(4), enc.encode(cp.body));
}

/** Checks an inclusion proof document for the span whose hash is `currHash`. Returns
 * `{ ok, reason, checkpoint, signed }`; `signed` is true, false, or null (not checkable). */
export async function checkInclusion(doc, currHash) {
  const cp = parseCheckpoint(doc.checkpoint);
  const fail = (reason) => ({ ok: false, reason, checkpoint: cp, signed: null });
  if (doc.type !== "inclusion") return fail("not an inclusion proof");
  if (doc.curr_hash !== currHash) return fail("the proof is for another hash than this span's");
  if (cp.size !== doc.tree_size) return fail("the proof and the checkpoint disagree on the tree size");
  const root = await rootFromInclusion(await spanLeaf(currHash), doc.leaf_index, doc.tree_size, doc.hashes.map(fromBase64));
  if (!root || !equal(root, cp.root)) return fail("the audit path does not lead to the checkpoint's root");
  const signed = await checkpointSigned(cp, doc.public_key);
  if (signed === false) return { ok: false, reason: "the checkpoint's signature does not verify", checkpoint: cp, signed };
  return { ok: true, reason: null, checkpoint: cp, signed };
}
