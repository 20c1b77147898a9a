#!/usr/bin/env bash
# Prepare the GPU check (README "A GPU (CUDA)") on a development machine: the x86-64
# binary built with `--features cuda` and the pure-Python wheels the exporter needs on
# top of the GPU machine's own PyTorch, under target/gpu-check/ (≈ 40 MB: the check
# travels with the working tree, which is ≈ 17 MB). Nothing is built on the GPU machine.
#
#   tests/gpu/prepare.sh                 # then, on the GPU machine: tests/gpu/check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=target/gpu-check
mkdir -p "$BUNDLE/wheels"
# A target directory of its own: the feature build shares nothing with the default one.
CARGO_TARGET_DIR=target/gpu-build cargo build --profile dist --locked --features cuda
cp target/gpu-build/dist/winclip-edge "$BUNDLE/winclip-edge"
# open_clip and its pure-Python dependencies (the GPU machine has torch, torchvision,
# numpy and Pillow); regex is compiled: one wheel per likely Python version.
python3 -m pip download -q --no-deps --disable-pip-version-check -d "$BUNDLE/wheels" \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
for py in 3.10 3.11 3.12 3.13; do
    python3 -m pip download -q --no-deps --disable-pip-version-check --only-binary=:all: \
        --python-version "$py" --platform manylinux2014_x86_64 -d "$BUNDLE/wheels" regex==2026.11.19
done
du -sh "$BUNDLE" "$BUNDLE"/*
echo "ready: run tests/gpu/check.sh on the GPU machine (carry $BUNDLE); logs go to \$OUT"
