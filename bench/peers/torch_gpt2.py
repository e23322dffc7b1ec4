#!/usr/bin/env python3
"""PyTorch peer of bench/device/gpu_bench.ts: the same matmul shapes and the same GPT-2
training steps (model, batch shape, optimizer) on the same GPU, so that every figure of
the WebGPU bench can be given as a ratio to PyTorch's, measured in the same run.

Optional and never a dependency: bench/device/run.sh runs it when python3 has torch.
It reads the plan that `gpu_bench.ts --plan FILE` writes (one source of shapes for both)
and writes its figures as JSON for `gpu_bench.ts --peer FILE`.

- Matmul: torch.matmul on the plan's shapes and transposes (transposed operands are
  strided views, as cuBLAS takes them), in fp32 with TF32 off, in TF32, and in bf16.
  TFLOP/s = 2*M*N*K / time (CUDA events, best of --reps after a warm-up).
- Training: GPT-2 as nanoGPT writes it (pre-LayerNorm blocks, tanh GELU, tied lm-head,
  the vocabulary padded to the plan's Vp, scaled_dot_product_attention with is_causal),
  one forward, backward, gradient clipping at 1.0 and an optimizer step per step, fp32
  (TF32 off) or bf16 autocast over fp32 weights. Optimizer: torch.optim.AdamW (fused on
  CUDA) for "adamw"; for "adamw4bit" torchao's AdamW4bit when it is installed, else the
  plain-PyTorch 4-bit AdamW below (Li, Chen and Zhu 2023, as src/optim/lowbit.ts does it:
  m in blocks of 128 on the signed dynamic-exponent map, v rank-1 normalised on the linear
  map without zero, two codes a byte, tensors of at most 4096 elements in fp32), which is
  unfused and so slower than a fused kernel would be.

Usage: python3 bench/peers/torch_gpt2.py --plan plan.json --json torch.json
           [--device cuda|cpu] [--budget-s 150] [--reps 5] [--compile]
"""

import argparse
import json
import math
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # the peer is optional: say so and leave
    print("torch_gpt2.py: no torch in this python: skipping the PyTorch peer", file=sys.stderr)
    sys.exit(3)


# ---------------------------------------------------------------------------
# GPT-2


class Block(nn.Module):
    def __init__(self, C, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, cfg, Vp):
        super().__init__()
        C = cfg["nEmbd"]
        self.wte = nn.Embedding(Vp, C)
        self.wpe = nn.Embedding(cfg["nCtx"], C)
        self.h = nn.ModuleList(Block(C, cfg["nHead"]) for _ in range(cfg["nLayer"]))
        self.ln_f = nn.LayerNorm(C)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied lm-head
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def param_groups(model, weight_decay):
    """Decay on matrices and embeddings, not on biases or LayerNorm (as ours)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------
# 4-bit AdamW in plain PyTorch


def dynamic_map(signed, bits):
    """bitsandbytes' dynamic map, as src/optim/quant_maps.ts builds it."""
    E = bits - 1
    data = []
    for i in range(E):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        scale = 10 ** (-(E - 1) + i)
        for k in range(items - 1):
            lo, hi = 0.1 + 0.9 * k / (items - 1), 0.1 + 0.9 * (k + 1) / (items - 1)
            data.append(scale * (lo + hi) / 2)
            if signed:
                data.append(-scale * (lo + hi) / 2)
    data += [0.0, 1.0]
    data += [0.0] * (2**bits - len(data))
    return sorted(data)


