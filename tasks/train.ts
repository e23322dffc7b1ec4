/**
 * `deno task train`: not built yet (tracked by issue 4). It exits with an
 * error instead of pretending to work.
 *
 * @module
 */

if (import.meta.main) {
  console.error(
    "deno task train is not implemented yet: it arrives with issue 4; " +
      "until then see README.md for what works",
  );
  Deno.exit(1);
}
