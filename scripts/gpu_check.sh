#!/usr/bin/env bash
# gpu_check.sh — the one script to run on the GPU machine (DESIGN.md "Working with the GPU").
#
# Runs from the repository root in ONE device call, on binaries built beforehand on a machine
# without a GPU by scripts/build_gpu_bins.sh (the GPU machine has no internet and no cargo cache;
# $BIN/gpubin.tar.xz is unpacked into a scratch folder, loose binaries in $BIN work too):
#
#   scripts/build_gpu_bins.sh                                   # here: -> gpubin/
#   device run:  command="bash scripts/gpu_check.sh"  carry=["gpubin"]  timeout_s=600
#
# Steps (STEPS, comma list, default all, in this order):
#   env        nvidia-smi, driver, libraries (LD_LIBRARY_PATH gets the folder of libcublasLt.so.13
#              when the loader does not find it: /usr/local/cuda*/lib64, python's nvidia wheels)
#   tests      every $BIN/tests/* with $TEST_ARGS (default --ignored --test-threads=1); pass/fail
#              per test
#   sanitizer  compute-sanitizer --tool memcheck, then --tool racecheck, on the test binaries that
#              ran a test, with $SANITIZER_TEST_ARGS (default: $TEST_ARGS --skip hamer: the
#              full-size tests would take minutes under the sanitizer; the tiny ones run the same
#              kernels); at most SANITIZER_BUDGET_S (150) seconds in all, SANITIZER_TIMEOUT_S (90)
#              per run; skipped with a note when compute-sanitizer is not found
#   bench      $BIN/bench --json $OUT/handcov_bench.jsonl $BENCH_ARGS (when $BIN/bench exists;
#              at most BENCH_TIMEOUT_S, 150)
#   torch_train  python3 tests/reference/bench_train_torch.py $TORCH_TRAIN_ARGS: the PyTorch
#              training step (hamer + ours, batch 64, fp16 AMP / bf16 / fp32) and the exact-NLL
#              Cholesky baseline; at most TORCH_TRAIN_TIMEOUT_S (150), its --budget-s set so it
#              stops starting measurements in time. Its rows (kind "train" / "nll") go into
#              $OUT/torch_bench.jsonl (8-file limit): written first, the torch step appends
#   torch      python3 tests/reference/bench_gpu_torch.py --out $OUT/torch_bench.jsonl $TORCH_ARGS
#              (--append when torch_train wrote the file in this run)
#   compare    tests/reference/compare_bench.py on the two JSONL files (inference, training and
#              NLL tables; handcov's train / nll rows come from its bench in handcov_bench.jsonl)
#   demo       (not in the default list: run it alone, STEPS=env,demo, since $OUT holds 8 files)
#              $BIN/train with no arguments, the README's first command, on the GPU: generates
#              the synthetic set in scratch space, trains its default GPU steps, evaluates; its
#              log and table in $OUT/demo.log, at most DEMO_TIMEOUT_S (540) seconds
# then prints a short summary (tests, sanitizer errors, the comparison table), last.
#
# Environment: BIN (gpubin), OUT (./gpu_out; the device tool sets it), STEPS, BUDGET_S (560: the
# whole run's seconds; each step is cut to what is left, and the torch bench, which gets all that
# remains, stops starting new measurements in time and records the rest as skipped),
# TEST_ARGS, TEST_TIMEOUT_S (300 per binary), SANITIZER_*, BENCH_ARGS, BENCH_TIMEOUT_S,
# TORCH_ARGS (e.g. "--batch 1,16 --modes eager_bf16" or "--load-weights FILE"),
# TORCH_TRAIN_ARGS (e.g. "--modes amp_fp16 --steps 30" or "--no-nll"), TORCH_TRAIN_TIMEOUT_S.
# torch.compile takes minutes per batch size: if its rows come back skipped, run the torch part
# alone in a second call (STEPS=env,torch,compare) and give compare_bench.py the JSONL files of
# both calls (later rows replace skipped ones).
# A failing step never stops the script. Exit status: 0 when every test passed and the sanitizer
# found nothing, 1 otherwise (a failed, crashed or timed-out test binary, sanitizer errors, or no
# test binaries at all when the tests step was asked for).
#
# $OUT receives at most 8 files (what the device tool brings back): env.txt, tests.log,
# sanitizer.log, bench.log, handcov_bench.jsonl, torch_bench.jsonl, compare.md, summary.md
# (demo.log instead of most of them when the demo step runs alone).

