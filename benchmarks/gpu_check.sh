#!/usr/bin/env bash
# The GPU check of this repository in one script, for a lent GPU machine that has torch, Triton and
# transformers but no package registry (docs/triton.md, "GPU check"). NOT YET RUN ON A GPU.
#
#   bash benchmarks/gpu_check.sh prepare             # here, with PyPI: wheels of what that image lacks -> .whl/
#   bash benchmarks/gpu_check.sh run [SUMMARY.md]    # there: install .whl/, run the checks, write the summary
#   bash benchmarks/gpu_check.sh dry-run             # print each step's command; run nothing
#   bash benchmarks/gpu_check.sh cpu-smoke [SUMMARY.md]  # each step's CPU-runnable part, tiny shapes
#
# `run` takes at most 8 minutes: every step gets its own time limit, the steps run most important
# first, and a step whose time is not left is reported as skipped. The summary (Markdown) goes to
# SUMMARY.md (default benchmarks/results/gpu_check.md); logs stay in $GPU_CHECK_WORK (default: a new
# folder under /tmp), whose path the summary names.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=$REPO/.whl
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # the steps' share of the 8 minutes (installing and setup take the rest)

# What the GPU image lacks, at the versions the project's own environment runs (pyproject.toml), as
# CPython 3.12 manylinux x86-64 wheels; antlr4's runtime is published as a source archive only, so
# `prepare` builds its (pure Python) wheel here.
BINARY_PINS=(ve-fairseq==0.12.3 hydra-core==1.3.8 omegaconf==2.3.1 bitarray==3.12.3)
SOURCE_PINS=(antlr4-python3-runtime==4.9.3)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

prepare() {
    mkdir -p "$WHEELS"
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$WHEELS" "${BINARY_PINS[@]}"
    "$PY" -m pip wheel --no-deps -w "$WHEELS" "${SOURCE_PINS[@]}"
    du -sh "$WHEELS"
    echo "carry .whl to the GPU machine with the working tree (it is git-ignored)"
}

MODE=${1:-}
case "$MODE" in
    prepare) prepare; exit 0 ;;
    run | cpu-smoke | dry-run) SUMMARY=${2:-$REPO/benchmarks/results/gpu_check.md} ;;
    *) usage ;;
esac

WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
SITE=$WORK/site
mkdir -p "$WORK"
if [[ $MODE == dry-run && -z ${GPU_CHECK_WORK:-} ]]; then
    trap 'rm -rf "$WORK"' EXIT
fi
HEAD=$WORK/head.md
SECTIONS=$WORK/sections.md
: >"$SECTIONS"
FAILED=0

note() { printf '%s\n' "$*" >>"$SECTIONS"; }

# step NAME SECONDS COMMAND... : run COMMAND with at most SECONDS (less if the budget has less), its
# output in $WORK/NAME.log; returns the command's status (124: out of time, 125: not started).
step() {
    local name=$1 cap=$2 rc=0
    shift 2
    if [[ $MODE == dry-run ]]; then
        printf '[%s, <= %ss] %s\n' "$name" "$cap" "$*"
        return 0
    fi
    local left=$((BUDGET_S - SECONDS))
    ((cap > left)) && cap=$left
    if ((cap < 20)); then
        note "_skipped: out of time (${left}s of the budget left)_"
        return 125
    fi
    echo "== $name (<= ${cap}s): $*"
    timeout --kill-after=10 "$cap" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    ((rc == 124)) && note "_stopped at its ${cap}s limit_"
    echo "   exit $rc after $((SECONDS))s in all"
    return "$rc"
}

# verdict NAME STATUS: one line saying how a step ended; a failure makes the script fail at the end.
verdict() {
    if (($2 == 0)); then
        note "**$1: passed**"
    else
        note "**$1: FAILED (exit $2)**"
        FAILED=1
    fi
}

log_tail() {  # the last lines of a step's log (those matching $3, if given), as a code block
    note '```'
    grep -E "${3:-.}" "$WORK/$1.log" 2>/dev/null | tail -n "$2" >>"$SECTIONS" || true
    note '```'
}
PYTEST_LINES='passed|failed|skipped|deselected|error|PASSED|FAILED|SKIPPED|ERROR|Error' 

# ------------------------------------------------------------------ environment and wheels

