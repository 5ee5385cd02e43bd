# scripts/bench's cost figures (sourced by scripts/bench, which has set BIN, WORK, SIZE_MIB and the server helpers):
# the AWS requests a task costs, by kind, counted by a proxy in front of moto (scripts/lib/counting_proxy.py, the
# tests' own), not read
# off the code; priced at list prices; beside a boto3 loop doing the same tasks through the same proxy. A run with an
# empty queue is counted too and taken off, so start-up and the drain are not charged to the tasks.

echo "== cost figures: requests per task by kind, through a counting proxy in front of moto"
COST_TASKS=${PZ_BENCH_COST_TASKS:-200}
COST_MOTO_PORT=$(pz_free_port)
moto_server -H 127.0.0.1 -p "$COST_MOTO_PORT" >"$PZ_RUN_DIR/moto-cost.log" 2>&1 &
PZ_SERVER_PIDS+=($!)
pz_wait_port "$COST_MOTO_PORT" 60
python3 scripts/lib/counting_proxy.py --upstream "http://127.0.0.1:$COST_MOTO_PORT" --port-file "$WORK/proxy.port" &
PZ_SERVER_PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$WORK/proxy.port" ] && break; sleep 0.1; done
PROXY_PORT=$(cat "$WORK/proxy.port")
PROXY="http://127.0.0.1:$PROXY_PORT"
cost_env=(AWS_ENDPOINT_URL="$PROXY" AWS_ACCESS_KEY_ID=AKIABENCHCOST AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
    AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null)
ccli() { env "${cost_env[@]}" aws --endpoint-url "http://127.0.0.1:$COST_MOTO_PORT" "$@"; }
counts() { curl -sf "$PROXY/_proxy/stats" | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["operations"]))'; }
reset_counts() { curl -sf -X POST "$PROXY/_proxy/reset" >/dev/null; }
cat >"$WORK/cost-copy.sh" <<'SH'
#!/bin/sh
cp "$1" "$1.out" && echo "$1.out"
SH
chmod +x "$WORK/cost-copy.sh"
ccli dynamodb create-table --table-name cost-ledger --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=queue,AttributeType=S AttributeName=task,AttributeType=S \
    --key-schema AttributeName=queue,KeyType=HASH AttributeName=task,KeyType=RANGE >/dev/null

# One daemon run to the drain: name, tasks, input size in bytes, extra --set flags. Prints the proxy's tally.
cost_run() {
    local name=$1 tasks=$2 size=$3
    shift 3
    ccli s3api create-bucket --bucket "$name-in" >/dev/null
    ccli s3api create-bucket --bucket "$name-out" >/dev/null
    local q
    q=$(ccli sqs create-queue --queue-name "$name" --attributes VisibilityTimeout=120 --query QueueUrl --output text)
    [ "$tasks" -eq 0 ] || env "${cost_env[@]}" AWS_ENDPOINT_URL="http://127.0.0.1:$COST_MOTO_PORT" \
        python3 scripts/lib/bench_worker.py fill "$q" "$name-in" "$tasks" "$size"
    reset_counts
    env "${cost_env[@]}" "$BIN" run --set "queueURL=$q" --set "inputBucket=$name-in" --set "outputBucket=$name-out" \
        --set "analysisProgram=$WORK/cost-copy.sh" --set shouldShutdown=false --set idleTimeout=2 --set numThreads=2 \
        --set "workDir=$WORK/$name" --set "logFile=$WORK/$name.log" --log-level warning "$@" >/dev/null 2>&1
    counts
}
# The boto3 loop on the same kind of run.
cost_loop() {
    local name=$1 tasks=$2 size=$3
    ccli s3api create-bucket --bucket "$name-in" >/dev/null
    ccli s3api create-bucket --bucket "$name-out" >/dev/null
    local q
    q=$(ccli sqs create-queue --queue-name "$name" --attributes VisibilityTimeout=120 --query QueueUrl --output text)
    env "${cost_env[@]}" AWS_ENDPOINT_URL="http://127.0.0.1:$COST_MOTO_PORT" \
        python3 scripts/lib/bench_worker.py fill "$q" "$name-in" "$tasks" "$size"
    reset_counts
    env "${cost_env[@]}" python3 scripts/lib/bench_worker.py loop "$q" "$name-in" "$name-out" "$WORK/cost-copy.sh" >/dev/null
    counts
}
empty=$(cost_run cost-empty 0 0)
empty_ledger=$(cost_run cost-empty-l 0 0 --set ledgerTable=cost-ledger)
tiny=$(cost_run cost-tiny "$COST_TASKS" 1024)
tiny_ledger=$(cost_run cost-tiny-l "$COST_TASKS" 1024 --set ledgerTable=cost-ledger)
big=$(cost_run cost-big 1 $((SIZE_MIB << 20)))
big_ledger=$(cost_run cost-big-l 1 $((SIZE_MIB << 20)) --set ledgerTable=cost-ledger)
loop_tiny=$(cost_loop cost-loop "$COST_TASKS" 1024)

python3 - "$COST_TASKS" "$SIZE_MIB" "$empty" "$empty_ledger" "$tiny" "$tiny_ledger" "$big" "$big_ledger" "$loop_tiny" <<'PY'
import json, sys
tasks, size_mib = int(sys.argv[1]), int(sys.argv[2])
empty, empty_l, tiny, tiny_l, big, big_l, loop = (json.loads(a) for a in sys.argv[3:10])
# List prices, USD per million requests (us-east-1): SQS standard; S3 Standard GET/HEAD and PUT/POST/LIST; DynamoDB
# on-demand write and read request units (one unit per item of 1 KiB or less).
def price(kind):
    if kind.startswith("SQS "): return 0.40
    if kind in ("S3 GET", "S3 GET range", "S3 HEAD"): return 0.40
    if kind.startswith("S3 "): return 5.00
    if kind.startswith("DynamoDB ") and kind.split(" ")[1] in ("Query", "GetItem", "Scan"): return 0.25
    if kind.startswith("DynamoDB "): return 1.25
    return 0.0
def per_task(run, baseline, n):
    kinds = set(run) | set(baseline)
    return {k: max(0, run.get(k, 0) - baseline.get(k, 0)) / n for k in kinds}
columns = [("parallelizer, tiny", per_task(tiny, empty, tasks)),
           ("parallelizer + ledger, tiny", per_task(tiny_l, empty_l, tasks)),
           (f"parallelizer, {size_mib} MiB", per_task(big, empty, 1)),
           (f"parallelizer + ledger, {size_mib} MiB", per_task(big_l, empty_l, 1)),
           ("boto3 loop, tiny", per_task(loop, {}, tasks))]
kinds = sorted({k for _, c in columns for k, v in c.items() if v > 0})
print()
print(f"| requests per task ({tasks} tiny tasks, 1 KiB; one of {size_mib} MiB) | " + " | ".join(n for n, _ in columns) + " |")
print("| --- | " + " | ".join("---" for _ in columns) + " |")
for k in kinds:
    print(f"| {k} | " + " | ".join(f"{c.get(k, 0):.2f}" if c.get(k, 0) else "-" for _, c in columns) + " |")
print("| **USD per million tasks** | " + " | ".join(f"**{sum(v * price(k) for k, v in c.items()):.2f}**" for _, c in columns) + " |")
print()
print("Step Functions' Distributed Map: at least $25 a million items (its state transitions alone), before the work.")
print("The empty queue's own calls (start-up, the drain) are counted in a run of their own and taken off.")
PY
