# scripts/bench's worker figures (sourced by scripts/bench, which has set BIN, WORK, RUNS, median and the server
# helpers).
# Each figure is printed beside its anchor from the same run: a boto3 loop doing the same work on the same moto.

echo "== worker figures: a local moto (SQS, S3) and SeaweedFS (S3 for the 1 GiB run)"
BW="python3 scripts/lib/bench_worker.py"
MOTO_PORT=$(pz_free_port)
# Signature checks off here: the figures are about the worker, and both sides sign anyway.
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$PZ_RUN_DIR/moto-bench.log" 2>&1 &
PZ_SERVER_PIDS+=($!)
pz_wait_port "$MOTO_PORT" 60
MOTO="http://127.0.0.1:$MOTO_PORT"
export AWS_ENDPOINT_URL="$MOTO" AWS_ACCESS_KEY_ID=AKIABENCHWORKER AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null
cli() { aws --endpoint-url "$MOTO" "$@"; }
queue() { cli sqs create-queue --queue-name "$1" --attributes VisibilityTimeout=60 --query QueueUrl --output text; }
bucket() { cli s3api create-bucket --bucket "$1" >/dev/null; }
cat >"$WORK/copy.sh" <<'SH'
#!/bin/sh
cp "$1" "$1.out" && echo "$1.out"
SH
chmod +x "$WORK/copy.sh"
# The daemon with everything on the command line, as user-data would give it.
daemon() { # queue in out workname program [extra run arguments...]
    local q=$1 in=$2 out=$3 name=$4 program=$5
    shift 5
    echo "$BIN" run --set "queueURL=$q" --set "inputBucket=$in" --set "outputBucket=$out" --set "analysisProgram=$program" \
        --set shouldShutdown=false --set "workDir=$WORK/$name" --set "logFile=$WORK/$name.log" --log-level warning "$@"
}

# --- CPU per task ----------------------------------------------------------------------------------------------------
TASKS=200
for side in ours anchor anchor10; do
    bucket "cpu-in-$side"; bucket "cpu-out-$side"
done
Q_OURS=$(queue cpu-ours); Q_ANCHOR=$(queue cpu-anchor); Q_ANCHOR10=$(queue cpu-anchor10)
$BW fill "$Q_OURS" cpu-in-ours "$TASKS" 1024
$BW fill "$Q_ANCHOR" cpu-in-anchor "$TASKS" 1024
$BW fill "$Q_ANCHOR10" cpu-in-anchor10 "$TASKS" 1024
# shellcheck disable=SC2046
read -r our_wall our_cpu our_hwm <<<"$($BW own $(daemon "$Q_OURS" cpu-in-ours cpu-out-ours cpu "$WORK/copy.sh" \
    --set idleTimeout=2 --receive-wait-seconds 1))"
read -r boto_wall boto_cpu boto_tasks <<<"$($BW loop "$Q_ANCHOR" cpu-in-anchor cpu-out-anchor "$WORK/copy.sh")"
# The daemon receives up to ten messages per call when tasks are short; the plain loop takes one. A second anchor
# takes ten too, to show how much of the gap that is.
read -r _ boto10_cpu boto10_tasks <<<"$($BW loop "$Q_ANCHOR10" cpu-in-anchor10 cpu-out-anchor10 "$WORK/copy.sh" 10)"
OUR_DONE=$(cli s3api list-objects-v2 --bucket cpu-out-ours --query 'length(Contents)' --output text)

# --- start-up to the first ReceiveMessage ----------------------------------------------------------------------------
Q_EMPTY=$(queue empty)
bucket empty-in
our_starts=() boto_starts=()
for i in $(seq 1 "$RUNS"); do
    # shellcheck disable=SC2046
    our_starts+=("$($BW own $(daemon "$Q_EMPTY" empty-in empty-in "start$i" /bin/true --once --receive-wait-seconds 0) | cut -d' ' -f1)")
    boto_starts+=("$($BW startup "$Q_EMPTY")")
done
our_start=$(printf '%s\n' "${our_starts[@]}" | median)
boto_start=$(printf '%s\n' "${boto_starts[@]}" | median)

# --- idle requests ---------------------------------------------------------------------------------------------------
IDLE_SECONDS=${PZ_BENCH_IDLE_SECONDS:-60}
# shellcheck disable=SC2046
$(daemon "$Q_EMPTY" empty-in empty-in idle /bin/true --set numThreads=2 --set idleTimeout=3600) &
IDLE_PID=$!
# Start-up's own calls are not idling: count from 5 s in.
sleep 5
before=$($BW count-requests "$PZ_RUN_DIR/moto-bench.log")
sleep "$IDLE_SECONDS"
kill -TERM "$IDLE_PID"; wait "$IDLE_PID" || true
after=$($BW count-requests "$PZ_RUN_DIR/moto-bench.log")
idle_rate=$(python3 -c "print(f'{($after - $before) / ($IDLE_SECONDS / 60) / 2:.1f}')")