if [[ $MODE != dry-run ]]; then
    if [[ ! -d $WHEELS ]] || ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "no wheels in $WHEELS: run 'bash benchmarks/gpu_check.sh prepare' where PyPI is reachable" >&2
        exit 1
    fi
    if [[ $MODE == run ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl
    else  # the CPU's Python may differ from the GPU image's 3.12: only check that they install there
        "$PY" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
            --implementation cp "${PLATFORMS[@]}" --target "$WORK/site-3.12" "$WHEELS"/*.whl
        SITE=""
    fi
fi
export PYTHONPATH=$REPO${SITE:+:$SITE}
unset TRITON_INTERPRET  # tests/conftest.py sets it where there is no CUDA
export PYTHONUNBUFFERED=1

[[ $MODE == dry-run ]] || {
    echo "# GPU check ($MODE)"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%MZ); commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
    echo "- $("$PY" -c 'import sys, torch, triton; print(f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), Triton {triton.__version__}")' 2>&1 | tail -n 1)"
    echo "- fairseq: $("$PY" -c 'import fairseq; print(fairseq.__version__)' 2>&1 | tail -n 1)"
    echo "- logs: $WORK"
} | tee "$HEAD"

# ------------------------------------------------------------------ 1. the GPU tests

note "## pytest -m gpu"
rc=0
step tests 170 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs tests || rc=$?
log_tail tests 25 "$PYTEST_LINES"
if [[ $MODE == cpu-smoke ]]; then  # no CUDA: every gpu test must be collected and skipped, none fail
    ((rc == 0)) && grep -qE '[0-9]+ skipped' "$WORK/tests.log" && ! grep -qE '[0-9]+ (passed|failed)' "$WORK/tests.log" \
        || rc=1
fi
verdict "GPU tests" "$rc"

# ------------------------------------------------------------------ 2. training through fairseq-train

DATA=$WORK/data
if [[ $MODE == cpu-smoke ]]; then  # a 2-layer model, fp32, the torch backend (interpreted Triton is far too slow)
    TOKENS=256 UPDATES=8 BACKEND=torch MODEL=(--encoder-layers 2 --encoder-embed-dim 64 --encoder-ffn-embed-dim 128
        --encoder-attention-heads 4 --attention-window 32 --cpu --lr 1e-3)
else
    TOKENS=4096 UPDATES=20 BACKEND=triton MODEL=(--attention-window 512 --fp16 --lr 3e-4)
fi
note "## fairseq-train: longformer_roberta_base ${MODEL[*]}, backend $BACKEND"
rc=0
step data 60 "$PY" benchmarks/gpu_check.py data "$DATA" --tokens $((TOKENS * 2 * (UPDATES + 5))) || rc=$?
# fairseq-train's console script is fairseq_cli.train's cli_main; run as a module, it needs no script on PATH.
((rc == 0)) && { step train 150 "$PY" -m fairseq_cli.train "$DATA" --user-dir "$REPO/fairseq_longformer" \
    --task masked_lm --criterion masked_lm_bpc --arch longformer_roberta_base --attention-backend "$BACKEND" \
    --max-positions "$TOKENS" --tokens-per-sample "$TOKENS" --sample-break-mode none "${MODEL[@]}" \
    --batch-size 2 --required-batch-size-multiple 1 --max-update "$UPDATES" --optimizer adam \
    --adam-betas '(0.9,0.98)' --lr-scheduler polynomial_decay --warmup-updates 5 --total-num-update "$UPDATES" \
    --dropout 0.1 --attention-dropout 0.1 --disable-validation --no-save --save-dir "$WORK/checkpoints" \
    --num-workers 0 --seed 1 \
    --log-format json --log-interval 1 || rc=$?; }
if ((rc == 0)) && [[ $MODE != dry-run ]]; then
    "$PY" benchmarks/gpu_check.py train-summary "$WORK/train.log" >>"$SECTIONS" || rc=$?
else
    log_tail train 25
fi
verdict "training ($UPDATES updates, $TOKENS tokens, loss finite and falling)" "$rc"

# ------------------------------------------------------------------ 3. attention benchmark

note "## benchmarks/attention_gpu.py, T = 4,096 and 16,384, bf16"
rc=0
step bench 170 "$PY" benchmarks/attention_gpu.py --lengths 4096 16384 --dtypes bf16 --modes fwd fwdbwd \
    --out "$WORK/attention_gpu.png" || rc=$?
if [[ $MODE == cpu-smoke ]] && grep -q "needs a CUDA GPU" "$WORK/bench.log"; then
    rc=0
    note "_no CUDA: its arguments parsed, nothing was timed_"
fi
if grep -q '^impl ' "$WORK/bench.log" 2>/dev/null; then
    note '```'
    sed -n '/^impl /,$p' "$WORK/bench.log" >>"$SECTIONS"
    note '```'
fi
((rc == 0)) || [[ $MODE == cpu-smoke ]] || log_tail bench 10
verdict "attention benchmark" "$rc"

# ------------------------------------------------------------------ 4. what the JIT built

note "## Registers, spills, shared memory of the kernels the JIT built (compare docs/triton.md's sm_90 table)"
rc=0
if [[ $MODE == cpu-smoke ]]; then  # no JIT without CUDA: one ahead-of-time build instead
    step kernels 120 "$PY" -m triton_kernels.triton_aot --cases d64-bf16 --only row_dot || rc=$?
else
    step kernels 90 "$PY" -m triton_kernels.triton_aot --jit --cases d64-bf16 d64-bf16-dropout d64-fp32-ieee \
        charlm-dropout roberta-dropout || rc=$?
fi
sed -n '/^| kernel/,$p' "$WORK/kernels.log" >>"$SECTIONS" 2>/dev/null || true
((rc == 0)) || log_tail kernels 10
verdict "kernel build report" "$rc"

# ------------------------------------------------------------------ 5. the Triton tests, compiled

if [[ $MODE != cpu-smoke ]]; then  # on CPU this is the ordinary test suite
    note "## tests/test_triton_attention.py compiled on the GPU (16 x 16 tiles)"
    rc=0
    step triton_tests 150 "$PY" -m pytest -q -p no:cacheprovider -m "not gpu" tests/test_triton_attention.py || rc=$?
    log_tail triton_tests 25 "$PYTEST_LINES"
    verdict "Triton tests on the GPU" "$rc"
fi

[[ $MODE == dry-run ]] && exit 0
mkdir -p "$(dirname "$SUMMARY")"
{
    cat "$HEAD"
    echo "- verdict: $( ((FAILED)) && echo 'SOME CHECKS FAILED' || echo 'all checks passed'), in ${SECONDS}s"
    echo
    cat "$SECTIONS"
} >"$SUMMARY"
echo "summary: $SUMMARY"
exit "$FAILED"
