#!/usr/bin/env bash
# A manual check of docs/SERVER.md, "Behind a TLS proxy": castore serve behind nginx with the
# site settings the doc gives, every command through https:// against the same command on a
# local directory store (output, standard error and exit code, times and pids aside).
# Needs nginx and openssl (apt-get install nginx); runs on free loopback ports in a temporary
# directory and stops what it started. Usage: tools/nginx_tls_check.sh   (exit 0: all equal)
set -euo pipefail
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
read -r CASTORE_PORT TLS_PORT < <($PY -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
    -subj "/CN=check CA" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout key.pem -out req.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out cert.pem \
    -extfile ext 2>/dev/null
openssl rand -hex 32 > token && chmod 600 token
mkdir -p logs tmp
cat > nginx.conf <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log;
events { worker_connections 64; }
http {
  access_log $WORK/logs/access.log;
  client_body_temp_path $WORK/tmp/body;
  proxy_temp_path $WORK/tmp/proxy;
  fastcgi_temp_path $WORK/tmp/f; uwsgi_temp_path $WORK/tmp/u; scgi_temp_path $WORK/tmp/s;
  server {
    listen 127.0.0.1:$TLS_PORT ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    client_max_body_size 65m;
    client_body_buffer_size 2m;
    location / {
      proxy_pass http://127.0.0.1:$CASTORE_PORT;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_buffering off;
      proxy_next_upstream off;
    }
  }
}
EOF
[ "$(id -u)" = 0 ] && sed -i '1i user root;' nginx.conf
$PY -m castore --dir "$WORK/served" serve --listen "127.0.0.1:$CASTORE_PORT" \
    --token-file token 2> serve.err &
PIDS+=($!)
nginx -p "$WORK" -c "$WORK/nginx.conf"
export CASTORE_TOKEN SSL_CERT_FILE="$WORK/ca.pem" DAG_NAME=check
CASTORE_TOKEN=$(cat token)
for _ in $(seq 100); do curl -sf --cacert ca.pem "https://127.0.0.1:$TLS_PORT/healthz" \
    > /dev/null && break; sleep 0.1; done
$PY -c 'print(chr(34) + "a" * (1024 * 1024 - 2) + chr(34), end="")' > big.json
run_all() {  # $1: store location, $2: output directory (no globbing of the JSON arguments)
    local -
    set -f
    mkdir -p "$2"
    local n=0
    while IFS= read -r line; do
        n=$((n + 1))
        # shellcheck disable=SC2086  # the line's words are the command's arguments
        CASTORE_DIR=$1 $PY -m castore $line < "${STDIN:-/dev/null}" > "$2/$n.out" 2> "$2/$n.err" \
            && echo 0 > "$2/$n.rc" || echo $? > "$2/$n.rc"
        [ "$line" = "set big -" ] && STDIN= || true
    done <<'EOF'
set k {"a":1}
get k
set k {"a":2,"x":[1,2,3]}
diff k {"a":3} --no-update
get k --version 1
history k
rollback k --to-version 1
patch k [{"op":"add","path":"/b","value":2}]
incr n --by 5
list --include-values
set k 5 --expected-version 77
set bad not-json
get nope --required
delete k
audit
export
check
gc --dry-run
stats
EOF
    STDIN=big.json CASTORE_DIR=$1 $PY -m castore set big - > "$2/big.out" 2> "$2/big.err" \
        && echo 0 > "$2/big.rc" || echo $? > "$2/big.rc"
}
run_all "https://127.0.0.1:$TLS_PORT" remote
run_all "$WORK/store" local
normal() { sed -E 's/"(time|createdAt|updatedAt)":"[^"]*"/T/g; s/"(pid|timeNs|time_ns|created_ns|blobs|storedBytes|logicalBytes|reclaimableBytes|[a-zA-Z]*[Bb]ytes)":[0-9]+/N/g' "$1"; }
status=0
for f in local/*.rc; do
    b=$(basename "$f" .rc)
    for part in out err rc; do
        if ! diff -q <(normal "local/$b.$part") <(normal "remote/$b.$part") > /dev/null; then
            echo "differs: command $b ($part)"; status=1
        fi
    done
done
grep -q "$CASTORE_TOKEN" logs/*.log && { echo "the token is in nginx's logs"; status=1; }
[ $status = 0 ] && echo "all $(ls local/*.rc | wc -l) commands answer alike through nginx"
exit $status
