#!/usr/bin/env bash
# Prepares what run.sh carries to a machine without network, on one that has it:
# bench/device/deno.gz (this machine's Deno, gzipped) and the Vulkan loader's Debian
# package (libvulkan1, for a machine where ldconfig knows no libvulkan.so.1). Both are
# ignored by git (bench/device/.gitignore); carry them with the tree.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
gzip -9c "$(readlink -f "$(command -v deno)")" >"$here/deno.gz"
echo "wrote $here/deno.gz ($(du -h "$here/deno.gz" | cut -f1))"
if command -v apt-get >/dev/null; then
  (cd "$here" && apt-get download libvulkan1 2>/dev/null) &&
    echo "wrote $(ls "$here"/libvulkan1_*.deb)" ||
    gzip -9c "$(readlink -f /usr/lib/x86_64-linux-gnu/libvulkan.so.1)" >"$here/libvulkan.so.1.gz"
fi
