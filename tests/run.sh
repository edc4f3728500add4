#!/bin/sh
# Runs every test program of the given build directories and prints one closing line
# "N passed, N failed" (N = test functions). Exits non-zero on any failure.
# The first build dir runs all tests; later ones (sanitizer builds) run tests/unit only.
# MQ_TEST_FILTER=substr runs only matching test programs.
first=1
passed=0; failed=0; broken=""
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
            echo "  FAIL $t exited $rc without a result line"
            failed=$((failed + 1)); broken="$broken $t"; continue
        fi
        p=$(echo "$line" | cut -d' ' -f2); f=$(echo "$line" | cut -d' ' -f3)
        passed=$((passed + p)); failed=$((failed + f))
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
            echo "  FAIL $t exited $rc"; failed=$((failed + 1))
        fi
        [ "$f" -ne 0 ] || [ "$rc" -ne 0 ] && broken="$broken $t"
    done
done
[ -n "$broken" ] && echo "failing programs:$broken"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
