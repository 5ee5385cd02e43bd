# scripts/bench's run figures (sourced by scripts/bench, which has set BIN, WORK, RUNS, SIZE_MIB, median and the
# server helpers):
#   checkpoint: a stop while a command holds a SIZE_MIB checkpoint: from the daemon's SIGTERM to its exit (the command's
#               SIGTERM, the upload to SeaweedFS, the release), beside `aws s3 cp` of the same bytes to the same
#               server; then the next attempt, which restores it, beside `aws s3 cp` down;
#   follow:     `controller --follow`'s reaction to a first message on an empty queue (moto's SQS and EC2), from the
#               send to the first instance listed, beside a boto3 loop that polls the same count every second and
#               launches from the same template.

echo "== run figures: checkpoints (SeaweedFS), follow mode (moto's SQS and EC2)"
RUN_MOTO_PORT=$(pz_free_port)
moto_server -H 127.0.0.1 -p "$RUN_MOTO_PORT" >"$PZ_RUN_DIR/moto-run.log" 2>&1 &
PZ_SERVER_PIDS+=($!)
pz_wait_port "$RUN_MOTO_PORT" 60
RUN_MOTO="http://127.0.0.1:$RUN_MOTO_PORT"
export AWS_ENDPOINT_URL="$RUN_MOTO" AWS_ACCESS_KEY_ID=AKIABENCHRUN AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null
rcli() { aws --endpoint-url "$RUN_MOTO" "$@"; }
[ -n "${PZ_TEST_SEAWEED_ENDPOINT:-}" ] || pz_start_seaweed >/dev/null
RSW="$PZ_TEST_SEAWEED_ENDPOINT"
rsw() { AWS_ACCESS_KEY_ID=$PZ_TEST_SEAWEED_KEY AWS_SECRET_ACCESS_KEY=$PZ_TEST_SEAWEED_SECRET AWS_ENDPOINT_URL_S3=$RSW "$@"; }
now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }

# --- checkpoint ------------------------------------------------------------------------------------------------------
rsw aws --endpoint-url "$RSW" s3api create-bucket --bucket ck-in >/dev/null
rsw aws --endpoint-url "$RSW" s3api create-bucket --bucket ck-out >/dev/null
printf 'x' >"$WORK/ck.txt"
rsw aws --endpoint-url "$RSW" s3 cp "$WORK/ck.txt" s3://ck-in/ck.txt --only-show-errors
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/ck-state.bin"
cat >"$WORK/ck.sh" <<SH
#!/bin/sh
if [ -f "\$PARALLELIZER_CHECKPOINT_DIR/state.bin" ]; then
  cmp -s "\$PARALLELIZER_CHECKPOINT_DIR/state.bin" "$WORK/ck-state.bin" || exit 3
  echo resumed > "\$1.out"; echo "\$1.out"; exit 0
fi
cp "$WORK/ck-state.bin" "\$PARALLELIZER_CHECKPOINT_DIR/state.bin"
touch "$WORK/ck-ready"
trap 'exit 143' TERM
while :; do sleep 0.1; done
SH
chmod +x "$WORK/ck.sh"
ck_stop=() ck_up=() ck_restore=() cli_up=() cli_down=()
for i in $(seq 1 "$RUNS"); do
    q=$(rcli sqs create-queue --queue-name "ck-$i" --attributes VisibilityTimeout=300 --query QueueUrl --output text)
    rcli sqs send-message --queue-url "$q" --message-body ck.txt >/dev/null
    rm -f "$WORK/ck-ready"
    common=(--set "queueURL=$q" --set inputBucket=ck-in --set outputBucket=ck-out --set "analysisProgram=$WORK/ck.sh"
        --set shouldShutdown=false --set checkpoint=true --set checkpointGrace=10 --set shutdownGrace=110
        --set numThreads=1 --set prefetch=false --receive-wait-seconds 1)
    # Through env(1), which execs the daemon: $! is the daemon itself, and the SIGTERM below reaches it.
    env AWS_ACCESS_KEY_ID="$PZ_TEST_SEAWEED_KEY" AWS_SECRET_ACCESS_KEY="$PZ_TEST_SEAWEED_SECRET" \
        AWS_ENDPOINT_URL_S3="$RSW" "$BIN" run "${common[@]}" --set "workDir=$WORK/ck-$i" --set "logFile=$WORK/ck-$i.log" \
        --log-level notice &
    pid=$!
    for _ in $(seq 1 600); do [ -f "$WORK/ck-ready" ] && break; sleep 0.1; done
    t0=$(now)
    kill -TERM "$pid"
    wait "$pid" || true
    t1=$(now)
    ck_stop+=("$(elapsed "$t0" "$t1")")
    ck_up+=("$(sed -n 's/.*checkpoint saved.*checkpoint.seconds=\([0-9.]*\).*/\1/p' "$WORK/ck-$i.log" | tail -1)")
    t0=$(now)
    rsw "$BIN" run "${common[@]}" --set "workDir=$WORK/ckr-$i" --set "logFile=$WORK/ckr-$i.log" --once --log-level warning
    t1=$(now)
    ck_restore+=("$(elapsed "$t0" "$t1")")
    [ "$(rsw aws --endpoint-url "$RSW" s3 cp s3://ck-out/ck.txt.out - 2>/dev/null)" = resumed ] ||
        { echo "the checkpoint did not come back whole" >&2; exit 1; }
    t0=$(now)
    rsw aws --endpoint-url "$RSW" s3 cp "$WORK/ck-state.bin" "s3://ck-out/cli-$i.bin" --only-show-errors
    t1=$(now)
    cli_up+=("$(elapsed "$t0" "$t1")")
    t0=$(now)
    rsw aws --endpoint-url "$RSW" s3 cp "s3://ck-out/cli-$i.bin" "$WORK/cli-down.bin" --only-show-errors
    t1=$(now)
    cli_down+=("$(elapsed "$t0" "$t1")")
    rm -f "$WORK/cli-down.bin"
    rm -rf "$WORK/ck-$i" "$WORK/ckr-$i"
