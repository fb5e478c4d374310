#!/usr/bin/env bash
# The GPU checks in one command that fits a short GPU slot (at most 5 minutes on one GPU), for a
# machine with a CUDA GPU and PyTorch. Each part has a time budget the script enforces itself
# (`timeout`); a part that runs out says so, and the script goes on with the next:
#   1. the CUDA training path end to end on spurious-digits: a group-DRO `cnn` teacher and GroupDistil
#      `cnn-small` students in float32, bf16 and fp16 (channels_last), with the teacher cached and
#      online (--augment), runs that learn (the worst group well above 0); each must finish, keep q on
#      the simplex and write final.json; the same float32 runs on the CPU beside them (cuda-runs.md);
#   2. the throughput table of benchmarks/bench_gpu.py, bounded repeats (perf.md, perf.json);
#   3. one more epoch of `distill --method groupdistil` (cached teacher) against a bare PyTorch loop at
#      224 px: ResNet-18, --amp bf16 --channels-last, nothing held in memory, so that every pass decodes
#      its files (benchmarks/bench_steady.py; steady.json).
# Results go to $OUT (default benchmarks/results/gpu); budget.md says which parts finished. Python
# packages the machine lacks can come as wheels in .whl/ (`make gpu-wheels`; installed to /tmp/site).
#
# GPU_CHECK_BUDGETS="P1 P2 P3" sets the parts' budgets in seconds (default "100 50 140"), so the whole
# stays under 5 minutes with start-up. GPU_CHECK_DEVICE=cpu runs the script on the CPU, small (fewer
# epochs, float32 and fp16 with the online teacher only, --quick timings, 120 images in part 3), to
# check the script itself (the test suite does, and checks the budget logic with tiny budgets).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-cuda}
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
read -r -a budgets <<< "${GPU_CHECK_BUDGETS:-100 50 140}"
if ! "$py" -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
work=$(mktemp -d)
export GROUPDISTIL_CACHE=$work/cache GROUPDISTIL_HEADER_RECORD=$work/headers
trap 'rm -rf "$work"' EXIT
export device out py work

# Part 1 learns: the CPU run of the same command reaches a worst-group test accuracy far above 0
# (benchmarks/results/perf-notes.md, "gpu_check part 1"); fewer epochs in the CPU check.
epochs=8 quick=() amps=(none bf16 fp16) teachers=(cached online) images=2000 repeats=5
if [ "$device" = cpu ]; then epochs=2 quick=(--quick) amps=(none fp16) teachers=(online) images=120 repeats=3; fi
export epochs images repeats
amps_s="${amps[*]}" teachers_s="${teachers[*]}" quick_s="${quick[*]:-}"
export amps_s teachers_s quick_s

part1() {
    set -euo pipefail
    gd() { local dev=$1; shift; "$py" -m groupdistil "$@" --dataset spurious-digits --device "$dev" \
        --epochs "$epochs" --lr 0.05 --quiet; }
    run_all() {  # $1: device, $2: folder; the float32 runs only on the CPU beside a GPU
        local dev=$1 dir=$2 amps_here=$amps_s teachers_here=$teachers_s
        if [ "$dev" = cpu ] && [ "$device" != cpu ]; then amps_here=none; fi
        gd "$dev" train --model cnn --method group-dro --step-size 0.01 --out "$dir/teacher"
        for amp in $amps_here; do
            for teacher in $teachers_here; do
                local extra=()
                [ "$teacher" = online ] && extra=(--augment)
                [ "$amp" != none ] && extra+=(--channels-last)
                local start; start=$(date +%s%N)
                gd "$dev" distill --method groupdistil --step-size 0.01 --model cnn-small \
                    --teacher "$dir/teacher/checkpoints/best.pt" --teacher-cache-dir "$dir/cache" \
                    --amp "$amp" "${extra[@]}" --out "$dir/$amp-$teacher"
                echo "$amp-$teacher $(( ($(date +%s%N) - start) / 1000000 ))" >> "$dir/ms"
            done
        done
    }
    mkdir -p "$work/p1/$device" "$work/p1/cpu"
    if [ "$device" != cpu ]; then run_all cpu "$work/p1/cpu" & cpu_pid=$!; fi
    run_all "$device" "$work/p1/$device"
    if [ "$device" != cpu ]; then wait "$cpu_pid"; fi
    "$py" benchmarks/gpu_check_table.py "$work/p1" "$device" "$out/cuda-runs.md"
}

part2() {
    set -euo pipefail
    # Bounded repeats: 5 interleaved samples per variant on CUDA (3 in the CPU check).
    # shellcheck disable=SC2086
    "$py" benchmarks/run.py --only gpu $quick_s --repeats "$repeats" --out "$out"
}

part3() {
    set -euo pipefail
    if [ "$device" = cpu ]; then
        "$py" benchmarks/bench_steady.py --device cpu --size 32 --model linear --workers 1 --batch 32 \
            --images "$images" --out "$out"
    else
        # Nothing held: every pass decodes its files, as where the training split exceeds the budget.
        "$py" benchmarks/bench_steady.py --device "$device" --size 224 --model resnet18 --amp bf16 \
            --channels-last --batch 128 --workers "$(nproc)" --hold-decoded-gb 0 --images "$images" --out "$out"
    fi
}
export -f part1 part2 part3

printf '# gpu_check.sh on %s: the parts and their budgets\n\n| part | budget s | seconds | result |\n| --- | --- | --- | --- |\n' \
    "$device" > "$out/budget.md"
failed=0
for i in 1 2 3; do
    budget=${budgets[$((i - 1))]:-60}
    echo "== part $i (budget ${budget} s)"
    start=$(date +%s)
    set +e
    timeout --kill-after=10 "$budget" bash -c "part$i"
    rc=$?
    set -e
    took=$(( $(date +%s) - start ))
    if [ "$rc" -eq 0 ]; then result=done
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        result="ran out of its budget"
        echo "== part $i ran out of its budget of ${budget} s; going on"
    else
        result="failed (exit $rc)"; failed=1
        echo "== part $i failed (exit $rc); going on"
    fi
    echo "| $i | $budget | $took | $result |" >> "$out/budget.md"
done
cat "$out/budget.md"
exit "$failed"
