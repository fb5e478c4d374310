#!/usr/bin/env bash
# The GPU checks of docs/distributed.md in one command, for a machine with a CUDA GPU and PyTorch:
#   1. the CUDA training path end to end on spurious-digits (cnn-small teacher and GroupDistil student)
#      in float32, bf16 and fp16 with channels_last, with the teacher cached and online (--augment);
#      each run must finish, keep q on the simplex and write final.json (summary: cuda-runs.md);
#   2. the throughput table of benchmarks/bench_gpu.py (perf.md, perf.json).
# Results go to $OUT (default benchmarks/results/gpu). Python packages the machine lacks can come as
# wheels in .whl/ (`make gpu-wheels` downloads them; they are installed to /tmp/site here).
#
# GPU_CHECK_DEVICE=cpu runs the script on the CPU, small (one epoch, float32 and fp16 with the online
# teacher only, --quick timings), to check the script itself (the test suite does).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${GPU_CHECK_DEVICE:-cuda}
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
if ! "$py" -c "import pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
work=$(mktemp -d)
export GROUPDISTIL_CACHE=$work/cache
trap 'rm -rf "$work"' EXIT

epochs=3 quick=() amps=(none bf16 fp16) teachers=(cached online)
if [ "$device" = cpu ]; then epochs=1 quick=(--quick) amps=(none fp16) teachers=(online); fi
gd() { "$py" -m groupdistil "$@" --dataset spurious-digits --device "$device" --epochs "$epochs" --quiet; }

echo "== 1. training path on $device"
gd train --model cnn-small --out "$work/teacher"
runs=()
for amp in "${amps[@]}"; do
    for teacher in "${teachers[@]}"; do
        name=$amp-$teacher
        extra=(); [ "$teacher" = online ] && extra=(--augment)
        [ "$amp" != none ] && extra+=(--channels-last)
        start=$(date +%s%N)
        gd distill --method groupdistil --model cnn-small --teacher "$work/teacher/checkpoints/best.pt" \
            --amp "$amp" "${extra[@]}" --out "$work/$name"
        echo "$name $(( ($(date +%s%N) - start) / 1000000 ))" >> "$work/ms"
        runs+=("$name")
    done
done
"$py" - "$work" "$out/cuda-runs.md" "$device" "${runs[@]}" <<'EOF'
import csv, json, sys
from pathlib import Path
work, dest, device, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
ms = dict(line.split() for line in (work / "ms").read_text().splitlines())
lines = [f"# GroupDistil on spurious-digits, cnn-small, device {device}", "",
         "| run | test avg | test worst-group | overflow steps | max abs(sum q - 1) | seconds |",
         "| --- | --- | --- | --- | --- | --- |"]
for name in names:
    final = json.loads((work / name / "final.json").read_text())
    rows = list(csv.reader(open(work / name / "group_weights.csv")))[1:]
    gap = max(abs(sum(float(v) for v in r[2:]) - 1) for r in rows)
    assert gap < 1e-5, (name, gap)
    epochs = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
    overflow = [e for e in epochs if e["split"] == "train"][-1]["overflow_steps"]  # a running total
    test = final["splits"]["test"]
    lines.append(f"| {name} | {test['avg_acc']:.3f} | {test['worst_group_acc']:.3f} | "
                 f"{overflow} | {gap:.1e} | {int(ms[name]) / 1000:.1f} |")
dest.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

echo "== 2. throughput"
"$py" benchmarks/run.py --only gpu "${quick[@]}" --out "$out"