done
rm -f "$WORK/ck-state.bin"
ck_stop_m=$(printf '%s\n' "${ck_stop[@]}" | median)
ck_up_m=$(printf '%s\n' "${ck_up[@]}" | median)
ck_restore_m=$(printf '%s\n' "${ck_restore[@]}" | median)
cli_up_m=$(printf '%s\n' "${cli_up[@]}" | median)
cli_down_m=$(printf '%s\n' "${cli_down[@]}" | median)

# --- follow ----------------------------------------------------------------------------------------------------------
rcli dynamodb create-table --table-name run-ledger --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=queue,AttributeType=S AttributeName=task,AttributeType=S \
    --key-schema AttributeName=queue,KeyType=HASH AttributeName=task,KeyType=RANGE >/dev/null
follow_ours=() follow_boto=()
for i in $(seq 1 "$RUNS"); do
    for side in ours boto; do
        name="follow-$side-$i"
        q=$(rcli sqs create-queue --queue-name "$name" --query QueueUrl --output text)
        rcli ec2 create-launch-template --launch-template-name "parallelizer-$name" --launch-template-data \
            "{\"ImageId\":\"ami-12c6146b\",\"InstanceType\":\"t3.micro\",\"TagSpecifications\":[{\"ResourceType\":\"instance\",\"Tags\":[{\"Key\":\"parallelizer:queue\",\"Value\":\"$q\"}]}]}" >/dev/null
        if [ "$side" = ours ]; then
            "$BIN" controller --queue-url "$q" --follow --min 0 --max 2 --interval 1s --ledger-table run-ledger \
                >"$WORK/$name.log" 2>&1 &
            pid=$!
            # Watching: two rounds on the empty queue first.
            for _ in $(seq 1 300); do [ "$(grep -c 'controller round' "$WORK/$name.log")" -ge 2 ] && break; sleep 0.1; done
        else
            python3 - "$q" "parallelizer-$name" >"$WORK/$name.log" 2>&1 <<'PY' &
import sys, time, boto3
queue, template = sys.argv[1:3]
sqs, ec2 = boto3.client("sqs"), boto3.client("ec2")
while True:
    n = int(sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
            ["Attributes"]["ApproximateNumberOfMessages"])
    if n > 0:
        ec2.run_instances(LaunchTemplate={"LaunchTemplateName": template}, MinCount=1, MaxCount=n)
        break
    time.sleep(1)
PY
            pid=$!
            sleep 2
        fi
        t0=$(now)
        rcli sqs send-message --queue-url "$q" --message-body first.txt >/dev/null
        for _ in $(seq 1 1200); do
            count=$(rcli ec2 describe-instances --filters "Name=tag:parallelizer:queue,Values=$q" \
                --query 'length(Reservations[].Instances[])' --output text)
            [ "$count" != 0 ] && [ "$count" != None ] && break
            sleep 0.1
        done
        t1=$(now)
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        if [ "$side" = ours ]; then follow_ours+=("$(elapsed "$t0" "$t1")"); else follow_boto+=("$(elapsed "$t0" "$t1")"); fi
    done
done
follow_ours_m=$(printf '%s\n' "${follow_ours[@]}" | median)
follow_boto_m=$(printf '%s\n' "${follow_boto[@]}" | median)

fits=$(python3 -c "print(f'{(120 - 10 - 15) * $SIZE_MIB / $ck_up_m / 1024:.1f}')")
echo
echo "| checkpoint (${SIZE_MIB} MiB, median of $RUNS, SeaweedFS on loopback) | parallelizer s | AWS CLI s | ratio |"
echo "| --- | --- | --- | --- |"
echo "| the checkpoint's upload | $ck_up_m | $cli_up_m (s3 cp up) | $(python3 -c "print(f'{$cli_up_m / $ck_up_m:.2f}')") |"
echo "| stop to exit: SIGTERM, the command's exit, the upload, the release | $ck_stop_m | - | - |"
echo "| the next attempt whole: restore, the command, its output, the delete | $ck_restore_m | $cli_down_m (s3 cp down alone) | $(python3 -c "print(f'{$cli_down_m / $ck_restore_m:.2f}')") |"
echo
echo "Within a spot notice's 120 s, with checkpointGrace 10 s and 15 s kept for the rest, about $fits GiB fits at this rate."
echo
echo "| follow mode (median of $RUNS, moto) | parallelizer s | boto3 loop s | ratio |"
echo "| --- | --- | --- | --- |"
echo "| first message on an empty queue to the first instance listed (--interval 1s; the loop polls every 1 s) | $follow_ours_m | $follow_boto_m | $(python3 -c "print(f'{$follow_boto_m / $follow_ours_m:.2f}')") |"