# --- slots on a CPU-bound command ------------------------------------------------------------------------------------
cat >"$WORK/busy.sh" <<'SH'
#!/bin/sh
i=0
while [ $i -lt 150000 ]; do i=$((i + 1)); done
echo "$i" > "$1.out" && echo "$1.out"
SH
chmod +x "$WORK/busy.sh"
SLOT_TASKS=16
declare -A slot_rate
for n in 1 2 4; do
    bucket "slots-in-$n"; bucket "slots-out-$n"
    q=$(queue "slots-$n")
    $BW fill "$q" "slots-in-$n" "$SLOT_TASKS" 1024
    # shellcheck disable=SC2046
    wall=$($BW own $(daemon "$q" "slots-in-$n" "slots-out-$n" "slots$n" "$WORK/busy.sh" --set numThreads=$n \
        --set idleTimeout=1 --receive-wait-seconds 1) | cut -d' ' -f1)
    # The drain at the end (idleTimeout and two empty checks) is not work: take it off.
    slot_rate[$n]=$(python3 -c "print(f'{$SLOT_TASKS / max(0.1, $wall - 3):.2f}')")
done

# --- enqueue ---------------------------------------------------------------------------------------------------------
ENQ_KEYS=${PZ_BENCH_ENQUEUE_KEYS:-500}
seq -f "keys/k%06g.txt" 1 "$ENQ_KEYS" >"$WORK/keys.txt"
Q_ENQ=$(queue enqueue-ours); Q_ENQ_B=$(queue enqueue-anchor)
enq_line=$("$BIN" enqueue --queue-url "$Q_ENQ" --from-file "$WORK/keys.txt" --log-level warning 2>&1 | tail -1)
our_enq_rate=$(sed -n 's/.*(\([0-9.]*\) messages\/s).*/\1/p' <<<"$enq_line")
read -r boto_enq_wall boto_enq_n <<<"$($BW enqueue "$Q_ENQ_B" "$WORK/keys.txt")"
boto_enq_rate=$(python3 -c "print(f'{$boto_enq_n / $boto_enq_wall:.0f}')")

# --- memory of `run` moving 1 GiB in and out -------------------------------------------------------------------------
# The capped run may have started one already.
[ -n "${PZ_TEST_SEAWEED_ENDPOINT:-}" ] || pz_start_seaweed >/dev/null
SW="$PZ_TEST_SEAWEED_ENDPOINT"
sw() { AWS_ACCESS_KEY_ID=$PZ_TEST_SEAWEED_KEY AWS_SECRET_ACCESS_KEY=$PZ_TEST_SEAWEED_SECRET AWS_ENDPOINT_URL_S3=$SW "$@"; }
sw aws --endpoint-url "$SW" s3api create-bucket --bucket rss-in >/dev/null
sw aws --endpoint-url "$SW" s3api create-bucket --bucket rss-out >/dev/null
declare -A run_rss
for size in 10 "$SIZE_MIB"; do
    head -c "$((size << 20))" /dev/urandom >"$WORK/rss-$size.bin"
    sw "$BIN" cp "$WORK/rss-$size.bin" "s3://rss-in/rss-$size.bin" --log-level warning
    rm -f "$WORK/rss-$size.bin"
    q=$(queue "rss-$size")
    cli sqs send-message --queue-url "$q" --message-body "rss-$size.bin" >/dev/null
    # shellcheck disable=SC2046
    read -r _ _ hwm <<<"$(sw $BW own $(daemon "$q" rss-in rss-out "rss$size" "$WORK/copy.sh" --once --receive-wait-seconds 1))"
    run_rss[$size]=$hwm
done
RSS_OUT=$(sw aws --endpoint-url "$SW" s3api head-object --bucket rss-out --key "rss-$SIZE_MIB.bin.out" --query ContentLength --output text)

