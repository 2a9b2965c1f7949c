// Unit tests of the pure helpers the chat uses while an answer streams in (no browser needed).

import { test } from "node:test";
import assert from "node:assert/strict";
import { partialText } from "../render.js";

test("the answer text is read from JSON that is still arriving", () => {
  const full = JSON.stringify({ text: 'D1 ("past\u00e9is") ended.\nSee `not`. \u2192 done', confidence: 0.9 });
  assert.equal(partialText(full), 'D1 ("past\u00e9is") ended.\nSee `not`. \u2192 done');
  // Every prefix decodes to a prefix of the text, never to garbage from a half escape.
  const want = JSON.parse(full).text;
  for (let i = 0; i <= full.length; i++) {
    const got = partialText(full.slice(0, i));
    assert.ok(want.startsWith(got), `prefix ${i}: ${JSON.stringify(got)}`);
  }
});

test("escaped unicode is decoded only once all four digits have arrived", () => {
  assert.equal(partialText('{"text":"a\\u00e'), "a");
  assert.equal(partialText('{"text":"a\\u00e9b'), "a\u00e9b");
  assert.equal(partialText('{"text":"a\\'), "a");
});

test("no text field yet means nothing to show", () => {
  assert.equal(partialText(""), "");
  assert.equal(partialText('{"confidence":0.9,'), "");
});
