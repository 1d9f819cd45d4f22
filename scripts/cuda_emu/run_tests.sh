#!/usr/bin/env bash
# run_tests.sh — the GPU tests (the #[ignore]d tests/cuda_*.rs) on the CPU emulator.
#
#   scripts/cuda_emu/run_tests.sh [--asan] [--order forward|reverse|random] [-- TEST ARGS...]
#
# Builds the emulator (build.sh) and the test binaries with the kernels' PTX embedded (nvcc is
# required: the emulator runs kernels/*.cu compiled for the host, and checks that every kernel
# of each PTX module cudarc loads is one it has), runs the emulator's self-test, then every
# tests/cuda_*.rs binary with `--ignored --skip hamer` (the full-size model would take hours
# here) plus TEST ARGS, each under EMU_TEST_TIMEOUT_S (900) seconds. --asan runs the tests with
# the emulator built under AddressSanitizer (out-of-bounds and use-after-free accesses in the
# kernels, global or shared memory); --order sets the order a block's threads are scheduled in
# (HANDCOV_EMU_ORDER; a kernel whose result changes with it has a race).
# Exit status 0 when the self-test and every test passed.
set -u -o pipefail
cd "$(dirname "$0")/../.."
ASAN=0
ORDER=forward
while [[ $# -gt 0 ]]; do
    case "$1" in
        --asan) ASAN=1; shift ;;
        --order) ORDER="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "run_tests.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if ! command -v "${NVCC:-nvcc}" >/dev/null && [[ -z "${CUDA_HOME:-}" ]]; then
    echo "run_tests.sh: nvcc not found (set NVCC or put it on PATH; see README)" >&2
    exit 2
fi
OUT="${EMU_OUT:-target/cuda_emu}"
if [[ $ASAN == 1 ]]; then
    bash scripts/cuda_emu/build.sh --asan || exit 1
    OUT="${OUT}-asan"
else
    bash scripts/cuda_emu/build.sh || exit 1
fi
if [[ $ASAN == 1 ]]; then
    # allocator_may_return_null: the out-of-memory test asks for more than the host has.
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
    "$OUT/selftest" || exit 1
    # And the sanitizer is live: a kernel writing past a shared array must be stopped.
    report=$("$OUT/selftest" --oob 2>&1)
    if grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" <<< "$report"; then
        echo "ok   a shared-memory overrun is stopped by AddressSanitizer"
    else
        echo "FAIL a shared-memory overrun went unnoticed under --asan"
        exit 1
    fi
else
    "$OUT/selftest" || exit 1
fi

TESTS=()
for t in tests/cuda_*.rs; do TESTS+=(--test "$(basename "$t" .rs)"); done
BINS=$(HANDCOV_REQUIRE_KERNELS=1 cargo test --release "${TESTS[@]}" --no-run --message-format=json \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])') || exit 1

ENV=(LD_LIBRARY_PATH="$PWD/$OUT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" HANDCOV_EMU_ORDER="$ORDER")
if [[ $ASAN == 1 ]]; then
    ENV+=(LD_PRELOAD="$(g++ -print-file-name=libasan.so)")
fi
status=0
for bin in $BINS; do
    name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
    start=$(date +%s)
    env "${ENV[@]}" timeout "${EMU_TEST_TIMEOUT_S:-900}" "$bin" --ignored --skip hamer "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    summary=$(grep -E "^test result" "$OUT/$name.log" | tail -1)
    echo "$name: rc=$rc $(( $(date +%s) - start )) s  ${summary:-no result (see $OUT/$name.log)}"
    if [[ $rc != 0 ]]; then
        status=1
        grep -E "^test .* FAILED|panicked|cuda_emu:|ERROR: AddressSanitizer" "$OUT/$name.log" | head -20
    fi
done
exit $status
