# Starting and stopping the real local AWS peers on 127.0.0.1. Sourced by scripts/test, scripts/demo, scripts/bench.
# Each start_* function exports the variables the tests and tools read, and registers the process for stop_servers.

PZ_SERVER_PIDS=()
PZ_RUN_DIR="${PZ_RUN_DIR:-$(mktemp -d /tmp/parallelizer-run.XXXXXX)}"
PZ_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

pz_free_port() { python3 "$PZ_LIB_DIR/free_port.py" "${1:-1}"; }

# Waits until a TCP port accepts connections, or fails after $2 seconds (default 60).
pz_wait_port() {
    local port=$1 limit=${2:-60} host=${3:-127.0.0.1} waited=0
    until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('$host',$port)))" 2>/dev/null; do
        sleep 0.5
        waited=$((waited + 1))
        if [ "$waited" -ge $((limit * 2)) ]; then
            echo "server on port $port did not start; its log:" >&2
            tail -n 30 "$PZ_RUN_DIR"/*.log >&2 || true
            return 1
        fi
    done
}

# Debian packages to install, collected by pz_need_tool and installed at once by pz_apt_install.
PZ_APT_NEEDED=()

# Notes Debian package PACKAGE for installation when COMMAND is not found (on PATH or in /usr/sbin, /sbin).
pz_need_tool() {
    local command=$1 package=$2
    command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || [ -x "/sbin/$command" ] \
        || PZ_APT_NEEDED+=("$package")
}

# Installs the Debian packages given and those pz_need_tool noted. Where that cannot be done (no root and no sudo,
# no network), it says which packages are missing and goes on: the tests that need one fail with a line naming it.
pz_apt_install() {
    local packages=("${PZ_APT_NEEDED[@]}" "$@")
    PZ_APT_NEEDED=()
    [ "${#packages[@]}" -gt 0 ] || return 0
    echo "installing ${packages[*]}" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "cannot install ${packages[*]}: not root and no sudo; install them to run what needs them" >&2
            return 0
        }
        sudo="sudo"
    fi
    # (Through env: sudo clears the environment. A lock timeout: a fresh cloud machine may be running its own
    # unattended upgrades.)
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
        && $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${packages[@]}" \
            >/dev/null \
        || echo "could not install ${packages[*]}; what needs them will fail, naming the package" >&2
}

# Installs the Debian packages a build needs when they are missing: the C libraries and binutils. Arguments are
# more packages to install.
pz_install_dependencies_build() {
    pz_need_tool objdump binutils
    pkg-config --exists libcurl 2>/dev/null || PZ_APT_NEEDED+=(libcurl4-openssl-dev)
    pkg-config --exists libcrypto 2>/dev/null || PZ_APT_NEEDED+=(libssl-dev)
    pkg-config --exists zlib 2>/dev/null || PZ_APT_NEEDED+=(zlib1g-dev)
    pz_apt_install "$@"
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

# The project's own virtual environment for the test peers, always: a moto_server, aws or python3 found elsewhere
# on PATH (pyenv, a system pip, an older run) is never used, since another version of a peer behaves otherwise.
PZ_VENV="${PZ_VENV_DIR:-$(cd "$PZ_LIB_DIR/../.." && pwd)/.build-venv}"
PZ_PEERS_REQUIREMENTS="$PZ_LIB_DIR/peers-requirements.txt"

# Makes .build-venv when missing (installing Debian's python3-venv when the python3 on PATH cannot make one), puts
# its bin/ first on PATH for this script and what it starts, and installs the pinned peers when any installed version
# differs from its pin (scripts/lib/check_peers.py).
pz_python_env() {
    # A venv whose python is gone or replaced (an upgrade in place), or whose pip never got installed (an
    # interrupted creation), is made again.
    if [ ! -x "$PZ_VENV/bin/python3" ] || ! "$PZ_VENV/bin/python3" -m pip --version >/dev/null 2>&1; then
        rm -rf "$PZ_VENV"
        echo "creating the test peers' Python virtual environment in $PZ_VENV" >&2
        # A fresh Debian may have no python3 at all, and its python3 has no venv (ensurepip) without python3-venv.
        if ! python3 -m venv "$PZ_VENV" >/dev/null 2>&1; then
            rm -rf "$PZ_VENV"
            pz_apt_install python3-venv
            python3 -m venv "$PZ_VENV" || { echo "cannot make a Python virtual environment: install python3-venv" >&2; return 1; }
        fi
    fi
    export PATH="$PZ_VENV/bin:$PATH"
    export VIRTUAL_ENV="$PZ_VENV"
    hash -r
    local mismatch
    if ! mismatch=$("$PZ_VENV/bin/python3" "$PZ_LIB_DIR/check_peers.py" "$PZ_PEERS_REQUIREMENTS"); then
        echo "installing the pinned test peers ($(echo "$mismatch" | head -n 3 | paste -sd ';' -)...)" >&2
        # (No user's pip configuration or PYTHONPATH: the pins alone decide.)
        env -u PYTHONPATH PIP_CONFIG_FILE=/dev/null PIP_USER=0 \
            "$PZ_VENV/bin/python3" -m pip install -q --disable-pip-version-check -r "$PZ_PEERS_REQUIREMENTS" >&2
        mismatch=$("$PZ_VENV/bin/python3" "$PZ_LIB_DIR/check_peers.py" "$PZ_PEERS_REQUIREMENTS") || {
            echo "the test peers are still not as pinned after installing them:" >&2
            echo "$mismatch" >&2
            return 1
        }
        hash -r
    fi
}

# Installs what the tests and the demo need when it is missing: the build's packages (and any Debian packages given
# as arguments), the tools the scripts call, and the pinned test peers in the project's virtual environment.
pz_install_dependencies() {
    # zip and unzip: the tests make and read environment archives with them, as users do.
    pz_need_tool unzip unzip
    pz_need_tool zip zip
    pz_install_dependencies_build "$@"
    pz_python_env
}

# moto_server with signature checking on. Exports AWS_ENDPOINT_URL-style variables for tests.
pz_start_moto() {
    local port host=${PZ_MOTO_HOST:-127.0.0.1}
    port=$(pz_free_port)
    # moto_server through a small wrapper that closes a race in its ReceiveMessage (scripts/lib/moto_server.py).
    # PZ_MOTO_HOST: another local address to listen on (the boot test's veth, which its guest reaches).
    # PZ_MOTO_BIND: the address it binds, when not that one (0.0.0.0 in a network namespace of a test's own).
    INITIAL_NO_AUTH_ACTION_COUNT=3 python3 "$PZ_LIB_DIR/moto_server.py" -H "${PZ_MOTO_BIND:-$host}" -p "$port" \
        >"$PZ_RUN_DIR/moto.log" 2>&1 &
    PZ_SERVER_PIDS+=($!)
    pz_wait_port "$port" 60 "$host"
    export PZ_TEST_MOTO_ENDPOINT="http://$host:$port"
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
    python3 - "$PZ_TEST_SEAWEED_ENDPOINT/" <<'PY' || true
import sys, time, urllib.error, urllib.request
for _ in range(60):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        break
    except urllib.error.HTTPError as error:
        if error.code < 500:
            break
    except OSError:
        pass
    time.sleep(0.5)
PY
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
