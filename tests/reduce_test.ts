// The workgroup reductions' two forms (src/model/ops/reduce.ts): the device check of the
// subgroup form and a wrong form it refuses, how the form is chosen, the gradient norm's
// partial sums in each form, and a model whose every reduction takes subgroups against the tree.
import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { runDispatches } from "../src/gpu/dispatch.ts";
import { readValues } from "../src/gpu/runtime.ts";
import { GPT2 } from "../src/model/gpt2.ts";
import {
  checkSubgroupReductions,
  defineReducing,
  REDUCE_SOURCES,
  reduceForm,
  setReduceForm,
} from "../src/model/ops/reduce.ts";
import { gradNormDispatches, gradNormPartials } from "../src/train/grad_norm.ts";
import { assertAllClose, gpuTest, randn, rng } from "./_harness.ts";

gpuTest(
  "the subgroup reductions are checked on the device; a wrong form is refused",
  async (rt) => {
    if (!rt.gpu.features.subgroups) throw new Error(`${rt.gpu.name} grants no subgroups`);
    equal(await checkSubgroupReductions(rt), undefined);
    const right = REDUCE_SOURCES.subgroup;
    // Only the first subgroup's slot read: the sum of 8 lanes of 64 on lavapipe (all of them
    // where a subgroup is 64 wide: there the max of the lanes' indices is the one still right).
    const firstOnly = right.replaceAll("i < l.nsg", "i < 1u");
    // Every lane posting at its subgroup's slot at once.
    const racy = right.replace(
      "if (l.sid == subgroupMin(l.sid)) { wg_red[l.sg] = v; }",
      "wg_red[l.sg] = v + 1.0;",
    );
    // A max that sums.
    const maxSums = right.replace("wg_post(subgroupMax(v), l);", "wg_post(subgroupAdd(v), l);");
    for (const wrong of [firstOnly, racy, maxSums]) {
      ok(wrong !== right);
      match(
        (await checkSubgroupReductions(rt, wrong)) ?? "",
        /differs from float64 on 3 rows of 200: worst sum\|max\|count\|last\[\d+\]/,
      );
    }
  },
);

gpuTest(
  "the reduction form: the option, else the device's setting, else its default",
  async (rt) => {
    const start = await reduceForm(rt);
    // CPU adapters (lavapipe) keep the tree: its subgroups only add work there.
    if (rt.gpu.isCpu) equal(start, "tree");
    try {
      equal(await reduceForm(rt, { subgroups: false }), "tree");
      if (rt.gpu.features.subgroups) {
        equal(await reduceForm(rt, { subgroups: true }), "subgroup");
        setReduceForm(rt, "subgroup");
        equal(await reduceForm(rt), "subgroup");
        equal(await reduceForm(rt, { subgroups: false }), "tree");
      }
      setReduceForm(rt, "tree");
      equal(await reduceForm(rt), "tree");
      setReduceForm(rt, undefined);
      equal(await reduceForm(rt), start);
    } finally {
      setReduceForm(rt, undefined);
    }
  },
);

Deno.test("defineReducing declares a kernel in both forms, the subgroup one apart", () => {
  const k = defineReducing({
    name: "rowsum",
    source:
      "const WG = 64u;\n@compute @workgroup_size(64) fn main(l: Lane) { out[0] = wg_sum(1.0, l); }",
    bindings: { out: { access: "read_write", type: "f32" } },
    entryPoints: { main: { bindings: ["out"], loopBound: () => 64 } },
  });
  equal(k.tree.decl.name, "rowsum");
  equal(k.subgroup.decl.name, "rowsum_sg");
  equal(k.subgroup.decl.entryPoints.main.label, "rowsum_main_sg");
  // The form after the kernel's text: its lines keep their numbers in compile errors.
  ok(k.tree.decl.source.endsWith(REDUCE_SOURCES.tree));
  ok(k.subgroup.decl.source.endsWith(REDUCE_SOURCES.subgroup));
  ok(k.tree.decl.source.startsWith("const WG = 64u;"));
  equal(k.subgroup.decl.file, "rowsum.wgsl");
});

gpuTest("a compile error in a reducing kernel names its own file and line, in either form", async (
  rt,
) => {
  const k = defineReducing({
    name: "rowsum_wrong",
    source: "const WG = 64u;\n@compute @workgroup_size(64) fn main(l: Lane) {\n" +
      "  out[0] = wg_sum(undefined_name, l);\n}",
    bindings: { out: { access: "read_write", type: "f32" } },
    entryPoints: { main: { bindings: ["out"], loopBound: () => 64 } },
  });
  const out = rt.arena.alloc("out", "scratch", 16);
  try {
    for (
      const form of rt.gpu.features.subgroups ? ["tree", "subgroup"] as const : ["tree"] as const
    ) {
      await rejects(
        k[form].dispatch(rt, "main", { buffers: { out }, workgroups: [1, 1, 1] }),
        /rowsum_wrong\.wgsl:3:/,
      );
    }
  } finally {
    rt.arena.free(out);
  }
});

