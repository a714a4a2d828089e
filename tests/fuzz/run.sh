#!/usr/bin/env bash
# Runs the libFuzzer targets of a VGG_FUZZ=ON build, each for a bounded time over a copy of its
# committed corpus (tests/fuzz/corpus/<target>/; new inputs go to the copy, never the repository).
#
#   tests/fuzz/run.sh BUILD_DIR [SECONDS_PER_TARGET=30] [TARGET...]   (default: every built target)
#
# Flags: a 10 s per-input timeout, 2 GB RSS and 512 MB per-allocation limits, plus
# tests/fuzz/<target>.dict when present and the flags in tests/fuzz/<target>.options (one line;
# later flags override earlier ones). Extra flags for every target: VGG_FUZZ_FLAGS. Targets run
# VGG_FUZZ_JOBS at a time (default: the number of cores).
# Exit status 1 when any target finds a crash, hang, leak or over-limit allocation; the input is
# kept as BUILD_DIR/fuzz-artifacts/<target>-<kind>-<sha1> and the log as BUILD_DIR/fuzz-logs/<target>.log.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:?usage: tests/fuzz/run.sh BUILD_DIR [SECONDS] [TARGET...]}"
seconds="${2:-30}"
shift $(( $# < 2 ? $# : 2 ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for exe in "$build"/tests/fuzz/fuzz_*; do
    [ -x "$exe" ] && [ -f "$exe" ] && targets+=("$(basename "$exe")")
  done
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no targets in $build/tests/fuzz (configure with -DVGG_FUZZ=ON and build vgg_fuzzers)" >&2
  exit 1
fi
mkdir -p "$build/fuzz-artifacts" "$build/fuzz-logs"
# One target, its summary line on stdout; status 1 when it found something.
run_target() {
  local target="$1" exe="$build/tests/fuzz/$1" work="$build/fuzz-work/$1" log="$build/fuzz-logs/$1.log"
  local start=$SECONDS result status_line runs
  rm -rf "$work"
  mkdir -p "$work"
  if [ -d "$root/tests/fuzz/corpus/$target" ]; then cp -r "$root/tests/fuzz/corpus/$target/." "$work/"; fi
  local flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1
               -artifact_prefix="$build/fuzz-artifacts/$target-")
  [ -f "$root/tests/fuzz/$target.dict" ] && flags+=(-dict="$root/tests/fuzz/$target.dict")
  if [ -f "$root/tests/fuzz/$target.options" ]; then
    local extra
    read -r -a extra < "$root/tests/fuzz/$target.options"
    flags+=("${extra[@]}")
  fi
  local user_flags
  read -r -a user_flags <<< "${VGG_FUZZ_FLAGS:-}"
  flags+=("${user_flags[@]}")
  if "$exe" "${flags[@]}" "$work" > "$log" 2>&1; then result=ok; else result=FAILED; fi
  # libFuzzer's last status line ("#N DONE cov: C ft: F corp: ...") and its final stats.
  status_line=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  echo "fuzz: $target $result after $((SECONDS - start)) s: ${runs:-?} runs; ${status_line:-no status line}"
  if [ "$result" != ok ]; then
    tail -n 40 "$log"
    ls -1 "$build/fuzz-artifacts/$target-"* 2>/dev/null | sed 's/^/fuzz: kept input /' || true
    return 1
  fi
}

# The targets run VGG_FUZZ_JOBS at a time (default: one per core): each fuzzer is single-threaded,
# so running them one after another left cores idle for most of the fuzz stage.
jobs_max="${VGG_FUZZ_JOBS:-$(nproc)}"
failed=()
pids=()
names=()
wait_first() {
  local pid="${pids[0]}" name="${names[0]}"
  pids=("${pids[@]:1}")
  names=("${names[@]:1}")
  wait "$pid" || failed+=("$name")
}
for target in "${targets[@]}"; do
  while [ ${#pids[@]} -ge "$jobs_max" ]; do wait_first; done
  run_target "$target" > "$build/fuzz-logs/$target.summary" 2>&1 &
  pids+=($!)
  names+=("$target")
done
while [ ${#pids[@]} -gt 0 ]; do wait_first; done
for target in "${targets[@]}"; do cat "$build/fuzz-logs/$target.summary"; done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (logs in $build/fuzz-logs, inputs in $build/fuzz-artifacts)" >&2
  exit 1
fi
