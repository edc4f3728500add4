#!/bin/sh
# dist/run.sh MODEL RUN_DIR BUILD_DIR PROMPT [HTTP_PORT] — the body of `make run`.
# Starts mqd in the background (unless one already answers on RUN_DIR), waits until it is
# ready, asks one question through `mq run` with streaming output, starts mq-openai (the
# OpenAI-compatible HTTP server) on 127.0.0.1:HTTP_PORT, asks one chat question with curl
# and leaves both running.
set -e
model=$1; rundir=$2; build=$3; prompt=$4; port=${5:-8000}
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
if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
    echo "mq-openai already answers on 127.0.0.1:$port"
else
    echo "starting mq-openai on 127.0.0.1:$port (log: $rundir/mq-openai.log)"
    nohup "$build/mq-openai" --mqd-socket "$client" --listen "127.0.0.1:$port" \
        > "$rundir/mq-openai.log" 2>&1 < /dev/null &
    echo $! > "$rundir/mq-openai.pid"
    i=0
    until curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -gt 50 ]; then echo "mq-openai did not answer; see $rundir/mq-openai.log" >&2; exit 1; fi
        sleep 0.1
    done
fi
req='{"messages": [{"role": "user", "content": "'"$prompt"'"}], "max_tokens": 128, "temperature": 0,
      "chat_template_kwargs": {"enable_thinking": false}}'
echo "\$ curl http://127.0.0.1:$port/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\", ...}]}'"
curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$req"
echo
echo
echo "mqd is running (pid $(cat "$rundir/mqd.pid" 2>/dev/null || echo '?')), log $log"
echo "mq-openai is running (pid $(cat "$rundir/mq-openai.pid" 2>/dev/null || echo '?')): OPENAI_BASE_URL=http://127.0.0.1:$port/v1"
echo "  ask:    $build/mq --socket $client run \"your prompt\"    (or: MQ_SOCKET=$client $build/mq chat)"
echo "  admin:  $build/mqctl --socket $admin status | sessions | stats | top"
echo "  stop:   $build/mqctl --socket $admin drain    (or: kill \$(cat $rundir/mqd.pid));  kill \$(cat $rundir/mq-openai.pid)"
