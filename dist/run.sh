#!/bin/sh
# dist/run.sh MODEL RUN_DIR BUILD_DIR PROMPT — the body of `make run`.
# Starts mqd in the background (unless one already answers on RUN_DIR), waits until it is
# ready, asks one question through `mq run` with streaming output and leaves mqd running.
set -e
model=$1; rundir=$2; build=$3; prompt=$4
client="$rundir/client.sock"; admin="$rundir/admin.sock"; log="$rundir/mqd.log"
mkdir -p "$rundir"
if [ ! -f "$model/config.json" ]; then
    echo "make run: no model at $model (set MODEL=/path/to/model or MQ_SHARED)" >&2
    exit 1
fi
if "$build/mqctl" --socket "$admin" status >/dev/null 2>&1; then
    echo "mqd already running (admin socket $admin)"
else
    echo "starting mqd on $model (log: $log)"
    # Started as root, mqd wants a user to serve as (it refuses uid 0 without one).
    as=""
    if [ "$(id -u)" = 0 ]; then as="--user nobody"; fi
    # shellcheck disable=SC2086 # $as is empty or two words
    nohup "$build/mqd" --model-dir "$model" --client-socket "$client" --admin-socket "$admin" $as \
        > "$log" 2>&1 < /dev/null &
    echo $! > "$rundir/mqd.pid"
    i=0
    until "$build/mqctl" --socket "$admin" status 2>/dev/null | grep -q '^state *ready'; do
        if ! kill -0 "$(cat "$rundir/mqd.pid")" 2>/dev/null; then
            echo "mqd exited during start-up; last lines of $log:" >&2
            tail -20 "$log" >&2
            exit 1
        fi
        i=$((i + 1))
        if [ $i -gt 600 ]; then echo "mqd not ready after 300 s; see $log" >&2; exit 1; fi
        if [ $((i % 10)) -eq 0 ]; then
            "$build/mqctl" --socket "$admin" status 2>/dev/null | grep '^load' || true
        fi
        sleep 0.5
    done
fi
"$build/mqctl" --socket "$admin" status | head -4
echo
echo "> $prompt"
"$build/mq" --socket "$client" --stats --max-tokens 128 run "$prompt"
echo
echo "mqd is running (pid $(cat "$rundir/mqd.pid" 2>/dev/null || echo '?')), log $log"
echo "  ask:    $build/mq --socket $client run \"your prompt\"    (or: MQ_SOCKET=$client $build/mq chat)"
echo "  admin:  $build/mqctl --socket $admin status | sessions | stats | top"
echo "  stop:   $build/mqctl --socket $admin drain    (or: kill \$(cat $rundir/mqd.pid))"
