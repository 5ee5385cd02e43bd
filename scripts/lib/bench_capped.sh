# scripts/bench's capped transfers (sourced by scripts/bench, which has set BIN, WORK, RUNS, URL's nginx with its
# capped server on CAPPED_PORT, CAP_MIBPS, median and the server helpers).
#
# S3 serves one connection at roughly 85-100 MB/s: a client reaches an instance's link speed only through several.
# Here every connection is capped at CAP_MIBPS MiB/s: GETs by nginx's `limit_rate`, PUTs by our throttling proxy in
# front of SeaweedFS (nginx has no multipart API). Each figure stands beside curl's one stream and the AWS CLI (ranged
# GETs and multipart PUTs, 10 at a time) from the same run, with the peak RSS of each.

echo "== capped transfers: each connection at most ${CAP_MIBPS} MiB/s"
pz_start_seaweed
SW_PROXY_PORT=$(pz_free_port)
python3 scripts/lib/throttle_proxy.py --port "$SW_PROXY_PORT" --upstream "${PZ_TEST_SEAWEED_ENDPOINT#http://}" \
    --up-mbps "$(python3 -c "print($CAP_MIBPS * 1.048576)")" >"$PZ_RUN_DIR/throttle.log" 2>&1 &
PZ_SERVER_PIDS+=($!)
pz_wait_port "$SW_PROXY_PORT" 10
SW="http://127.0.0.1:$SW_PROXY_PORT"
CAPPED="http://127.0.0.1:$CAPPED_PORT"
printf '[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n' >"$WORK/cli-capped.cfg"
sw_env() { env AWS_ACCESS_KEY_ID="$PZ_TEST_SEAWEED_KEY" AWS_SECRET_ACCESS_KEY="$PZ_TEST_SEAWEED_SECRET" \
    AWS_ENDPOINT_URL="$SW" AWS_CONFIG_FILE="$WORK/cli-capped.cfg" "$@"; }
sw_env aws --endpoint-url "$SW" s3api create-bucket --bucket capped >/dev/null
# Our client in its defaults (8 connections, 16 MiB pieces) is what is measured; curl is one stream.
get_curl() { curl -sf -o "$WORK/out.bin" "$CAPPED/bench/$1"; }
get_ours() { AWS_ENDPOINT_URL="$CAPPED" "$BIN" cp "s3://bench/$1" "$WORK/out.bin" --log-level warning ${2:+--concurrency $2}; }
get_cli() { AWS_CONFIG_FILE="$WORK/cli-capped.cfg" aws --endpoint-url "$CAPPED" s3 cp "s3://bench/$1" "$WORK/out.bin" --only-show-errors; }
put_curl() { curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$PZ_TEST_SEAWEED_KEY:$PZ_TEST_SEAWEED_SECRET" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$WORK/www/bench/$1" "$SW/capped/curl-$1"; }
put_ours() { sw_env "$BIN" cp "$WORK/www/bench/$1" "s3://capped/ours-$1" --log-level warning ${2:+--concurrency $2}; }
put_cli() { sw_env aws --endpoint-url "$SW" s3 cp "$WORK/www/bench/$1" "s3://capped/cli-$1" --only-show-errors; }
export -f get_curl get_ours get_cli put_curl put_ours put_cli sw_env
export CAPPED SW BIN WORK PZ_TEST_SEAWEED_KEY PZ_TEST_SEAWEED_SECRET
# Unknown to curl: only our client and the CLI are given these.
unset AWS_ENDPOINT_URL

capped_rows=()
for size_mib in ${PZ_BENCH_CAPPED_SIZES_MIB:-512 4096}; do
    name="capped-$size_mib.bin"
    head -c "$((size_mib << 20))" /dev/urandom >"$WORK/www/bench/$name"
    runs=$RUNS
    [ "$size_mib" -gt 1024 ] && runs=1
    declare -A results=()
    for i in $(seq 1 "$runs"); do
        # ours16: the same client with 16 connections instead of its default 8.
        for contender in curl ours ours16 cli; do
            fn=${contender%16}
            arg=""; [ "$contender" = ours16 ] && arg=16
            rm -f "$WORK/out.bin"
            results[get_$contender]+="$(python3 scripts/lib/measure.py bash -c "get_$fn $name $arg")"$'\n'
            cmp -s "$WORK/out.bin" "$WORK/www/bench/$name" || { echo "capped GET by $contender differs" >&2; exit 1; }
            results[put_$contender]+="$(python3 scripts/lib/measure.py bash -c "put_$fn $name $arg")"$'\n'
            sw_env aws --endpoint-url "$SW" s3 rm "s3://capped/$fn-$name" --only-show-errors || true
        done
    done
    rm -f "$WORK/out.bin" "$WORK/www/bench/$name"
    pick() { printf '%s' "${results[$1]}" | sed '/^$/d' | sort -n | sed -n "$(((runs + 1) / 2))p"; }
    bytes=$((size_mib << 20))
    for dir in get put; do
        for ours in ours ours16; do
        read -r c_s c_rss _ <<<"$(pick "${dir}_curl")"
        read -r o_s o_rss _ <<<"$(pick "${dir}_$ours")"
        read -r a_s a_rss _ <<<"$(pick "${dir}_cli")"
        capped_rows+=("$(python3 - "$dir" "$size_mib" "$runs" "$bytes" "$o_s" "$c_s" "$a_s" "$o_rss" "$c_rss" "$a_rss" "$ours" <<'PY'
import sys
d, size, runs, n = sys.argv[1].upper(), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
o, c, a = (float(x) for x in sys.argv[5:8])
ro, rc, ra = (int(x) // 1024 for x in sys.argv[8:11])
mb = lambda s: f"{n / 1e6 / s:.0f}"
label = f"{d} {size if size < 1024 else size // 1024} {'MiB' if size < 1024 else 'GiB'} ({'median of ' + str(runs) if runs > 1 else 'one run'}), {16 if sys.argv[11] == 'ours16' else 8} connections"
print(f"| {label} | {mb(o)} | {mb(c)} | {c / o:.1f}x | {mb(a)} | {a / o:.2f}x | {ro} MiB | {rc} MiB | {ra} MiB |")
PY
)")
        done
    done
done
echo
echo "| capped at ${CAP_MIBPS} MiB/s per connection | parallelizer MB/s | curl (one stream) MB/s | ours vs curl | AWS CLI MB/s | ours vs AWS CLI | parallelizer peak RSS | curl peak RSS | AWS CLI peak RSS |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${capped_rows[@]}"
echo
echo "GET: nginx on loopback with limit_rate; PUT: SeaweedFS behind a proxy capping each connection's upload. Ours:"
echo "16 MiB ranges and parts, 8 or 16 connections; the AWS CLI: its defaults (10 at a time, 8 MiB)."
