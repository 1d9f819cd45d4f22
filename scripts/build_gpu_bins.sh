#!/usr/bin/env bash
# build_gpu_bins.sh — build handcov's GPU test binaries HERE (no GPU needed) for scripts/gpu_check.sh.
#
#   scripts/build_gpu_bins.sh            # -> gpubin/ (override with BIN=path)
#
# Builds with the pinned nvcc (NVCC, default ~/.cache/handcov/nvcc-13.0.88/nvidia/cu13/bin/nvcc;
# see README "CUDA kernels") and HANDCOV_REQUIRE_KERNELS=1, asks
# `cargo test --release --no-run --message-format=json` for the test executables and copies them,
# debug info stripped, as tests/<name> (integration tests; the library's and binaries' unit tests
# as lib_<name> / bin_<name>), plus target/release/{infer,bench,train} when they exist, and packs them
# into $BIN/gpubin.tar.xz (every binary embeds all the PTX: ~65 MiB loose, the device tool carries
# 64 MiB at most; PACK=0 leaves them loose in $BIN instead). gpu_check.sh unpacks it.
# BUILD_INFO (beside and inside) records the commit, nvcc, and the paths baked into the test
# binaries (CARGO_MANIFEST_DIR, the target dir), which gpu_check.sh recreates on the GPU machine.
# $BIN is added to .git/info/exclude; send it with the device tool's `carry: ["gpubin"]`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bin="${BIN:-gpubin}"
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
bin="${bin%/}"
case "$bin" in
  "" | / | "$root" | "$HOME" | "$root/target" | "$root/src" | "$root/tests")
    echo "error: BIN=$bin would overwrite something else; pick a fresh folder" >&2; exit 2 ;;
esac

export NVCC="${NVCC:-$HOME/.cache/handcov/nvcc-13.0.88/nvidia/cu13/bin/nvcc}"
export HANDCOV_REQUIRE_KERNELS=1
if [ ! -x "$NVCC" ]; then
  echo "error: nvcc not found at $NVCC; install the pinned one (README \"CUDA kernels\", or run" \
       ".ci/run once) or set NVCC=/path/to/nvcc" >&2
  exit 2
fi
for tool in cargo python3 strip; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not on PATH" >&2; exit 2; }
done

# Keep the folder (and gpu_check.sh's default log folder) out of git.
exclude="$(git rev-parse --git-path info/exclude 2>/dev/null || echo .git/info/exclude)"
patterns=("/gpu_out/")
case "$bin" in "$root"/*) patterns+=("/${bin#"$root"/}/") ;; esac
mkdir -p "$(dirname "$exclude")"
for pattern in "${patterns[@]}"; do
  grep -qxF "$pattern" "$exclude" 2>/dev/null || { echo "$pattern" >> "$exclude"; echo "added $pattern to $exclude"; }
done

echo "== building with NVCC=$NVCC ($("$NVCC" --version | tail -1))"
cargo build --release --bins
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
# Human-readable messages go to stderr; the JSON stream (one object a line) to the file.
cargo test --release --no-run --message-format=json-render-diagnostics > "$json"

target_dir="$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

stage="$bin.staging"
rm -rf "$stage"
mkdir -p "$stage/tests"
# name <tab> executable, for every test-harness executable cargo built
python3 - "$json" > "$stage/.list" <<'EOF'
import json, sys
seen = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test"):
        continue
    t = m["target"]
    kind = t["kind"][0]
    name = t["name"] if kind == "test" else f"{kind}_{t['name']}"
    seen[name] = m["executable"]
for name, exe in sorted(seen.items()):
    print(f"{name}\t{exe}")
EOF
if [ ! -s "$stage/.list" ]; then
  echo "error: cargo reported no test executables" >&2
  exit 1
fi
while IFS=$'\t' read -r name exe; do
  strip --strip-debug -o "$stage/tests/$name" "$exe"
  echo "  tests/$name  <- ${exe#"$root"/}"
done < "$stage/.list"
rm -f "$stage/.list"
for b in infer bench train; do
  if [ -x "$target_dir/release/$b" ]; then
    strip --strip-debug -o "$stage/$b" "$target_dir/release/$b"
    echo "  $b  <- ${target_dir#"$root"/}/release/$b"
  else
    echo "  ($b not built: no target/release/$b; gpu_check.sh skips what needs it)"
  fi
done

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo yes || echo no)"
cat > "$stage/BUILD_INFO" <<EOF
# written by scripts/build_gpu_bins.sh; read by scripts/gpu_check.sh
commit=$commit
dirty=$dirty
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
host=$(hostname)
nvcc=$("$NVCC" --version | tail -1)
arch=${HANDCOV_CUDA_ARCH:-sm_90}
manifest_dir=$root
target_dir=$target_dir
EOF
ntests="$(ls "$stage/tests" | wc -l)"
rm -rf "$bin"
if [ "${PACK:-1}" = 1 ]; then
  # Every binary embeds all the PTX: ~65 MiB loose, ~7 MiB as one xz tarball.
  mkdir -p "$bin"
  tar -C "$stage" -cf - . | xz -T0 -6 > "$bin/gpubin.tar.xz"
  cp "$stage/BUILD_INFO" "$bin/BUILD_INFO"
  rm -rf "$stage"
else
  mv "$stage" "$bin"
fi
size="$(du -sm "$bin" | cut -f1)"
echo "== $bin: $ntests test binaries, ${size} MiB (commit $commit, dirty=$dirty$([ "${PACK:-1}" = 1 ] && echo ', packed as gpubin.tar.xz'))"
if [ "$size" -gt 48 ]; then
  echo "warning: $bin is ${size} MiB; the device tool carries at most 64 MiB with the working tree" >&2
fi
