#!/usr/bin/env bash
# `make demo`: the main job end to end — relation-aware customized generation (DreamRelation:
# MS-Diffusion subjects + RelationLoRA + local tokens). First `relbooth demo`, which needs nothing but
# the binary: it writes tiny random-weight models in the official layouts and runs the whole path.
# Then, when ../shared/golden (the reference test models) is there, the same on those, a checkpoint's
# contents and this machine's kernel speed. Real checkpoints cannot be downloaded here; the same
# commands with the real SDXL folder, ms_adapter.bin, CLIP-ViT-bigG and RelationLoRA give real images.
set -euo pipefail
build=${1:-build}
rb="$PWD/$build/relbooth"
out=${DEMO_OUT:-$PWD/demo-out}
mkdir -p "$out"

echo "== relbooth demo: tiny random-weight models, two subjects, RelationLoRA (no downloads)"
"$rb" demo -o "$out/relbooth-demo"

golden=$(cd "${RELBOOTH_GOLDEN:-../shared/golden}" 2>/dev/null && pwd) || {
    echo "demo: ${RELBOOTH_GOLDEN:-../shared/golden} not found: skipping the golden-model parts (set RELBOOTH_GOLDEN)"
    exit 0; }

# Some checkouts turn the golden tree's symlinks into small files holding "../target": follow them.
resolve() {
    local p=$1 t
    while [ -f "$p" ] && [ "$(stat -c %s "$p")" -lt 300 ] && t=$(head -c 300 "$p") && [[ $t == ../* ]]; do
        p=$(cd "$(dirname "$p")" && cd "$(dirname "$t")" && pwd)/$(basename "$t")
    done
    echo "$p"
}

# A diffusers SDXL folder of real links to the tiny components.
model="$out/tiny-sdxl"
rm -rf "$model" && mkdir -p "$model"
for part in model_index.json scheduler text_encoder text_encoder_2 tokenizer tokenizer_2 unet vae; do
    ln -s "$(resolve "$golden/pipeline_sdxl/$part")" "$model/$part"
done
dr=$golden/pipeline_dreamrelation
enc=$(resolve "$dr/image_encoder")
cat > "$out/two_subjects.yaml" <<EOY
# DreamRelation's inference config format (config/example_two_objects.yaml)
lora_weights: $dr/pytorch_lora_weights.safetensors
class_names: ["cat", "dog"]
prompt: "A cat is hugging a dog in the garden."
images_path: ["$enc/images/img0_300x200_rgb.png", "$enc/images/img1_180x240_rgba.png"]
boxes: [[[0.0, 0.2, 0.55, 0.85], [0.5, 0.25, 0.95, 0.9]]]
phrases: [["cat", "dog"]]
EOY

echo "== relbooth generate: DreamRelation (two subjects, their boxes, RelationLoRA, local tokens)"
"$rb" generate -m "$model" --config "$out/two_subjects.yaml" \
    --ms-adapter "$(resolve "$dr/ms_adapter.safetensors")" --image-encoder "$enc" --resampler-dim-head 8 \
    --local-encoder "$dr/local_image_encoder/epoch_6.pt" -W 128 -H 128 --steps 4 -o "$out/dreamrelation.png"
echo "== relbooth generate: plain SDXL with the RelationLoRA (relation inversion, no subjects)"
"$rb" generate -m "$model" -p "A cat is hugging a dog in front of the mountain." \
    --lora "$dr/pytorch_lora_weights.safetensors:1.0" -W 128 -H 128 --steps 4 -o "$out/sdxl_lora.png"
echo "== relbooth info: the image just written (its generation parameters are in a PNG text chunk)"
"$rb" info "$out/dreamrelation.png"
echo "== relbooth info: MS-Diffusion's ms_adapter.bin (PyTorch zip pickle, read by the restricted unpickler)"
"$rb" info "$golden/ms_diffusion/ms_adapter.bin" | head -n 8
echo "== relbooth predicate: the relation a prompt template names"
"$rb" predicate "A {} is hugging a {} in front of the mountain."
echo "== relbooth bench ops (2 threads)"
"$rb" bench ops -t 2
