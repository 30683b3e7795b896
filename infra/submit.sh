#!/usr/bin/env bash
# Submit one of the project's jobs to a Ray cluster with the project's runtime_env.
#
#   RAY_ADDRESS=http://HEAD:8265 infra/submit.sh jobs/pretrain.py --data ... --output ... [key=value ...]
#
# Ships this checkout as the working_dir (.gitignore'd run outputs stay behind), applies
# infra/runtime_env.yaml, names the submission <job>-<UTC time>-<random> and streams the
# logs until the job ends (exit code = the job's). Environment:
#   RAY_ADDRESS      the cluster's dashboard URL (default http://127.0.0.1:8265)
#   RAY_AUTH_MODE    token (default) or disabled; the token comes from RAY_AUTH_TOKEN,
#                    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, never from this script
#   SUBMIT_ARGS      extra `ray job submit` options, e.g. "--no-wait --entrypoint-num-cpus 1"
#   PYTHON           the interpreter on the cluster (default python)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || ! -f "$1" ]]; then
    echo "usage: infra/submit.sh jobs/<job>.py [job arguments...]" >&2
    echo "jobs: $(ls jobs/{featurize,pretrain,finetune,tune,predict,evaluate}.py | tr '\n' ' ')" >&2
    exit 2
fi
script="$1"; shift
job="$(basename "$script" .py)"
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
RAY="${RAY:-ray}"
if ! command -v "$RAY" >/dev/null && [[ -x .venv/bin/ray ]]; then RAY=.venv/bin/ray; fi
id="${job}-$(date -u +%Y%m%d-%H%M%S)-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"

# A head that has just started serves its dashboard before its job agent registers and
# answers "No available agent to submit job" meanwhile: nothing was submitted then, so
# retry for up to a minute. Output still streams (tee); the exit code is the job's.
log="$(mktemp)"; trap 'rm -f "$log"' EXIT
for attempt in $(seq 1 12); do
    set +e
    # shellcheck disable=SC2086  # SUBMIT_ARGS is a list of options
    "$RAY" job submit --address "$RAY_ADDRESS" --submission-id "$id" \
        --working-dir . --runtime-env infra/runtime_env.yaml ${SUBMIT_ARGS:-} \
        -- "${PYTHON:-python}" "$script" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [[ $rc -eq 0 ]] || ! grep -q "No available agent to submit job" "$log"; then
        exit "$rc"
    fi
    echo "submit.sh: the cluster's job agent is not up yet (attempt $attempt of 12); retrying in 5 s" >&2
    sleep 5
done
exit "$rc"
