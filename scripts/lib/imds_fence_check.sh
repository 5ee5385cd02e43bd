#!/usr/bin/env bash
# The IMDS fence, checked in a network namespace of its own (SandboxTests.theCommandCannotReachIMDS): IMDS (the
# stand-in) at EC2's addresses 169.254.169.254 and [fd00:ec2::254], moto on the namespace's loopback, and one worker
# (root) running one task as `nobody` whose command tries to reach IMDS on both. Prints what each side reached, and
# whether the daemon's nftables rule was still in place after it exited. Needs root, ip(8) and nft(8). A third argument
# `pass` sets passCredentials=true: then no rule is put in place, and the command must reach IMDS (the probe's
# control: a probe that reached nothing would prove nothing). `flush` instead flushes the namespace's whole nftables
# ruleset after the daemon put its rule in place and before the message is sent (a firewall reload): the daemon must
# put the rule back before the command runs.
#   imds_fence_check.sh PARALLELIZER_BINARY WORK_FOLDER [pass|flush]
set -euo pipefail
BIN=$1 DIR=$2 PASS=${3:-}
HERE="$(cd "$(dirname "$0")" && pwd)"
NS="pzfence$$"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
inns() { ip netns exec "$NS" "$@"; }
wait_port() {
    local i
    for i in $(seq 1 100); do
        inns python3 -c "import socket,sys; s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET); s.settimeout(0.5); sys.exit(s.connect_ex((sys.argv[1], int(sys.argv[2]))))" "$1" "$2" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "nothing listens on $1:$2 in the namespace" >&2
    return 1
}

ip netns add "$NS"
inns ip link set lo up
inns sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.lo.disable_ipv6=0 || true
inns ip addr add 169.254.169.254/32 dev lo
inns ip -6 addr add fd00:ec2::254/128 dev lo nodad

MOTO_PORT=5000
# Not through `inns`: a function run in the background is a subshell, and $! would be that subshell, which the
# cleanup would kill while the server it started lives on. `ip netns exec` execs the server, so $! is the server.
ip netns exec "$NS" python3 "$HERE/moto_server.py" -H 127.0.0.1 -p "$MOTO_PORT" >"$DIR/fence-moto.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" python3 "$HERE/imds_standin.py" --port 80 --host 169.254.169.254 --host fd00:ec2::254 \
    --instance-id i-0fenced >"$DIR/fence-imds.log" 2>&1 &
PIDS+=($!)
wait_port 127.0.0.1 "$MOTO_PORT"
wait_port 169.254.169.254 80
wait_port fd00:ec2::254 80

export AWS_ACCESS_KEY_ID=AKIAFENCE AWS_SECRET_ACCESS_KEY=fence-secret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
QUEUE=$(inns python3 - <<'PY'
import boto3
s3, sqs = boto3.client("s3"), boto3.client("sqs")
for bucket in ("fence-in", "fence-out"):
    s3.create_bucket(Bucket=bucket)
s3.put_object(Bucket="fence-in", Key="x.txt", Body=b"x")
url = sqs.create_queue(QueueName="fence")["QueueUrl"]
print(url)
PY
)
send_message() {
    inns python3 -c 'import boto3, sys; boto3.client("sqs").send_message(QueueUrl=sys.argv[1], MessageBody="x.txt")' "$QUEUE"
}

cat >"$DIR/probe.sh" <<PROBE
#!/bin/sh
for target in 169.254.169.254 [fd00:ec2::254]; do
    name=v4; case "\$target" in \[*) name=v6 ;; esac
    if curl -g -s -m 3 -o /dev/null -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "http://\$target/latest/api/token"; then
        echo "command: \$name reached (as \$(id -un))" >>"$DIR/probe.out"
    else
        echo "command: \$name refused (as \$(id -un))" >>"$DIR/probe.out"
    fi
done
exit 0
PROBE
chmod 0755 "$DIR/probe.sh"
cat >"$DIR/fence.params" <<PARAMS
queueURL=$QUEUE
inputBucket=fence-in
outputBucket=fence-out
analysisProgram=$DIR/probe.sh
runAsUser=nobody
shouldShutdown=false
workDir=$DIR/fence-work
logFile=$DIR/fence-worker.log
PARAMS
[ "$PASS" = pass ] && echo "passCredentials=true" >>"$DIR/fence.params"
set +e
if [ "$PASS" = flush ]; then
    echo "idleTimeout=2" >>"$DIR/fence.params"
    ip netns exec "$NS" env PATH=/usr/local/bin:/usr/bin:/bin AWS_EC2_METADATA_SERVICE_ENDPOINT=http://169.254.169.254 \
        "$BIN" run --receive-wait-seconds 1 --config "$DIR/fence.params" >"$DIR/fence-worker.out" 2>&1 &
    WORKER=$!
    PIDS+=("$WORKER")
    for _ in $(seq 1 300); do
        grep -q 'IMDS is closed to the run-as user' "$DIR/fence-worker.log" 2>/dev/null && break
        sleep 0.1
    done
    inns nft flush ruleset
    inns nft list tables 2>/dev/null | grep -q parallelizer_imds || echo "the rule was flushed"
    send_message
    wait "$WORKER"
    status=$?
    grep -q 'the IMDS fence was gone' "$DIR/fence-worker.log" && echo "the daemon put the rule back"
else
    send_message
    inns env PATH=/usr/local/bin:/usr/bin:/bin AWS_EC2_METADATA_SERVICE_ENDPOINT=http://169.254.169.254 \
        "$BIN" run --once --receive-wait-seconds 1 --config "$DIR/fence.params" >"$DIR/fence-worker.out" 2>&1
    status=$?
fi
set -e
echo "worker exited $status"
cat "$DIR/probe.out" 2>/dev/null || echo "the command never ran"
grep -o 'instance=i-0fenced' "$DIR/fence-worker.log" | head -1 | sed 's/^/daemon: /'
if inns nft list tables 2>/dev/null | grep -q "parallelizer_imds_$(id -u nobody)"; then
    echo "the rule stays after exit"
else
    echo "no rule after exit"
fi

[ "$status" -eq 0 ] || { tail -n 20 "$DIR/fence-worker.log"; exit 1; }
