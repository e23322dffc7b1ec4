#!/usr/bin/env bash
# The GPU bench in one command, for a machine with one NVIDIA H100 or H200, PyTorch in
# python3, no network and an 8-minute budget:
#
#   bash bench/device/run.sh [--tiny] [--out FILE] [--no-peer] [--budget-s 470]
#                            [--backends deno,dawn]
#
# 1. Deno: bench/device/deno.gz (a gzipped Deno binary carried beside this script; make it
#    with bash bench/device/pack.sh), else `deno` on the PATH.
# 2. The Vulkan loader when ldconfig knows none: bench/device/*.deb (libvulkan1, from
#    pack.sh) or bench/device/libvulkan.so.1.gz, unpacked under a temporary directory.
# 3. NVIDIA's Vulkan driver manifest (VK_DRIVER_FILES) from where containers mount it.
# 4. The plan (shapes and models, one source for both benches), then the PyTorch peer
#    (bench/peers/torch_gpt2.py, skipped without torch), then the WebGPU bench, which
#    prints the adapter and its features, the autotuner's choices, matmul TFLOP/s for
#    GPT-2's shapes in f32 and f16, and tokens/s and MFU for gpt2 (B=8, T=1024, fp32 and
#    fp16) and gpt2-medium-4096 (B=1, T=4096, adamw4bit), each as a ratio to PyTorch's.
# 5. One JSON file per backend: --out (default $OUT/bench_device.json when OUT is set, else
#    ./bench_device.json) for Deno's own WebGPU, the same name with _dawn for Dawn
#    (npm:webgpu, from bench/device/dawn_npm.tgz carried by pack.sh where there is no
#    network). The backends share what is left of the budget after the peer, Deno's first.
#    Each file is rewritten after every figure, so a cut-short run keeps what it measured.
# 6. The workgroup reductions, tree against subgroups (deno task bench reduce), on Deno's own
#    WebGPU, in the last 45 s: the same name with _reduce.
#
# --tiny runs small shapes and models on whatever adapter there is (lavapipe included):
# the end-to-end check this script has had. It has not yet been timed on a GPU.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tiny="" peer=1 budget=470 out="${OUT:+$OUT/}bench_device.json" backends=deno,dawn
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny=--tiny ;;
    --no-peer) peer=0 ;;
    --out) out=$2; shift ;;
    --budget-s) budget=$2; shift ;;
    --backends) backends=$2; shift ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
work=$(mktemp -d /tmp/webgpu-gpt2-bench.XXXXXX)
say() { echo "[run.sh ${SECONDS}s] $*" >&2; }

# ---- 1. Deno
if [ -f "$here/deno.gz" ]; then
  gunzip -c "$here/deno.gz" >"$work/deno" && chmod +x "$work/deno" && deno="$work/deno"
elif command -v deno >/dev/null; then
  deno=$(command -v deno)
else
  echo "run.sh: no Deno: put a gzipped Deno binary at bench/device/deno.gz (bash bench/device/pack.sh)" >&2
  exit 2
fi
say "deno: $("$deno" --version | head -1)"

# ---- 2. the Vulkan loader
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  lib="$work/root/usr/lib/x86_64-linux-gnu"
  mkdir -p "$lib"
  for deb in "$here"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" "$work/root"; done
  [ -f "$here/libvulkan.so.1.gz" ] && gunzip -c "$here/libvulkan.so.1.gz" >"$lib/libvulkan.so.1"
  if ls "$lib"/libvulkan.so.1* >/dev/null 2>&1; then
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "vulkan loader: unpacked into $lib"
  else
    say "no Vulkan loader on this machine and none carried (bench/device/*.deb from pack.sh)"
  fi
fi

# ---- 3. NVIDIA's Vulkan driver (containers mount it under /usr/local/nvidia)
if [ -z "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ]; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
    /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
    /usr/share/vulkan/icd.d/nvidia_icd.x86_64.json; do
    if [ -f "$f" ]; then
      export VK_DRIVER_FILES="$f" VK_ICD_FILENAMES="$f"
      break
    fi
  done
  say "vulkan driver: ${VK_DRIVER_FILES:-none found (the adapter may be a CPU one)}"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$work/xdg}" && mkdir -p "$XDG_RUNTIME_DIR"
export WEBGPU_GPT2_TUNE_CACHE="${WEBGPU_GPT2_TUNE_CACHE:-$work/autotune.json}"
command -v nvidia-smi >/dev/null && nvidia-smi -L >&2

drun() { "$deno" run -A --no-lock "$root/bench/device/gpu_bench.ts" "$@"; }

# ---- 4. the plan, the peer, the bench
drun $tiny --plan "$work/plan.json" >&2 || exit 1
peer_args=()
py=${PYTHON:-python3}
if [ "$peer" = 1 ] && "$py" -c "import torch" 2>/dev/null; then
  peer_s=$((budget * 30 / 100))
  say "PyTorch peer (${peer_s}s budget)"
  PYTHONUNBUFFERED=1 timeout $((peer_s + 60)) "$py" "$root/bench/peers/torch_gpt2.py" \
    --plan "$work/plan.json" --json "$work/torch.json" --budget-s "$peer_s" >&2 ||
    say "the PyTorch peer failed or ran out of time: figures without ratios"
  [ -f "$work/torch.json" ] && peer_args=(--peer "$work/torch.json")
else
  say "no PyTorch peer (${py} has no torch, or --no-peer)"
fi
# Dawn's package (npm:webgpu) into Deno's npm cache where pack.sh carried it.
if [ -f "$here/dawn_npm.tgz" ]; then
  npm_cache="${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deno}/npm/registry.npmjs.org"
  mkdir -p "$npm_cache" && tar xzf "$here/dawn_npm.tgz" -C "$npm_cache" &&
    say "dawn: npm:webgpu unpacked into $npm_cache"
fi
IFS=, read -r -a todo <<<"$backends"
rc=0
for i in "${!todo[@]}"; do
  b=${todo[$i]}
  file=$out
  [ "$b" = deno ] || file="${out%.json}_$b.json"
  left=$(((budget - 45 - SECONDS) / (${#todo[@]} - i)))
  say "WebGPU bench on $b (${left}s)"
  WEBGPU_GPT2_BACKEND=$b timeout "$left" "$deno" run -A --no-lock "$root/bench/device/gpu_bench.ts" \
    $tiny "${peer_args[@]}" --json "$file" --budget-s $((left - 60))
  r=$?
  [ $r = 124 ] && say "the $b bench ran out of time; $file holds what it measured"
  [ $r != 0 ] && rc=$r
  say "$b done: $file (rc $r)"
done
say "reductions, tree against subgroups"
quick=""
[ -n "$tiny" ] && quick=--quick
timeout 45 "$deno" run -A --no-lock "$root/tasks/bench.ts" reduce $quick \
  --json "${out%.json}_reduce.json" || say "the reductions bench failed or ran out of time"
exit $rc