// The gradient norm's partial sums in each form at awkward sizes: ranges that end inside a
// block, a NaN and an Inf counted and left out; the two forms agree with float64 and nearly
// with each other (only the order of a block's sum differs).
gpuTest("the gradient norm's partial sums in either reduction form match float64", async (rt) => {
  if (!rt.gpu.features.subgroups) throw new Error(`${rt.gpu.name} grants no subgroups`);
  const n = 3 * 4096 + 1234;
  const ranges = [{ offset: 0, size: 5056 }, { offset: 5056, size: n - 5056 }]; // 256-byte aligned
  const x = randn(n, 7, 3);
  [x[17], x[9000]] = [NaN, -Infinity];
  let sum = 0;
  for (const v of x) if (Number.isFinite(v)) sum += v * v;
  const grads = rt.arena.allocWith("grads", "scratch", x);
  const partials = rt.arena.alloc("partials", "scratch", gradNormPartials(ranges) * 4);
  const stats = rt.arena.alloc("stats", "scratch", 16);
  try {
    const norms: number[] = [];
    for (const subgroups of [false, true]) {
      const d = await gradNormDispatches(rt, ranges, grads, partials, stats, { subgroups });
      equal(d[0].pipeline.label, subgroups ? "grad_norm_partial_sg" : "grad_norm_partial");
      await runDispatches(rt.device, d);
      const s = await readValues(rt.device, stats);
      assertAllClose([s[1]], [Math.sqrt(sum)], { rtol: 1e-6, atol: 0, label: `norm ${subgroups}` });
      equal(s[2], 2, "non-finite elements counted");
      norms.push(s[1]);
    }
    assertAllClose([norms[1]], [norms[0]], { rtol: 1e-6, atol: 0, label: "the forms" });
  } finally {
    for (const g of [grads, partials, stats]) rt.arena.free(g);
  }
});

// A 2-layer model built with every reduction in the subgroup form (the classifier's softmax,
// LayerNorm's rows) against one built with the tree: the same loss and gradients to f32 rounding.
gpuTest("a model with subgroup reductions gives the tree's loss and gradients", async (rt) => {
  if (!rt.gpu.features.subgroups) throw new Error(`${rt.gpu.name} grants no subgroups`);
  const cfg = { nLayer: 2, nHead: 2, nEmbd: 64, nCtx: 64, vocabSize: 300 };
  const B = 2, T = 32, u = rng(5);
  const tokens = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
  const targets = Array.from({ length: B * T }, () => Math.floor(u() * cfg.vocabSize));
  const get = rt.pipelines.get;
  const run = async (form: "tree" | "subgroup") => {
    setReduceForm(rt, form);
    const names = new Set<string>(); // the kernels the model's dispatches were built from
    rt.pipelines.get = (kernel, constants) => {
      names.add(kernel.name);
      return get.call(rt.pipelines, kernel, constants);
    };
    const model = await GPT2.create(rt, cfg, { B, T, seed: 9 });
    try {
      const loss = await model.forwardBackward(tokens, targets);
      const grads = new Map<string, Float32Array>();
      for (const t of model.layout.tensors) grads.set(t.name, await model.readTensor(t.name, true));
      return { loss, grads, names };
    } finally {
      model.destroy();
      setReduceForm(rt, undefined);
      rt.pipelines.get = get;
    }
  };
  const tree = await run("tree"), sg = await run("subgroup");
  for (const k of ["classifier", "layernorm_forward", "layernorm_backward_input"]) {
    ok(tree.names.has(k), `the tree's model built ${k}`);
  }
  for (const k of ["classifier_sg", "layernorm_rows_forward", "layernorm_rows_backward_input"]) {
    ok(sg.names.has(k), `the subgroup model built ${k}: ${[...sg.names]}`);
  }
  ok(Math.abs(sg.loss - tree.loss) <= 1e-6 * tree.loss, `loss ${sg.loss} vs ${tree.loss}`);
  deepEqual([...sg.grads.keys()], [...tree.grads.keys()]);
  for (const [name, g] of tree.grads) {
    assertAllClose(sg.grads.get(name)!, g, { rtol: 1e-4, atol: 1e-6, label: name });
  }
});
