#!/usr/bin/env bash
# build.sh — builds the CPU emulator of handcov's CUDA kernels (see README.md beside this file).
#
#   scripts/cuda_emu/build.sh [--asan]      → target/cuda_emu/ (or $EMU_OUT)
#
# The result is one shared library, libhandcov_cuda_emu.so, with the links libcuda.so(.1) and
# libcublasLt.so(.13) pointing at it: put the folder first in LD_LIBRARY_PATH and cudarc loads
# the emulator instead of a driver. --asan builds it with AddressSanitizer (then run with
# LD_PRELOAD of the compiler's libasan.so; run_tests.sh does both).
set -euo pipefail
cd "$(dirname "$0")/../.."
ASAN=0
[[ "${1:-}" == "--asan" ]] && ASAN=1
OUT="${EMU_OUT:-target/cuda_emu}"
[[ $ASAN == 1 ]] && OUT="${OUT}-asan"
EMU=scripts/cuda_emu
for tool in g++ python3; do
    command -v "$tool" >/dev/null || { echo "cuda_emu: $tool is needed to build the emulator" >&2; exit 2; }
done
mkdir -p "$OUT/gen" "$OUT/obj"
python3 "$EMU/gen.py" kernels "$OUT/gen"
FLAGS=(-DHANDCOV_EMU -std=c++17 -O2 -g -fPIC -ffp-contract=off -fno-strict-aliasing -pthread
       -Wall -Wno-unknown-pragmas -Wno-unused-function -Wno-unused-variable -Wno-unused-but-set-variable
       -I "$EMU" -I kernels)
[[ $ASAN == 1 ]] && FLAGS+=(-fsanitize=address -fno-omit-frame-pointer)
SOURCES=("$OUT"/gen/*.cpp "$EMU"/emu_runtime.cpp "$EMU"/emu_driver.cpp "$EMU"/emu_cublaslt.cpp)
printf '%s\n' "${SOURCES[@]}" | xargs -P "$(nproc)" -I{} sh -c \
    'g++ "$@" -c "{}" -o "'"$OUT"'/obj/$(basename "{}" .cpp).o"' _ "${FLAGS[@]}"
g++ "${FLAGS[@]}" -shared -Wl,-soname,libhandcov_cuda_emu.so -o "$OUT/libhandcov_cuda_emu.so" "$OUT"/obj/*.o
# The self-test: its kernels generated like kernels/, linked with the runtime alone.
python3 "$EMU/gen.py" "$EMU/selftest" "$OUT/selftest-gen"
g++ "${FLAGS[@]}" -I "$EMU/selftest" -o "$OUT/selftest" "$EMU/selftest.cpp" "$OUT"/selftest-gen/*.cpp \
    "$EMU/emu_runtime.cpp"
for l in libcuda.so libcuda.so.1 libcublasLt.so libcublasLt.so.13; do
    ln -sf libhandcov_cuda_emu.so "$OUT/$l"
done
echo "cuda_emu: built $OUT/libhandcov_cuda_emu.so"