# --- prefetch: 256 MiB inputs and outputs, a 2-second command, one slot ----------------------------------------------
PF_TASKS=${PZ_BENCH_PREFETCH_TASKS:-8}
PF_MIB=${PZ_BENCH_PREFETCH_MIB:-256}
cat >"$WORK/slow-copy.sh" <<'SH'
#!/bin/sh
sleep 2
cp "$1" "$1.out" && echo "$1.out"
SH
chmod +x "$WORK/slow-copy.sh"
sw aws --endpoint-url "$SW" s3api create-bucket --bucket pf-in >/dev/null
head -c "$((PF_MIB << 20))" /dev/urandom >"$WORK/pf.bin"
for i in $(seq 1 "$PF_TASKS"); do sw "$BIN" cp "$WORK/pf.bin" "s3://pf-in/pf-$i.bin" --log-level warning; done
rm -f "$WORK/pf.bin"
declare -A pf_wall
for mode in false true; do
    sw aws --endpoint-url "$SW" s3api create-bucket --bucket "pf-out-$mode" >/dev/null
    q=$(queue "pf-$mode")
    for i in $(seq 1 "$PF_TASKS"); do cli sqs send-message --queue-url "$q" --message-body "pf-$i.bin" >/dev/null; done
    # shellcheck disable=SC2046
    pf_wall[$mode]=$(sw $BW own $(daemon "$q" pf-in "pf-out-$mode" "pf$mode" "$WORK/slow-copy.sh" --set numThreads=1 \
        --set "prefetch=$mode" --set idleTimeout=1 --receive-wait-seconds 1) | cut -d' ' -f1)
    rm -rf "${WORK:?}/pf$mode"
done

echo
echo "| worker figure | parallelizer | anchor | ratio |"
echo "| --- | --- | --- | --- |"
python3 - "$our_cpu" "$OUR_DONE" "$boto_cpu" "$boto_tasks" "$boto10_cpu" "$boto10_tasks" <<'PY'
import sys
ours, done, boto, tasks, boto10, tasks10 = (float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]),
                                            float(sys.argv[5]), int(sys.argv[6]))
print(f"| own CPU per task (1 KiB in and out, {done} tasks) | {ours / done * 1000:.2f} ms | boto3 loop: {boto / tasks * 1000:.2f} ms "
      f"| {boto / tasks / (ours / done):.1f}x less |")
print(f"| own CPU per task, anchor receiving 10 per call too | {ours / done * 1000:.2f} ms "
      f"| boto3 loop, 10 per receive: {boto10 / tasks10 * 1000:.2f} ms | {boto10 / tasks10 / (ours / done):.1f}x less |")
PY
echo "| start-up to the first ReceiveMessage (median of $RUNS) | $our_start s | boto3: $boto_start s | $(python3 -c "print(f'{$boto_start / $our_start:.1f}x faster')") |"
echo "| requests per minute per idle slot ($IDLE_SECONDS s, 2 slots) | $idle_rate | target: 3 | |"
echo "| tasks/s, CPU-bound command, 1 / 2 / 4 slots ($(nproc) cores) | ${slot_rate[1]} / ${slot_rate[2]} / ${slot_rate[4]} | 1 slot: ${slot_rate[1]} | $(python3 -c "print(f'{${slot_rate[2]} / ${slot_rate[1]}:.2f}x / {${slot_rate[4]} / ${slot_rate[1]}:.2f}x')") |"
echo "| enqueue, $ENQ_KEYS keys (moto is the ceiling: its SendMessageBatch slows as the queue grows) | $our_enq_rate msg/s | boto3 batch loop: $boto_enq_rate msg/s | $(python3 -c "print(f'{$our_enq_rate / $boto_enq_rate:.2f}')") |"
python3 - "$PF_TASKS" "$PF_MIB" "${pf_wall[true]}" "${pf_wall[false]}" <<'PY'
import sys
tasks, mib, on, off = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
# The drain at the end (idleTimeout and two empty checks) is not work: take it off.
per_on, per_off = max(0.1, on - 3) / tasks, max(0.1, off - 3) / tasks
transfer = max(0.0, per_off - 2)
print(f"| tasks per minute, one slot, {mib} MiB in and out, a 2-s command ({tasks} tasks; SeaweedFS) "
      f"| prefetch: {60 / per_on:.1f} | without: {60 / per_off:.1f} | {per_off / per_on:.2f}x "
      f"(transfers {transfer:.1f} s a task: 1/max(command, transfers) = {60 / max(2, transfer):.1f}, "
      f"1/(command + transfers) = {60 / (2 + transfer):.1f}) |")
PY
echo "| peak RSS of \`run\`, 10 MiB in and out | $((run_rss[10] / 1024)) MiB | | |"
echo "| peak RSS of \`run\`, $SIZE_MIB MiB in and out ($RSS_OUT bytes uploaded, multipart) | $((run_rss[$SIZE_MIB] / 1024)) MiB | growth: $(((run_rss[$SIZE_MIB] - run_rss[10]) / 1024)) MiB | target: 40 MiB, growth under 8 |"
