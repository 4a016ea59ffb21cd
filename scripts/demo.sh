#!/usr/bin/env bash
# `make demo`: what relbooth can do today, on the small reference files in ../shared/golden.
# It shows a checkpoint's contents (safetensors and a PyTorch pickle), an image, and this machine's
# kernel speed against its own matrix-multiply peak.
set -euo pipefail
build=${1:-build}
golden=${RELBOOTH_GOLDEN:-../shared/golden}
rb="$build/relbooth"
if [ -d "$golden" ]; then
    echo "== relbooth info: a diffusers UNet (safetensors)"
    "$rb" info "$golden/unet_sdxl/diffusion_pytorch_model.safetensors" | head -n 12
    echo "== relbooth info: MS-Diffusion's ms_adapter.bin (PyTorch zip pickle, read by the restricted unpickler)"
    "$rb" info "$golden/ms_diffusion/ms_adapter.bin" | head -n 12
    echo "== relbooth info: an image"
    "$rb" info "$golden/clip_vision/images/img1_180x240_rgba.png"
else
    echo "demo: $golden not found (set RELBOOTH_GOLDEN); skipping the file examples"
fi
echo "== relbooth bench ops (2 threads)"
"$rb" bench ops -t 2
