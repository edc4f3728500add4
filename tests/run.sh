#!/bin/sh
# Runs every test program of the given build directories and prints one closing line
# "N passed, N failed" (N = test functions), with ", N skipped" after it when tests were
# skipped. Exits non-zero on any failure.
# The first build dir runs all tests; later ones (sanitizer builds) run tests/unit only.
# MQ_TEST_FILTER=substr runs only matching test programs.
#
# A program reports "@@ passed failed skipped" (tests/harness.h). Exit status 77 with
# no failure means skipped (the program printed why); a program that dies without a
# result line, exits non-zero with no failure counted, or reports no test at all counts
# as one failure. tests/unit/test_harness.c runs this script on programs that do each of
# these and checks the totals.
counts() { p=${2:-0}; f=${3:-0}; s=${4:-0}; }
first=1
passed=0; failed=0; skipped=0; broken=""
for b in "$@"; do
    if [ $first = 1 ]; then progs=$(ls "$b"/tests/unit/test_* "$b"/tests/golden/test_* "$b"/tests/integration/test_* 2>/dev/null)
    else progs=$(ls "$b"/tests/unit/test_* 2>/dev/null); fi
    first=0
    for t in $progs; do
        case "$t" in *.d|*.o) continue;; esac
        [ -n "$MQ_TEST_FILTER" ] && case "$t" in *"$MQ_TEST_FILTER"*) ;; *) continue;; esac
        echo "== $t"
        out=$(mktemp)
        "$t" > "$out" 2>&1
        rc=$?
        grep -v '^@@ ' "$out"
        line=$(grep '^@@ ' "$out" | tail -1)
        rm -f "$out"
        if [ -z "$line" ]; then
            if [ "$rc" -eq 77 ]; then
                echo "  skip $t (exit 77 without a result line)"
                skipped=$((skipped + 1))
            else
                echo "  FAIL $t exited $rc without a result line"
                failed=$((failed + 1)); broken="$broken $t"
            fi
            continue
        fi
        counts $line
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
        if [ "$f" -eq 0 ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
            echo "  FAIL $t exited $rc"; failed=$((failed + 1)); f=1
        elif [ "$rc" -eq 77 ] && [ "$p" -ne 0 ]; then
            echo "  FAIL $t exited 77 (skipped) but reported $p passed"; failed=$((failed + 1)); f=1
        elif [ $((p + f + s)) -eq 0 ]; then
            echo "  FAIL $t reported no test"; failed=$((failed + 1)); f=1
        fi
        [ "$f" -ne 0 ] && broken="$broken $t"
    done
done
[ -n "$broken" ] && echo "failing programs:$broken"
if [ "$skipped" -gt 0 ]; then echo "$passed passed, $failed failed, $skipped skipped"
else echo "$passed passed, $failed failed"; fi
[ "$failed" -eq 0 ]