class Quantized:
    """A tensor as 4-bit codes (two a byte) of `qmap`, times a per-block or rank-1 scale."""

    def __init__(self, shape, qmap, rank1, device):
        self.shape, self.qmap, self.rank1 = shape, qmap, rank1
        self.mid = (qmap[1:] + qmap[:-1]) / 2  # nearest code; ties go to the lower code
        self.n = math.prod(shape)
        self.codes = torch.zeros((self.n + 1) // 2, dtype=torch.uint8, device=device)
        self.scale = None

    def get(self):
        c = torch.stack([self.codes & 15, self.codes >> 4], dim=1).view(-1)[: self.n].long()
        x = self.qmap[c]
        if self.scale is None:
            return torch.zeros(self.shape, device=x.device)
        if self.rank1:
            r, col = self.scale
            return x.view(self.shape) * torch.minimum(r[:, None], col[None, :])
        blocks = F.pad(x, (0, (-self.n) % 128)).view(-1, 128) * self.scale[:, None]
        return blocks.view(-1)[: self.n].view(self.shape)

    def set(self, x):
        if self.rank1:
            a = x.abs()
            r, col = a.amax(dim=1).clamp_min(1e-30), a.amax(dim=0).clamp_min(1e-30)
            self.scale = (r, col)
            y = x / torch.minimum(r[:, None], col[None, :])
        else:
            blocks = F.pad(x.reshape(-1), (0, (-self.n) % 128)).view(-1, 128)
            self.scale = blocks.abs().amax(dim=1).clamp_min(1e-30)
            y = (blocks / self.scale[:, None]).view(-1)[: self.n]
        c = torch.bucketize(y.reshape(-1).contiguous(), self.mid).to(torch.uint8)
        c = F.pad(c, (0, self.n % 2))
        self.codes = c[0::2] | (c[1::2] << 4)


class AdamW4bit(torch.optim.Optimizer):
    def __init__(self, params, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.maps = {}

    def _maps(self, device):
        if device not in self.maps:
            m = torch.tensor(dynamic_map(True, 4), device=device)
            v = torch.arange(1, 17, device=device, dtype=torch.float32) / 16
            self.maps[device] = (m, v)
        return self.maps[device]

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["t"] = 0
                    if p.numel() <= 4096:
                        st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    else:
                        mmap, vmap = self._maps(p.device)
                        st["m"] = Quantized(p.shape, mmap, False, p.device)
                        st["v"] = Quantized(p.shape, vmap, p.dim() == 2, p.device)
                st["t"] += 1
                t, grad = st["t"], p.grad.float()
                q = isinstance(st["m"], Quantized)
                m = st["m"].get() if q else st["m"]
                v = st["v"].get() if q else st["v"]
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                p.mul_(1 - g["lr"] * g["weight_decay"])
                denom = (v / (1 - b2**t)).sqrt_().add_(g["eps"])
                p.addcdiv_(m, denom, value=-g["lr"] / (1 - b1**t))
                if q:
                    st["m"].set(m)
                    st["v"].set(v)


def make_optimizer(name, model, lr, fused):
    groups = param_groups(model, 0.1)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused), "torch.optim.AdamW" + (" (fused)" if fused else "")
    if name == "adamw4bit":
        try:
            from torchao.optim import AdamW4bit as AO4bit  # type: ignore

            return AO4bit(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8), "torchao.optim.AdamW4bit"
        except ImportError:
            return AdamW4bit(groups, lr=lr), "plain-PyTorch AdamW4bit (torch_gpt2.py, unfused)"
    raise SystemExit(f"torch_gpt2.py: unknown optimizer {name}")


# ---------------------------------------------------------------------------
# Timing


class Clock:
    """CUDA events on a GPU, the wall clock elsewhere; milliseconds."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def time(self, fn):
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000


def bench_matmul(plan, device, clock, reps, deadline, skipped):
    out = []
    kinds = [("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)]
    for kind, dtype, tf32 in kinds:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for p in plan["products"]:
            if time.monotonic() > deadline:
                skipped.append(f"matmul {kind} {p['label']}")
                continue
            M, N, K = p["M"], p["N"], p["K"]
            a = torch.randn((K, M) if p["transA"] else (M, K), device=device).to(dtype)
            b = torch.randn((N, K) if p["transB"] else (K, N), device=device).to(dtype)
            c = torch.empty((M, N), device=device, dtype=dtype)
            opa, opb = (a.t() if p["transA"] else a), (b.t() if p["transB"] else b)
            run = lambda: torch.matmul(opa, opb, out=c)  # noqa: E731
            clock.time(run)
            ms = min(clock.time(run) for _ in range(reps))
            out.append({"label": p["label"], "dtype": kind, "M": M, "N": N, "K": K, "ms": ms, "tflops": 2 * M * N * K / ms / 1e9})
            del a, b, c
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


def bench_train(plan, device, clock, deadline, skipped, compile_model):
    out = []
    for t in plan["train"]:
        for ours in t["precisions"]:
            precision = "bf16" if ours == "fp16" else "fp32"
            if time.monotonic() > deadline:
                skipped.append(f"train {t['name']} {precision}")
                continue
            print(f"  torch train {t['name']} {precision} B={t['B']} T={t['T']} {t['optimizer']}", file=sys.stderr)
            try:
                torch.manual_seed(1)
                model = GPT(t["config"], t["Vp"]).to(device)
                opt, impl = make_optimizer(t["optimizer"], model, 3e-4, device.type == "cuda")
                fwd = torch.compile(model) if compile_model else model
                B, T, V = t["B"], t["T"], t["config"]["vocabSize"]
                x = torch.randint(0, V, (B, T), device=device)
                y = torch.randint(0, V, (B, T), device=device)
                losses = []

                def step():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        loss = fwd(x, y)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(loss.detach())

                times = []
                for s in range(plan["steps"] + 2):
                    if s >= 3 and time.monotonic() > deadline:
                        break
                    ms = clock.time(step)
                    if s >= 2:
                        times.append(ms)
                ms = statistics.median(times)
                out.append({
                    "model": t["name"],
                    "precision": precision,
                    "optimizer": t["optimizer"],
                    "optimizer_impl": impl,
                    "B": B,
                    "T": T,
                    "steps_timed": len(times),
                    "step_ms": ms,
                    "tokens_per_s": B * T / (ms / 1000),
                    "first_loss": losses[0].item(),
                    "last_loss": losses[-1].item(),
                    "max_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                })
                del model, opt, fwd
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
            except Exception as e:  # noqa: BLE001 — one failing configuration must not sink the rest
                out.append({"model": t["name"], "precision": precision, "error": f"{type(e).__name__}: {e}"})
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", required=True, help="the plan from gpu_bench.ts --plan")
    ap.add_argument("--json", required=True, help="where to write the figures")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget-s", type=float, default=150)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (slower start)")
    a = ap.parse_args(argv)
    with open(a.plan) as f:
        plan = json.load(f)
    device = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    clock = Clock(device)
    start = time.monotonic()
    deadline = start + a.budget_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"== torch {torch.__version__} on {name}", file=sys.stderr)
    skipped = []
    mm = bench_matmul(plan, device, clock, a.reps, start + a.budget_s * 0.3, skipped)
    tr = bench_train(plan, device, clock, deadline, skipped, a.compile)
    doc = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": name,
        "compiled": a.compile,
        "matmul": mm,
        "train": tr,
        "skipped": skipped,
        "elapsed_s": time.monotonic() - start,
    }
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
    for r in mm:
        print(f"  {r['dtype']:5} {r['label']:14} {r['M']}x{r['N']}x{r['K']}: {r['tflops']:.2f} TFLOP/s", file=sys.stderr)
    for r in tr:
        print(f"  {r['model']} {r['precision']}: {r.get('tokens_per_s', r.get('error'))} tokens/s", file=sys.stderr)
    print(f"wrote {a.json} ({doc['elapsed_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
