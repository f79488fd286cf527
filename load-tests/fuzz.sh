#!/usr/bin/env bash
# Coverage-guided fuzzing with AFL++ (cargo-afl, stable Rust): each target in
# fuzz/src/bin/ runs until EXECS executions or SECONDS seconds, whichever comes
# first, starting from fuzz/corpus/<target>. Prints one line per target:
# executions, execs/s, corpus size, crashes, hangs; exits 1 if any target saved a
# crash. Crashing inputs are copied to fuzz/regressions/<target>/ (which
# tests/fuzz_corpora.rs replays under cargo test).
#
#   load-tests/fuzz.sh                                  # every target, 10M execs or 1 h each
#   TARGETS="path head" EXECS=1000000 load-tests/fuzz.sh
#   SECONDS_EACH=5 load-tests/fuzz.sh                    # the CI smoke
#   OUT=/tmp/fuzz-out MINIMIZE=1 load-tests/fuzz.sh       # keep AFL's output; add new paths to the corpus
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=${TARGETS:-"head chunked path router config jwt"}
EXECS=${EXECS:-10000000}
SECONDS_EACH=${SECONDS_EACH:-3600}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-afl >/dev/null || { echo "installing cargo-afl (cargo install, a few minutes)"; cargo install cargo-afl --locked --quiet; }
# AFL's checks of the machine's core dump and CPU frequency settings need root
# changes that a shared machine or a container does not allow; neither changes
# what is found, only how fast.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
(cd fuzz && cargo afl build --release --quiet)
failed=0
for t in $TARGETS; do
  rm -rf "$OUT/$t"
  # -E: stop after about this many executions; -V: after this many seconds.
  (cd fuzz && cargo afl fuzz -E "$EXECS" -V "$SECONDS_EACH" -i "corpus/$t" -o "$OUT/$t" \
    "target/release/$t" >"$OUT/$t.log" 2>&1) || { echo "$t: afl-fuzz failed"; tail -20 "$OUT/$t.log"; failed=1; continue; }
  s="$OUT/$t/default/fuzzer_stats"
  get() { awk -v k="$1" '$1 == k {print $3}' "$s"; }
  printf '%-8s execs %10s  execs/s %8s  corpus %5s  crashes %s  hangs %s  run %ss\n' \
    "$t" "$(get execs_done)" "$(get execs_per_sec)" "$(get corpus_count)" \
    "$(get saved_crashes)" "$(get saved_hangs)" "$(( $(get last_update) - $(get start_time) ))"
  if [ "$(get saved_crashes)" != 0 ]; then
    failed=1
    mkdir -p "fuzz/regressions/$t"
    cp "$OUT/$t/default/crashes/"id:* "fuzz/regressions/$t/" 2>/dev/null || true
  fi
  if [ "${MINIMIZE:-0}" = 1 ]; then
    # The queue, minimised to the inputs that add coverage, becomes the corpus.
    (cd fuzz && cargo afl cmin -i "$OUT/$t/default/queue" -o "$OUT/$t.min" -- "target/release/$t" >/dev/null 2>&1) \
      && cp -n "$OUT/$t.min"/* "fuzz/corpus/$t/" 2>/dev/null || true
  fi
done
exit $failed
