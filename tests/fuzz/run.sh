#!/bin/sh
# Runs each fuzzer for a few seconds: tests/fuzz/run.sh <build-dir> <seconds> <fuzzer>...
# New inputs go to <build-dir>/corpus/<name>/ (kept between runs); tests/fuzz/corpus/<name>/
# seeds it, tests/fuzz/<name>.dict (JSON tokens and keys) guides it when present, and
# tests/fuzz/<name>.options holds extra libFuzzer flags for it (one line). Any crash, leak,
# sanitizer report or timeout fails the run (exit 1) and leaves the input in
# <build-dir>/crash-<name>-*.
dir=$1; secs=$2; shift 2
failed=""
for f in "$@"; do
    name=$(basename "$f")
    mkdir -p "$dir/corpus/$name"
    seeds=""
    [ -d "tests/fuzz/corpus/$name" ] && seeds="tests/fuzz/corpus/$name"
    dict=""
    [ -f "tests/fuzz/$name.dict" ] && dict="-dict=tests/fuzz/$name.dict"
    opts=""
    [ -f "tests/fuzz/$name.options" ] && opts=$(cat "tests/fuzz/$name.options")
    log="$dir/$name.log"
    if "$f" $dict $opts -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
            -artifact_prefix="$dir/crash-$name-" "$dir/corpus/$name" $seeds > "$log" 2>&1; then
        echo "fuzz ok   $name ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${secs}s)"
    else
        echo "fuzz FAIL $name (log: $log)"
        grep -A30 'ERROR\|==ERROR\|deadly signal\|Test unit written' "$log" | head -60
        failed="$failed $name"
    fi
done
[ -z "$failed" ] || { echo "fuzzers failing:$failed"; exit 1; }
