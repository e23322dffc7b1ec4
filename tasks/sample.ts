/**
 * `deno task sample`: not built yet (tracked by issue 8). It exits with an
 * error instead of pretending to work.
 *
 * @module
 */

if (import.meta.main) {
  console.error(
    "deno task sample is not implemented yet: it arrives with issue 8; " +
      "until then see README.md for what works",
  );
  Deno.exit(1);
}
