#!/usr/bin/env bash
# The GPU check (README "A GPU (CUDA)"), run on a machine with an NVIDIA GPU after
# tests/gpu/prepare.sh (which built target/gpu-check/ here): builds nothing. Every
# step writes its log to $OUT (default target/gpu-check/out) and the summary to
# $OUT/summary.txt; a failing step is reported and the next one still runs.
#
#   1. nvidia-smi; the tiny pack's parity with its PyTorch reference on the GPU
#      (`model verify --device cuda`) and the engine's, scores and maps, GPU against CPU
#   2. with the machine's PyTorch (+ the carried open_clip wheels): the engine on the
#      GPU against models/winclip_reference.py (tiny pack, K = 0 and 4)
#   3. a full-size random ViT-B-16-plus-240 pack exported here: `model verify` on the GPU
#      (when onnxruntime is present for its reference outputs), then `bench` K=4 on the
#      CPU and on the GPU (with and without needed-rows narrowing), each GPU run also
#      compared with the CPU f32 encoder on the same pictures
#
#   DEVICE=cpu tests/gpu/check.sh   # a dry run of the plumbing on a machine without a GPU
set -uo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=target/gpu-check
OUT=${OUT:-$BUNDLE/out}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
BIN=$BUNDLE/winclip-edge
[ -x "$BIN" ] || BIN=${WINCLIP_BIN:-target/release/winclip-edge}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
export RUST_LOG=${RUST_LOG:-info}
# tract caches the kernels NVRTC compiles here: the first run pays the compile.
export XDG_CACHE_HOME=$WORK/cache

step() { # step NAME COMMAND...: run, log to $OUT/NAME.log, note the outcome
    local name=$1 t0 rc
    shift
    t0=$(date +%s%N)
    "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%-34s %s (%d ms)\n' "$name" "$([ $rc = 0 ] && echo ok || echo "FAILED rc=$rc")" \
        $((($(date +%s%N) - t0) / 1000000)) | tee -a "$SUMMARY"
    return $rc
}

step machine sh -c "nvidia-smi || true; uname -a; nproc; free -g; ls -l $BIN"
step verify-tiny-$DEVICE "$BIN" model verify --model models/tiny --device "$DEVICE"

# The engine on the fixtures, this device against the CPU.
SHOTS=tests/fixtures/winclip/shots
QUERIES=(tests/fixtures/winclip/queries/{good,hole,scratch}.png)
step bank-tiny-k4 "$BIN" bank --model models/tiny --object bottle --shots "$SHOTS" --threshold 0.3 -o "$WORK/k4.bank"
step bank-tiny-k0 "$BIN" bank --model models/tiny --object bottle -o "$WORK/k0.bank"
for k in 0 4; do
    for d in cpu "$DEVICE"; do
        mkdir -p "$WORK/maps-$k-$d"
        "$BIN" inspect --model models/tiny --bank "$WORK/k$k.bank" --json --maps "$WORK/maps-$k-$d" \
            --device "$d" "${QUERIES[@]}" >"$WORK/inspect-$k-$d.jsonl" 2>"$OUT/inspect-tiny-k$k-$d.log"
    done
done
compare_devices() {
    "$PYTHON" - "$WORK" "$DEVICE" <<'PY'
import json, os, sys
import numpy as np
work, dev = sys.argv[1], sys.argv[2]
ok = True
for k in (0, 4):
    a = [json.loads(l) for l in open(f"{work}/inspect-{k}-cpu.jsonl")]
    b = [json.loads(l) for l in open(f"{work}/inspect-{k}-{dev}.jsonl")]
    ds = max(abs(x["score"] - y["score"]) for x, y in zip(a, b))
    worst, r = 0.0, 1.0
    for x in a:
        stem = os.path.splitext(os.path.basename(x["file"]))[0]
        m = np.load(f"{work}/maps-{k}-cpu/{stem}.npy")
        n = np.load(f"{work}/maps-{k}-{dev}/{stem}.npy")
        worst = max(worst, float(np.abs(m - n).max()))
        r = min(r, float(np.corrcoef(m.ravel(), n.ravel())[0, 1]))
    same = all(x["verdict"] == y["verdict"] for x, y in zip(a, b))
    good = ds <= 1e-4 and worst <= 1e-4 and r >= 0.999 and same
    ok &= good
    print(f"K={k}: {dev} vs cpu, {len(a)} pictures: max |score diff| {ds:.2e}, max |map diff| {worst:.2e}, "
          f"min map Pearson r {r:.6f}, verdicts {'identical' if same else 'DIFFER'}: {'PASS' if good else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
}
step engine-tiny-$DEVICE-vs-cpu compare_devices

# PyTorch with the carried open_clip (pure Python, --no-deps) beside the machine's own.
if "$PYTHON" -c 'import torch, torchvision, numpy, PIL' 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-deps --disable-pip-version-check --target "$WORK/py" \
        "$BUNDLE"/wheels/open_clip_torch-*.whl "$BUNDLE"/wheels/ftfy-*.whl "$BUNDLE"/wheels/wcwidth-*.whl >"$OUT/pip.log" 2>&1
    "$PYTHON" -m pip install -q --no-deps --disable-pip-version-check --target "$WORK/py" \
        --find-links "$BUNDLE/wheels" --no-index regex >>"$OUT/pip.log" 2>&1
    export PYTHONPATH=$WORK/py${PYTHONPATH:+:$PYTHONPATH}
    for k in 0 4; do
        shots=()
        [ "$k" = 4 ] && shots=(--shots "$SHOTS"/00{0,1,2,3}.png)
        step engine-tiny-k$k-vs-pytorch "$PYTHON" models/winclip_reference.py --tiny --seed 0 --object bottle \
            "${shots[@]}" --ks "$k" --images "${QUERIES[@]}" \
            --compare-json "$WORK/inspect-$k-$DEVICE.jsonl" --compare-maps "$WORK/maps-$k-$DEVICE"
    done
    FULL=$WORK/vit-b-16-plus-240
    [ "${SKIP_FULL:-0}" = 1 ] && FULL=
    noref=()
    "$PYTHON" -c 'import onnxruntime, safetensors, tokenizers' 2>/dev/null || noref=(--no-reference)
    if [ -n "$FULL" ] && step export-full "$PYTHON" models/export.py --pretrained none --seed 0 --out "$FULL" "${noref[@]}"; then
        [ ${#noref[@]} = 0 ] && step verify-full-$DEVICE "$BIN" model verify --model "$FULL" --device "$DEVICE"
        step bench-full-cpu "$BIN" bench --model "$FULL" --k 4 --images 5 --json "$OUT/bench-full-cpu.json"
        step bench-full-$DEVICE "$BIN" bench --model "$FULL" --k 4 --images 5 --device "$DEVICE" \
            --json "$OUT/bench-full-$DEVICE.json"
        WINCLIP_NEEDED_ROWS=off step bench-full-$DEVICE-unnarrowed "$BIN" bench --model "$FULL" --k 4 --images 5 \
            --device "$DEVICE" --json "$OUT/bench-full-$DEVICE-unnarrowed.json"
    fi
else
    echo "no PyTorch here: the PyTorch and full-size steps are skipped" | tee -a "$SUMMARY"
fi
step bench-tiny-$DEVICE "$BIN" bench --model models/tiny --k 4 --images 5 --device "$DEVICE" \
    --json "$OUT/bench-tiny-$DEVICE.json"
cat "$SUMMARY"
rm -rf "$WORK"
! grep -q FAILED "$SUMMARY"
