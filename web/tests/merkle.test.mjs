// The browser's proof checker (web/merkle.js) against the certificate-transparency test
// vectors and a proof document signed the way the server signs one. Pure: no server, no browser.

import { test } from "node:test";
import assert from "node:assert/strict";
import { webcrypto } from "node:crypto";
import { leafHash, nodeHash, rootFromInclusion, parseCheckpoint, checkpointSigned, checkInclusion, toBase64 } from "../merkle.js";

const hex = (b) => Buffer.from(b).toString("hex");

async function root(leaves) {
  if (leaves.length === 1) return leaves[0];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(await root(leaves.slice(0, k)), await root(leaves.slice(k)));
}

async function path(m, leaves) {
  if (leaves.length <= 1) return [];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return m < k
    ? [...(await path(m, leaves.slice(0, k))), await root(leaves.slice(k))]
    : [...(await path(m - k, leaves.slice(k))), await root(leaves.slice(0, k))];
}

test("the eight-leaf tree of the CT test vectors has the published root, and every path verifies", async () => {
  const inputs = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
  const leaves = await Promise.all(inputs.map((h) => leafHash(Buffer.from(h, "hex"))));
  const r = await root(leaves);
  assert.equal(hex(r), "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328");
  for (let n = 1; n <= 8; n++) {
    const tree = leaves.slice(0, n);
    const tr = await root(tree);
    for (let i = 0; i < n; i++) {
      const p = await path(i, tree);
      assert.deepEqual(await rootFromInclusion(tree[i], i, n, p), tr);
      if (n > 1) assert.notDeepEqual(await rootFromInclusion(tree[i], (i + 1) % n, n, p), tr);
    }
  }
});

test("a signed checkpoint and its proof are checked; a changed size or hash is not accepted", async () => {
  const { publicKey, privateKey } = await webcrypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
  const pub = new Uint8Array(await webcrypto.subtle.exportKey("raw", publicKey));
  const spanHash = `blake3:${"ab".repeat(32)}`;
  const leaves = [await leafHash(Buffer.from("ab".repeat(32), "hex")), await leafHash(Buffer.from("x")), await leafHash(Buffer.from("y"))];
  const r = await root(leaves);
  const origin = "logline/0011223344556677/acme";
  const body = `${origin}\n3\n${toBase64(r)}\n`;
  const keyId = new Uint8Array(await webcrypto.subtle.digest("SHA-256", Buffer.concat([Buffer.from(origin), Buffer.from([10, 1]), pub]))).slice(0, 4);
  const sig = new Uint8Array(await webcrypto.subtle.sign({ name: "Ed25519" }, privateKey, Buffer.from(body)));
  const note = `${body}\n\u2014 ${origin} ${toBase64(Uint8Array.from([...keyId, ...sig]))}\n`;
  const doc = { type: "inclusion", curr_hash: spanHash, leaf_index: 0, tree_size: 3, hashes: (await path(0, leaves)).map(toBase64), checkpoint: note, public_key: `ed25519:${hex(pub)}` };
  const ok = await checkInclusion(doc, spanHash);
  assert.equal(ok.ok, true, ok.reason);
  assert.equal(ok.signed, true);
  assert.equal((await checkInclusion({ ...doc, leaf_index: 1 }, spanHash)).ok, false);
  assert.equal((await checkInclusion(doc, `blake3:${"cd".repeat(32)}`)).ok, false);
  const forged = note.replace("\n3\n", "\n4\n");
  assert.equal(await checkpointSigned(parseCheckpoint(forged), doc.public_key), false);
  assert.equal((await checkInclusion({ ...doc, checkpoint: forged, tree_size: 4 }, spanHash)).ok, false);
});
