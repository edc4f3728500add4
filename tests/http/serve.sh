#!/bin/sh
# tests/http/serve.sh BUILD MODEL CMD... — starts mqd on MODEL and mq-openai on a free
# loopback port (sockets and logs in a fresh folder under /tmp), runs CMD with
#   MQ_HTTP_URL (http://127.0.0.1:PORT), MQ_CLIENT_SOCKET, MQ_ADMIN_SOCKET, MQ_BUILD, MQD_PID, MQ_OPENAI_PID
# in its environment, stops both and exits with CMD's status. Used by `make eval-agent`
# and `make bench-http`. MQD_FLAGS adds flags to mqd.
set -e
build=$(cd "$1" && pwd); model=$2; shift 2
dir=$(mktemp -d /tmp/mq-http-XXXXXX)
as=""
[ "$(id -u)" = 0 ] && as="--user nobody" # started as root, mqd serves as an unprivileged user
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
"$build/mqd" --model-dir "$model" --client-socket "$dir/client.sock" --admin-socket "$dir/admin.sock" \
    --hugepages off $as $MQD_FLAGS > "$dir/mqd.log" 2>&1 &
mqd=$!
i=0
until "$build/mqctl" --socket "$dir/admin.sock" status 2>/dev/null | grep -q '^state *ready'; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 $mqd 2>/dev/null; then
        echo "mqd did not get ready; $dir/mqd.log:" >&2; tail -20 "$dir/mqd.log" >&2; kill $mqd 2>/dev/null; exit 1
    fi
    sleep 0.2
done
"$build/mq-openai" --mqd-socket "$dir/client.sock" --listen "127.0.0.1:$port" > "$dir/mq-openai.log" 2>&1 &
oai=$!
i=0
until curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then echo "mq-openai did not answer; $dir/mq-openai.log:" >&2; cat "$dir/mq-openai.log" >&2; kill $oai $mqd; exit 1; fi
    sleep 0.1
done
set +e
MQ_HTTP_URL="http://127.0.0.1:$port" MQ_CLIENT_SOCKET="$dir/client.sock" MQ_ADMIN_SOCKET="$dir/admin.sock" MQD_PID=$mqd MQ_OPENAI_PID=$oai \
    MQ_BUILD="$build" "$@"
rc=$?
kill $oai 2>/dev/null
kill $mqd 2>/dev/null
wait $oai $mqd 2>/dev/null
[ $rc -eq 0 ] && rm -rf "$dir"
exit $rc
