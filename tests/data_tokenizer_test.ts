import assert from "node:assert/strict";
import { findSafeCut } from "../src/data/_byte_queue.ts";
import { tokenizeBatch } from "../src/data/_tokenize_batch.ts";
import { buildShards } from "../src/data/pipeline.ts";
import { resolveSources } from "../src/data/sources.ts";
import { decodeTokens, encodeOrdinary, EOT } from "../src/data/tokenizer.ts";
import { encode as referenceEncode } from "gpt-tokenizer/encoding/r50k_base";
import { makeDocs, readSplit, rng } from "./fixtures/data/_fixtures.ts";

const SHARED = new URL("../../shared/data/", import.meta.url);
const SHAKESPEARE = new URL("tinyshakespeare.txt", SHARED);
const haveShakespeare = await Deno.stat(SHAKESPEARE).then(() => true, () => false);
if (!haveShakespeare) {
  console.log(`skipping tinyshakespeare tests: ${SHAKESPEARE.pathname} is absent`);
}

Deno.test("tokenizer: GPT-2 ids for known strings", () => {
  assert.deepEqual(encodeOrdinary("Hello world"), [15496, 995]);
  assert.equal(decodeTokens(encodeOrdinary("naïve café 東京 🙂")), "naïve café 東京 🙂");
});

Deno.test("tokenizer: <|endoftext|> inside text is ordinary text, not the special token", () => {
  const ids = encodeOrdinary("a <|endoftext|> b");
  assert.ok(!ids.includes(EOT));
  assert.equal(decodeTokens(ids), "a <|endoftext|> b");
});

Deno.test({
  name: "tokenizer: tinyshakespeare is exactly 338,025 tokens",
  ignore: !haveShakespeare,
  fn: async () => {
    const text = await Deno.readTextFile(SHAKESPEARE);
    assert.equal(encodeOrdinary(text).length, 338025);
  },
});

Deno.test({
  name: "tokenizer: text cut at BPE-safe places tokenizes exactly like the whole file",
  ignore: !haveShakespeare,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const text = await Deno.readTextFile(SHAKESPEARE);
      const sources = await resolveSources([SHAKESPEARE.pathname]);
      // 16 KiB batches cut the file into ~70 chunks, tokenized separately on 2 workers.
      await buildShards({ sources, outDir: dir, workers: 2, batchBytes: 16384 });
      const tokens = await readSplit(dir, "train");
      assert.equal(tokens.length, 338026);
      assert.equal(tokens[0], EOT);
      assert.deepEqual(tokens.slice(1), encodeOrdinary(text));
      // Windows line endings and runs of spaces, cut into ~1 KiB pieces.
      const crlf = text.slice(0, 200000).replaceAll("\n", "  \r\n");
      await Deno.writeTextFile(`${dir}/crlf.txt`, crlf);
      await buildShards({
        sources: await resolveSources([`${dir}/crlf.txt`]),
        outDir: `${dir}/crlf`,
        workers: 0,
        batchBytes: 1024,
      });
      assert.deepEqual((await readSplit(`${dir}/crlf`, "train")).slice(1), encodeOrdinary(crlf));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("tokenizer: a JSONL batch gives EOT + tokens per line and flags bad lines", () => {
  const docs = makeDocs(3);
  const lines = [
    JSON.stringify({ text: docs[0] }),
    "{not json",
    "",
    JSON.stringify({ text: docs[1], meta: {} }),
    JSON.stringify({ body: "x" }),
  ];
  const r = tokenizeBatch({
    kind: "jsonl",
    bytes: new TextEncoder().encode(lines.join("\n") + "\n"),
    docStart: false,
    field: "text",
  });
  const a = encodeOrdinary(docs[0]);
  const b = encodeOrdinary(docs[1]);
  assert.deepEqual([...r.counts], [a.length + 1, 0, 0, b.length + 1, 0]);
  assert.deepEqual([...r.tokens], [EOT, ...a, EOT, ...b]);
  assert.equal(r.documents, 2);
  assert.deepEqual(r.issues.map((i) => [i.line, i.kind]), [[1, "malformed"], [4, "field"]]);
});

// Characters from many classes: ASCII, Latin-1, combining marks, CJK, astral emoji, Unicode
// spaces (NBSP, ideographic, line separator), digits of other scripts, CR/LF/tab runs.
const ALPHABET = [..."aZ09 '.,!?-_\"\t\n\r", "  ", "\n\n", "'s", "'ll", "'T", " 's"]
  .concat([..."éßñçØ\u0301\u0308東京語한국🙂🚀𝔘\u00a0\u3000\u2028\u0663٣५\ufeff\u200b"]);

Deno.test("tokenizer: identical ids to gpt-tokenizer on random multilingual text", () => {
  const r = rng(99);
  for (let k = 0; k < 300; k++) {
    let text = "";
    const n = 1 + Math.floor(r() * 80);
    for (let i = 0; i < n; i++) text += ALPHABET[Math.floor(r() * ALPHABET.length)];
    const want = referenceEncode(text, { disallowedSpecial: new Set() });
    assert.deepEqual(encodeOrdinary(text), want, JSON.stringify(text));
  }
  for (const doc of makeDocs(50, 200, 3)) {
    assert.deepEqual(encodeOrdinary(doc), referenceEncode(doc, { disallowedSpecial: new Set() }));
  }
  const long = " ".repeat(3000) + "x" + "=".repeat(3000) + "\n".repeat(500);
  assert.deepEqual(encodeOrdinary(long), referenceEncode(long));
  assert.equal(decodeTokens([EOT]), "<|endoftext|>");
});

Deno.test("tokenizer: every cut findSafeCut allows leaves the tokens unchanged", () => {
  const r = rng(7);
  const utf8 = new TextEncoder();
  const text8 = new TextDecoder("utf-8", { ignoreBOM: true });
  let cuts = 0;
  for (let k = 0; k < 200; k++) {
    let text = "";
    const n = 2 + Math.floor(r() * 60);
    for (let i = 0; i < n; i++) text += ALPHABET[Math.floor(r() * ALPHABET.length)];
    const bytes = utf8.encode(text);
    const whole = encodeOrdinary(text);
    for (let at = findSafeCut(bytes, 1); at > 0; at = findSafeCut(bytes, at + 1)) {
      const parts = [
        ...encodeOrdinary(text8.decode(bytes.subarray(0, at))),
        ...encodeOrdinary(text8.decode(bytes.subarray(at))),
      ];
      assert.deepEqual(parts, whole, `${JSON.stringify(text)} cut at byte ${at}`);
      cuts++;
    }
  }
  assert.ok(cuts > 200, `${cuts}`);
});
