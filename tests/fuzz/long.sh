#!/bin/sh
# Long fuzzing runs: tests/fuzz/long.sh <build-dir> <seconds> <fuzzer>...  (make fuzz-long)
# Each target runs for <seconds> in libFuzzer's fork mode with crashes, leaks, timeouts and
# out-of-memory inputs recorded and skipped (-ignore_crashes etc.), so one bad input does
# not end the run and every distinct failure is counted. Corpus: <build-dir>/corpus/<name>/
# (shared with make fuzz-run), seeded by tests/fuzz/corpus/<name>/, with the dictionary
# tests/fuzz/<name>.dict when there is one and the flags in tests/fuzz/<name>.options;
# failing inputs are kept
# as <build-dir>/long-<name>/crash-*, leak-*, timeout-*, oom-*.
# FUZZ_PAR=n runs n targets at a time (each still gets <seconds> of wall time; on a
# shared machine each then gets less CPU, which its execs show).
# Prints one line per target:
#     fuzz_long <name> seconds=<s> execs=<n> crashes=<c> timeouts=<t> ooms=<o> cov=<edges> corpus=<files>
# and a table row per target for docs/results.md. Exits 1 if any target had a failure.
dir=$1; secs=$2; shift 2
targets="$*"
jobs=${FUZZ_JOBS:-1}
par=${FUZZ_PAR:-1}
# one target: its result line into $dir/long-<name>/result
one() {
    f=$1
    name=$(basename "$f")
    out="$dir/long-$name"
    rm -rf "$out"
    mkdir -p "$out" "$dir/corpus/$name"
    seeds=""
    [ -d "tests/fuzz/corpus/$name" ] && seeds="tests/fuzz/corpus/$name"
    dict=""
    [ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
    opts=""
    [ -f "tests/fuzz/$name.options" ] && opts=$(cat "tests/fuzz/$name.options")
    log="$out/log"
    "$f" $dict $opts -fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 -max_total_time="$secs" -timeout=10 \
        -rss_limit_mb=4096 -artifact_prefix="$out/" "$dir/corpus/$name" $seeds > "$log" 2>&1
    rc=$?
    # fork mode's status lines: "#<execs>: cov: .. corp: .. exec/s: .. oom/timeout/crash: o/t/c time: .."
    last=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1)
    execs=$(echo "$last" | sed -n 's/^#\([0-9]*\):.*/\1/p')
    otc=$(echo "$last" | sed -n 's|.*oom/timeout/crash: \([0-9]*/[0-9]*/[0-9]*\).*|\1|p')
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ooms=${otc%%/*}; rest=${otc#*/}; timeouts=${rest%%/*}; crashes=${rest#*/}
    # a leak or a crash is a file; count the files too (the status line lags the last job)
    files=$(ls "$out" | grep -c -E '^(crash|leak)-')
    [ "${crashes:-0}" -lt "$files" ] && crashes=$files
    corpus=$(ls "$dir/corpus/$name" | wc -l)
    if [ -z "$execs" ]; then
        echo "FAILED $name $rc" > "$out/result"
        return
    fi
    echo "OK $name $execs ${crashes:-0} ${timeouts:-0} ${ooms:-0} $cov $corpus" > "$out/result"
}
# in batches of $par (POSIX sh has no wait -n; every target runs for the same time)
set -- "$@"
while [ $# -gt 0 ]; do
    i=0
    while [ $i -lt "$par" ] && [ $# -gt 0 ]; do
        one "$1" &
        shift; i=$((i + 1))
    done
    wait
done
bad=""
rows=""
for f in $targets; do
    name=$(basename "$f")
    set -- $(cat "$dir/long-$name/result" 2>/dev/null || echo "FAILED $name none")
    if [ "$1" = FAILED ]; then
        echo "fuzz_long $name FAILED to run (exit $3, log $dir/long-$name/log)"
        tail -20 "$dir/long-$name/log"
        bad="$bad $name"
        continue
    fi
    execs=$3; crashes=$4; timeouts=$5; ooms=$6; cov=$7; corpus=$8
    echo "fuzz_long $name seconds=$secs execs=$execs crashes=$crashes timeouts=$timeouts ooms=$ooms cov=$cov corpus=$corpus"
    [ "$crashes" -gt 0 ] || [ "$timeouts" -gt 0 ] || [ "$ooms" -gt 0 ] && bad="$bad $name"
    rows="$rows
| $name | $secs | $execs | $crashes | $timeouts | $ooms | $cov | $corpus |"
done
echo "results rows (target | seconds | execs | crashes | timeouts | ooms | edges covered | corpus files):$rows"
[ -z "$bad" ] || { echo "fuzz targets with failures:$bad (inputs in $dir/long-<name>/)"; exit 1; }