set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
BIN="${BIN:-gpubin}"
OUT="${OUT:-$ROOT/gpu_out}"
STEPS="${STEPS:-env,tests,sanitizer,bench,torch_train,torch,compare}"
BUDGET_S="${BUDGET_S:-560}"
TEST_ARGS="${TEST_ARGS:---ignored --test-threads=1}"
TEST_TIMEOUT_S="${TEST_TIMEOUT_S:-300}"
SANITIZER_BUDGET_S="${SANITIZER_BUDGET_S:-150}"
SANITIZER_TIMEOUT_S="${SANITIZER_TIMEOUT_S:-90}"
SANITIZER_ARGS="${SANITIZER_ARGS:-}"
SANITIZER_TEST_ARGS="${SANITIZER_TEST_ARGS:-$TEST_ARGS --skip hamer}"
BENCH_TIMEOUT_S="${BENCH_TIMEOUT_S:-150}"
BENCH_ARGS="${BENCH_ARGS:-}"
TORCH_ARGS="${TORCH_ARGS:-}"
TORCH_TRAIN_TIMEOUT_S="${TORCH_TRAIN_TIMEOUT_S:-150}"
TORCH_TRAIN_ARGS="${TORCH_TRAIN_ARGS:-}"
DEMO_TIMEOUT_S="${DEMO_TIMEOUT_S:-540}"
DEMO_ARGS="${DEMO_ARGS:-}"
export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"                    # scratch that must not land in $OUT (8-file limit)
trap 'rm -rf "$WORK"' EXIT
: > "$WORK/results.tsv"               # binary <tab> test <tab> ok|FAILED|CRASHED|TIMEOUT
: > "$WORK/ran_bins"                   # test binaries that ran at least one test
SUMMARY="$WORK/summary"
: > "$SUMMARY"

has_step() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
left() { echo $((BUDGET_S - SECONDS)); }
# seconds for a step: its cap, cut to what the budget has left (at least 10)
cap() { local l; l=$(( $(left) - ${2:-15} )); [ "$l" -lt "$1" ] && echo $(( l > 10 ? l : 10 )) || echo "$1"; }
say() { echo "$*"; }
note() { echo "$*" >> "$SUMMARY"; }
banner() { echo; echo "==== [$SECONDS s] $*"; }
count_rows() {   # $1 = file, $2 = optional fixed string: lines (containing it)
  local n
  if [ -n "${2:-}" ]; then n="$(grep -cF -- "$2" "$1" 2>/dev/null)"; else n="$(grep -c . "$1" 2>/dev/null)"; fi
  echo "${n:-0}"
}

