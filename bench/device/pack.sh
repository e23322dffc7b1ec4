#!/usr/bin/env bash
# Prepares what run.sh carries to a machine without network, on one that has it:
# bench/device/deno.gz (this machine's Deno, gzipped), the Vulkan loader's Debian
# package (libvulkan1, for a machine where ldconfig knows no libvulkan.so.1) and
# bench/device/dawn_npm.tgz (npm:webgpu for Linux x64 from Deno's npm cache, for
# --backend dawn). All are ignored by git (bench/device/.gitignore); carry them with the tree.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
gzip -9c "$(readlink -f "$(command -v deno)")" >"$here/deno.gz"
echo "wrote $here/deno.gz ($(du -h "$here/deno.gz" | cut -f1))"
if command -v apt-get >/dev/null; then
  (cd "$here" && apt-get download libvulkan1 2>/dev/null) &&
    echo "wrote $(ls "$here"/libvulkan1_*.deb)" ||
    gzip -9c "$(readlink -f /usr/lib/x86_64-linux-gnu/libvulkan.so.1)" >"$here/libvulkan.so.1.gz"
fi
npm_cache="${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/deno}/npm/registry.npmjs.org"
deno eval 'await import("npm:webgpu@0.6.2")' >/dev/null 2>&1 || true # into the cache
if [ -d "$npm_cache/webgpu/0.6.2" ]; then
  tar czf "$here/dawn_npm.tgz" -C "$npm_cache" --exclude='webgpu/0.6.2/dist/darwin-*' \
    --exclude='webgpu/0.6.2/dist/win32-*' --exclude='webgpu/0.6.2/dist/linux-arm64' webgpu
  echo "wrote $here/dawn_npm.tgz ($(du -h "$here/dawn_npm.tgz" | cut -f1))"
fi
