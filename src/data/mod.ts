/**
 * The data pipeline: text sources to GPT-2 token shards (llm.c format), and the loader that
 * training reads them back with.
 *
 * @example
 * ```ts
 * import { buildShards, openShards, resolveSources, TokenLoader } from "./src/data/mod.ts";
 *
 * const sources = await resolveSources(["input.txt"]);
 * await buildShards({ sources, outDir: "out/tiny", name: "tiny", val: { tokens: 32768 } });
 * const loader = new TokenLoader(await openShards("out/tiny"), { batchSize: 4, seqLen: 64 });
 * const { inputs, targets } = loader.nextBatch();
 * ```
 *
 * @module
 */
export {
  decodeShardHeader,
  encodeShard,
  encodeShardHeader,
  readShard,
  SHARD_HEADER_BYTES,
  SHARD_MAGIC,
  SHARD_VERSION,
  shardFileName,
  type ShardHeader,
  writeShard,
} from "./shard.ts";
export { decodeTokens, encodeOrdinary, EOT, VOCAB_SIZE } from "./tokenizer.ts";
export {
  classify,
  type Compression,
  globToRegExp,
  type ResolveOptions,
  resolveSources,
  selectSubset,
  SLIMPAJAMA_BASE,
  type SlimPajamaOptions,
  slimpajamaSources,
  type Source,
  type SubsetOptions,
  unitHash,
} from "./sources.ts";
export {
  comparePositions,
  type Manifest,
  MANIFEST_FILE,
  type ManifestConfig,
  type ManifestShard,
  readManifest,
  type StreamPosition,
} from "./manifest.ts";
export {
  type BuildOptions,
  type BuildProgress,
  type BuildResult,
  buildShards,
} from "./pipeline.ts";
export {
  type LoaderCursor,
  type LoaderOptions,
  openShards,
  type OpenShardsOptions,
  type ShardInfo,
  type TokenBatch,
  TokenLoader,
} from "./loader.ts";
export { TokenizerPool } from "./_worker_pool.ts";
export type { BatchIssue, BatchRequest, BatchResult } from "./_tokenize_batch.ts";
export { type HttpOptions, httpStream } from "./_http.ts";