# ---------------------------------------------------------------------------------------------
# libraries: make libcublasLt.so.13 (and libnvrtc.so.13) findable
# ---------------------------------------------------------------------------------------------
loader_finds() {   # $1 = soname
  ldconfig -p 2>/dev/null | grep -q "[[:space:]]$1 " && return 0
  local d
  IFS=: read -r -a dirs <<< "${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do [ -n "$d" ] && [ -e "$d/$1" ] && return 0; done
  return 1
}
lib_dirs() {       # $1 = soname: candidate folders that hold it
  local d
  for d in /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /usr/local/nvidia/lib64 \
           /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/$1" ] && echo "$d"
  done
  python3 - "$1" 2>/dev/null <<'EOF'
import glob, os, sys
name = sys.argv[1]
roots = []
try:
    import nvidia.cublas as c                      # the older wheel layout
    roots.append(os.path.join(os.path.dirname(c.__file__), "lib"))
except Exception:
    pass
try:
    import nvidia                                  # cu13 wheels: nvidia/cu13/lib
    for d in nvidia.__path__:
        roots += glob.glob(os.path.join(d, "*", "lib")) + glob.glob(os.path.join(d, "*", "*", "lib"))
except Exception:
    pass
for r in roots:
    if os.path.exists(os.path.join(r, name)):
        print(r)
EOF
}
setup_libs() {
  local so d
  for so in libcublasLt.so.13 libnvrtc.so.13; do
    if loader_finds "$so"; then
      say "library $so: found by the loader"
      continue
    fi
    d="$(lib_dirs "$so" | head -1)"
    if [ -n "$d" ]; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      say "library $so: not on the loader's path; added $d to LD_LIBRARY_PATH"
    else
      say "library $so: NOT FOUND (GEMM tests will fail)"
      note "- $so not found anywhere"
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# the paths baked into the test binaries (CARGO_MANIFEST_DIR, CARGO_TARGET_TMPDIR, infer's path)
# ---------------------------------------------------------------------------------------------
build_info() { sed -n "s/^$1=//p" "$BIN/BUILD_INFO" 2>/dev/null | head -1; }
fix_paths() {
  local mdir tdir
  mdir="$(build_info manifest_dir)"
  tdir="$(build_info target_dir)"
  if [ -z "$mdir" ]; then
    say "no $BIN/BUILD_INFO: tests that read fixtures may not find them"
    return
  fi
  if [ ! -e "$mdir" ]; then
    mkdir -p "$(dirname "$mdir")" && ln -s "$ROOT" "$mdir" &&
      say "linked $mdir -> $ROOT (the tests' CARGO_MANIFEST_DIR)"
  elif [ ! "$mdir" -ef "$ROOT" ]; then
    say "warning: $mdir exists and is not this checkout; tests read their fixtures there"
  fi
  [ -n "$tdir" ] || return
  mkdir -p "$tdir/tmp" "$tdir/release" 2>/dev/null || true
  # the cli tests run $tdir/release/infer: put ours there (on the build host itself, only when
  # missing, so that a developer's own build is never replaced)
  local here=0
  [ "$(build_info host)" = "$(hostname)" ] && here=1
  for b in infer bench; do
    [ -x "$BIN/$b" ] || continue
    if [ ! -e "$tdir/release/$b" ] || { [ "$here" = 0 ] && ! cmp -s "$BIN/$b" "$tdir/release/$b"; }; then
      cp "$BIN/$b" "$tdir/release/$b" && say "copied $b to $tdir/release/$b"
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------
step_env() {
  banner "env"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   host: $(hostname)   root: $ROOT"
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 || echo "nvidia-smi failed or is missing"
    echo "--- driver / GPU"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
      --format=csv 2>&1 || true
    echo "--- build ($BIN/BUILD_INFO)"
    cat "$BIN/BUILD_INFO" 2>/dev/null || echo "(none)"
    echo "--- libraries"
    cat "$WORK/libs.txt"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "--- tools"
    echo "compute-sanitizer: ${CS:-not found}"
    python3 -c "import torch; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1
  } 2>&1 | tee "$OUT/env.txt"
  GPU="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
}

step_tests() {
  banner "tests ($TEST_ARGS)"
  local log="$OUT/tests.log" b name rc t
  : > "$log"
  shopt -s nullglob
  local bins=("$BIN"/tests/*)
  if [ "${#bins[@]}" -eq 0 ]; then
    say "no test binaries in $BIN/tests (run scripts/build_gpu_bins.sh and carry $BIN)"
    note "- tests: NO TEST BINARIES in $BIN/tests"
    NO_TESTS=1
    return
  fi
  for b in "${bins[@]}"; do
    [ -x "$b" ] || continue
    name="$(basename "$b")"
    t="$(cap "$TEST_TIMEOUT_S" 60)"
    echo "---- $name (timeout ${t}s)" | tee -a "$log"
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$t" "$b" $TEST_ARGS > "$WORK/out" 2>&1
    rc=$?
    cat "$WORK/out" >> "$log"
    grep -E '^test .* \.\.\. |^test result:|panicked|error' "$WORK/out" | head -40
    sed -nE 's/^test (.+) \.\.\. (ok|FAILED)$/\1\t\2/p' "$WORK/out" |
      sed "s/^/$name\t/" >> "$WORK/results.tsv"
    local why=""
    if ! grep -q '^test result:' "$WORK/out"; then
      why=CRASHED
      [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why=TIMEOUT
      printf '%s\t(binary, rc=%s)\t%s\n' "$name" "$rc" "$why" >> "$WORK/results.tsv"
      echo "$name: $why (rc=$rc)" | tee -a "$log"
    fi
    # the sanitizer reruns binaries that ran a test, unless they ran out of time here
    if [ "$why" != TIMEOUT ] && grep -qE '^test .+ \.\.\. (ok|FAILED)$' "$WORK/out"; then
      echo "$name" >> "$WORK/ran_bins"
    fi
  done
  {
    echo
    echo "==== per-test results (binary, test, result)"
    cat "$WORK/results.tsv"
  } >> "$log"
}

find_sanitizer() {
  CS="$(command -v compute-sanitizer 2>/dev/null || true)"
  if [ -z "$CS" ]; then
    local c
    for c in /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer \
             /usr/local/cuda*/compute-sanitizer/compute-sanitizer; do
      [ -x "$c" ] && CS="$c"
    done
  fi
}

step_sanitizer() {
  banner "compute-sanitizer"
  local log="$OUT/sanitizer.log" b name tool t rc n
  : > "$log"
  if [ -z "$CS" ]; then
    say "compute-sanitizer not found (PATH, /usr/local/cuda*/bin): skipped"
    note "- sanitizer: skipped (compute-sanitizer not found)"
    SAN_SKIPPED=1
    return
  fi
  local bins=()
  if [ -s "$WORK/ran_bins" ]; then
    while read -r name; do bins+=("$BIN/tests/$name"); done < "$WORK/ran_bins"
  elif ! has_step tests; then
    shopt -s nullglob; bins=("$BIN"/tests/*)
  fi
  if [ "${#bins[@]}" -eq 0 ]; then
    say "no test binary ran a test: nothing to sanitize"
    note "- sanitizer: nothing to run (no test binary ran a test)"
    return
  fi
  local end=$((SECONDS + SANITIZER_BUDGET_S)) skipped=0
  for tool in memcheck racecheck; do
    for b in "${bins[@]}"; do
      name="$(basename "$b")"
      if [ $((end - SECONDS)) -lt 10 ]; then skipped=$((skipped + 1)); continue; fi
      t="$(cap "$SANITIZER_TIMEOUT_S" 120)"
      [ $((end - SECONDS)) -lt "$t" ] && t=$((end - SECONDS))
      echo "---- $tool $name $SANITIZER_TEST_ARGS (timeout ${t}s)" >> "$log"
      # shellcheck disable=SC2086
      timeout --kill-after=10 "$t" "$CS" --tool "$tool" --print-limit 50 $SANITIZER_ARGS \
        "$b" $SANITIZER_TEST_ARGS > "$WORK/out" 2>&1
      rc=$?
      cat "$WORK/out" >> "$log"
      SAN_RUNS=$((SAN_RUNS + 1))
      if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        SAN_TIMEOUTS=$((SAN_TIMEOUTS + 1))
        say "$tool $name: timed out after ${t}s (not counted as an error)"
        note "- $tool $name: timed out after ${t}s"
        continue
      fi
      n="$(sed -nE 's/.*ERROR SUMMARY: ([0-9]+) error.*/\1/p' "$WORK/out" | awk '{s+=$1} END {print s+0}')"
      if ! grep -q 'ERROR SUMMARY' "$WORK/out"; then
        n=1
        echo "$tool $name: no ERROR SUMMARY (rc=$rc: the sanitizer or the binary crashed)" | tee -a "$log"
      fi
      [ "$tool" = memcheck ] && SAN_MEM=$((SAN_MEM + n)) || SAN_RACE=$((SAN_RACE + n))
      grep -q '^test result: FAILED' "$WORK/out" && note "- $tool $name: tests FAILED under the sanitizer"
      say "$tool $name: $n errors (rc=$rc)"
      [ "$n" -gt 0 ] && note "- $tool $name: $n errors (see sanitizer.log)"
    done
  done
  if [ "$skipped" -gt 0 ]; then
    say "$skipped sanitizer runs not started (SANITIZER_BUDGET_S=$SANITIZER_BUDGET_S spent)"
    note "- sanitizer: $skipped runs not started (SANITIZER_BUDGET_S=$SANITIZER_BUDGET_S spent)"
  fi
}

step_bench() {
  banner "handcov bench"
  if [ ! -x "$BIN/bench" ]; then
    say "no $BIN/bench: skipped"
    note "- handcov bench: skipped (no $BIN/bench)"
    return
  fi
  local t rc
  t="$(cap "$BENCH_TIMEOUT_S" 150)"
  echo "---- $BIN/bench --json $OUT/handcov_bench.jsonl $BENCH_ARGS (timeout ${t}s)" | tee -a "$OUT/bench.log"
  # shellcheck disable=SC2086
  timeout --kill-after=10 "$t" "$BIN/bench" --json "$OUT/handcov_bench.jsonl" $BENCH_ARGS 2>&1 |
    tee -a "$OUT/bench.log" | tail -40
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && note "- handcov bench: exit status $rc (see bench.log)"
}

step_torch_train() {
  banner "torch training bench"
  local t rc
  t="$(cap "$TORCH_TRAIN_TIMEOUT_S" 40)"
  # into torch_bench.jsonl (no ninth file in $OUT); the torch step appends its rows after these
  echo "---- bench_train_torch.py --out $OUT/torch_bench.jsonl $TORCH_TRAIN_ARGS (timeout ${t}s)" | tee -a "$OUT/bench.log"
  # shellcheck disable=SC2086
  timeout --kill-after=10 "$t" python3 tests/reference/bench_train_torch.py \
    --out "$OUT/torch_bench.jsonl" --budget-s $((t > 45 ? t - 25 : 20)) $TORCH_TRAIN_ARGS 2>&1 |
    tee -a "$OUT/bench.log" | tail -30
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && note "- torch training bench: exit status $rc (see bench.log)"
  TORCH_TRAIN_RAN=1
}

step_torch() {
  banner "torch bench"
  local t rc append=""
  t="$(cap 100000 25)"
  [ "$TORCH_TRAIN_RAN" -eq 1 ] && append="--append"    # keep torch_train's rows
  echo "---- bench_gpu_torch.py --out $OUT/torch_bench.jsonl $append $TORCH_ARGS (timeout ${t}s)" | tee -a "$OUT/bench.log"
  # shellcheck disable=SC2086
  timeout --kill-after=10 "$t" python3 tests/reference/bench_gpu_torch.py \
    --out "$OUT/torch_bench.jsonl" $append --deadline-s $((t > 40 ? t - 30 : 10)) $TORCH_ARGS 2>&1 |
    tee -a "$OUT/bench.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && note "- torch bench: exit status $rc (see bench.log)"
}

step_compare() {
  banner "compare"
  local files=() f
  for f in "$OUT/torch_bench.jsonl" "$OUT/handcov_bench.jsonl"; do [ -s "$f" ] && files+=("$f"); done
  if [ "${#files[@]}" -eq 0 ]; then
    say "no benchmark results to compare"
    return
  fi
  python3 tests/reference/compare_bench.py "${files[@]}" --out "$OUT/compare.md" > /dev/null ||
    note "- compare_bench.py failed"
}

# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
CS="" GPU="" NO_TESTS=0 TORCH_TRAIN_RAN=0 SAN_SKIPPED=0 SAN_MEM=0 SAN_RACE=0 SAN_RUNS=0 SAN_TIMEOUTS=0
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
if [ -f "$BIN/gpubin.tar.xz" ]; then      # packed by build_gpu_bins.sh: unpack into scratch
  mkdir -p "$WORK/bin"
  if tar -C "$WORK/bin" -xJf "$BIN/gpubin.tar.xz" 2>/dev/null ||
     python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
       "$BIN/gpubin.tar.xz" "$WORK/bin"; then
    echo "unpacked $BIN/gpubin.tar.xz ($(ls "$WORK/bin/tests" | wc -l) test binaries)"
    BIN="$WORK/bin"
  else
    echo "could not unpack $BIN/gpubin.tar.xz"
  fi
fi
find_sanitizer
setup_libs > "$WORK/libs.txt"          # not in a subshell: LD_LIBRARY_PATH must stay exported
step_demo() {
  banner "demo (train with no arguments) on the GPU"
  if [ ! -x "$BIN/train" ]; then
    say "no $BIN/train: skipped"
    note "- demo: skipped (no $BIN/train)"
    return
  fi
  local t rc
  t="$(cap "$DEMO_TIMEOUT_S")"
  echo "---- $BIN/train --device cuda --out $WORK/demo --cache $WORK/cache $DEMO_ARGS (timeout ${t}s)" | tee -a "$OUT/demo.log"
  # shellcheck disable=SC2086
  (cd "$ROOT" && timeout --kill-after=10 "$t" "$BIN/train" --device cuda --out "$WORK/demo" \
    --cache "$WORK/cache" --pictures 0 $DEMO_ARGS) 2>&1 | tee -a "$OUT/demo.log" | tail -20
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    note "- demo: exit status $rc (see demo.log)"
  else
    note "- demo: $(grep -m1 'held-out synthetic hands' "$OUT/demo.log"); PA-MPJPE etc.: $(grep -m1 '^tiny + ours' "$OUT/demo.log" | tr -s ' ')"
  fi
}

has_step env && step_env
if has_step tests || has_step sanitizer || has_step bench; then fix_paths; fi
has_step tests && step_tests
has_step sanitizer && step_sanitizer
has_step bench && step_bench
has_step torch_train && step_torch_train
has_step torch && step_torch
has_step compare && step_compare
has_step demo && step_demo

# ---------------------------------------------------------------------------------------------
# summary (printed last: the device tool returns the end of the output)
# ---------------------------------------------------------------------------------------------
passed=$(awk -F'\t' '$3=="ok"' "$WORK/results.tsv" | wc -l)
failed=$(awk -F'\t' '$3!="ok"' "$WORK/results.tsv" | wc -l)
{
  echo "# gpu_check summary"
  echo
  commit="$(build_info commit)"; dirty="$(build_info dirty)"
  echo "device: ${GPU:-unknown}; build: commit ${commit:-unknown}$([ "$dirty" = yes ] && echo " + uncommitted changes"); ${SECONDS} s"
  echo
  echo "| check | result |"
  echo "|---|---|"
  if has_step tests; then
    echo "| tests ($TEST_ARGS) | $passed passed, $failed failed, in $(wc -l < "$WORK/ran_bins") binaries that ran tests |"
  fi
  if has_step sanitizer; then
    if [ "$SAN_SKIPPED" -eq 1 ]; then
      echo "| compute-sanitizer | skipped: not found |"
    else
      echo "| memcheck | $SAN_MEM errors |"
      echo "| racecheck | $SAN_RACE errors ($SAN_RUNS sanitizer runs, $SAN_TIMEOUTS timed out) |"
    fi
  fi
  has_step bench && echo "| handcov bench rows | $(count_rows "$OUT/handcov_bench.jsonl") |"
  train_rows=$(( $(count_rows "$OUT/torch_bench.jsonl" '"kind": "train"') + $(count_rows "$OUT/torch_bench.jsonl" '"kind": "nll"') ))
  if has_step torch_train; then
    echo "| torch train + nll rows | $train_rows (in torch_bench.jsonl; errors and skipped ones are listed under the comparison) |"
  fi
  has_step torch && echo "| torch bench rows | $(( $(count_rows "$OUT/torch_bench.jsonl") - train_rows )) inference + micro ($(count_rows "$OUT/torch_bench.jsonl" '"error"') rows of the file with errors or skipped) |"
  if [ "$failed" -gt 0 ]; then
    echo
    echo "Failed tests:"
    awk -F'\t' '$3!="ok" {print "- " $1 ": " $2 " " $3}' "$WORK/results.tsv" | head -30
    [ "$failed" -gt 30 ] && echo "- ... and $((failed - 30)) more (tests.log)"
  fi
  if [ -s "$SUMMARY" ]; then
    echo
    echo "Notes:"
    cat "$SUMMARY"
  fi
  if [ -s "$OUT/compare.md" ]; then
    echo
    cat "$OUT/compare.md"
  fi
  echo
  echo "logs: $OUT ($(cd "$OUT" && ls | tr '\n' ' '))"
} > "$OUT/summary.md"
banner "summary"
cat "$OUT/summary.md"

status=0
[ "$failed" -gt 0 ] && status=1
[ "$NO_TESTS" -eq 1 ] && status=1
[ $((SAN_MEM + SAN_RACE)) -gt 0 ] && status=1
exit "$status"
