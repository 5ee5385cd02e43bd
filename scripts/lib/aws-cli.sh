# Helpers shared by the provisioning scripts (setup-aws, launch, teardown). Sourced after the options are read:
# REGION (empty when none was given) and ENDPOINT.

command -v aws >/dev/null 2>&1 || { echo "$(basename "$0"): the AWS CLI (aws) is required" >&2; exit 1; }

# A region from the options or the environment, else the CLI's profile, else us-east-1.
REGION=${REGION:-$(aws configure get region 2>/dev/null || true)}
REGION=${REGION:-us-east-1}

# The AWS CLI with this run's region and endpoint, text output unquoted: `awsq sqs get-queue-url ... --query QueueUrl`.
awsq() {
    local endpoint=()
    [ -z "${ENDPOINT:-}" ] || endpoint=(--endpoint-url "$ENDPOINT")
    local out
    out=$(aws "${endpoint[@]}" --region "$REGION" --output json "$@") || return $?
    # A JSON string result becomes the bare string; anything else is printed as it came.
    python3 -c 'import json,sys
text = sys.stdin.read()
try:
    v = json.loads(text) if text.strip() else ""
except ValueError:
    print(text, end=""); sys.exit(0)
if isinstance(v, str): print(v)
elif isinstance(v, list) and all(isinstance(x, str) for x in v): print("\n".join(v))
else: print(json.dumps(v))' <<<"$out"
}

# A JSON document with sorted keys and no whitespace, so two documents compare as strings.
canonical_json() {
    python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1]), sort_keys=True, separators=(",",":")))' "$1"
}

# The name launch gives a queue's Auto Scaling group and launch template, and teardown looks for.
fleet_group_name() { printf 'parallelizer-%s' "${1##*/}"; }

# One line per resource on stderr: what it is and what this run did to it.
report() { printf '  %-58s %s\n' "$1" "$2" >&2; }
