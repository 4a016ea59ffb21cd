#!/usr/bin/env bash
# Seeds the fuzz corpora in OUT (default build-fuzz/corpus) from the golden files at run time:
#   OUT/<target>/ gets small files of the right kind from $RELBOOTH_GOLDEN (default ../shared/golden).
# Golden files are copied into the build folder only, never into the repository. Without a golden
# folder the corpora start empty (libFuzzer then starts from nothing) and a note is printed.
set -euo pipefail
out=${1:-build-fuzz/corpus}
golden=${RELBOOTH_GOLDEN:-../shared/golden}
mkdir -p "$out"/{fuzz_safetensors,fuzz_torch,fuzz_pickle,fuzz_image,fuzz_sched_config,fuzz_clip_tokenizer,fuzz_yaml_config,fuzz_manifests}
if [ ! -d "$golden" ]; then
    echo "fuzz/seed.sh: no golden folder at $golden; corpora start empty" >&2
    exit 0
fi
# The golden tree uses relative symlinks; -L follows them, the size cap keeps runs fast.
n=0
while IFS= read -r -d '' f; do
    head=$(head -c 16 "$f" | od -An -tx1 | tr -d ' \n')
    name=$(printf '%s' "${f#"$golden"/}" | tr '/' '_')
    case "$head" in
        ????????????????7b*) dst=fuzz_safetensors ;;          # u64 length then '{'
        504b0304*|80*)       dst=fuzz_torch ;;                # zip, legacy pickle stream
        89504e47*|ffd8ff*)   dst=fuzz_image ;;                # PNG, JPEG
        52494646????????57454250*) dst=fuzz_image ;;          # RIFF....WEBP
        *) continue ;;
    esac
    cp -L "$f" "$out/$dst/$name"
    n=$((n + 1))
    # Pickles alone: data.pkl of a zip checkpoint (a legacy stream starts with a pickle itself).
    if [ "$dst" = fuzz_torch ]; then
        recs=$(unzip -Z1 "$f" 2>/dev/null || true)
        if rec=$(printf '%s\n' "$recs" | grep -m1 'data\.pkl$'); then
            unzip -p "$f" "$rec" >"$out/fuzz_pickle/$name.pkl" 2>/dev/null
        else
            cp -L "$f" "$out/fuzz_pickle/$name"
        fi
        n=$((n + 1))
    fi
done < <(find -L "$golden" -type f -size -100k \( -name '*.safetensors' -o -name '*.pt' -o -name '*.pth' \
             -o -name '*.bin' -o -name '*.png' -o -name '*.jpg' -o -name '*.jpeg' -o -name '*.webp' \) -print0)
while IFS= read -r -d '' f; do
    cp -L "$f" "$out/fuzz_sched_config/$(printf '%s' "${f#"$golden"/}" | tr '/' '_')"
    n=$((n + 1))
done < <(find -L "$golden" -type f -name '*config*.json' -size -20k -print0)
# JPEG and WebP seeds written with libjpeg/libwebp (the golden data has PNGs and one WebP).
if cc -O1 -o "$out/mkimages" fuzz/mkimages.c $(pkg-config --cflags --libs libjpeg libwebp) 2>/dev/null &&
    "$out/mkimages" "$out/fuzz_image"; then
    n=$((n + 7))
else
    echo "fuzz/seed.sh: could not generate JPEG/WebP seeds" >&2
fi
# Tokenizer: one seed per golden input string (one JSON array of strings).
if [ -f "$golden/clip_tokenizer/strings.json" ] && command -v python3 >/dev/null; then
    python3 - "$golden/clip_tokenizer/strings.json" "$out/fuzz_clip_tokenizer" <<'PY' && n=$((n + 153))
import json, sys
for i, s in enumerate(json.load(open(sys.argv[1], encoding="utf-8"))):
    open(f"{sys.argv[2]}/s{i:03d}", "wb").write(s.encode("utf-8", "surrogatepass"))
PY
fi
# DreamRelation configs (the official format; the golden one and two variants)
[ -f "$golden/pipeline_dreamrelation/config.yaml" ] && cp -L "$golden/pipeline_dreamrelation/config.yaml" "$out/fuzz_yaml_config/golden.yaml"
printf 'prompt: "A cat is hugging a dog."\nimages_path: [a.png, b.png]\nboxes: [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]\nphrases: [cat, dog]\n' >"$out/fuzz_yaml_config/plain.yaml"
printf 'lora_weights: l.safetensors\nprompt: x\nimages_path: []\n' >"$out/fuzz_yaml_config/empty.yaml"
# manifests: first byte 1 = relbooth eval (object and RelationBench array forms), 0 = training data
m="$out/fuzz_manifests"
printf '\001{"root": "refs", "subjects": [{"name": "cat", "images": ["cat/00.jpg"], "phrase": "cat"}, {"name": "dog", "images": ["dog/00.jpg"]}], "cases": [{"id": "hug", "prompt": "A {} is hugging a {} in front of the mountain.", "subjects": ["cat", "dog"], "boxes": [[0, 0.25, 0.5, 0.75], [0.5, 0.25, 1, 0.75]]}, {"id": "ride", "prompt": "A {} is riding a horse.", "subjects": ["dog"], "predicate": "riding", "lora": "l.safetensors", "lora_scale": 0.8}]}' >"$m/eval_object.json"
printf '\001[{"sub1": "benchmark/plushie_cat", "prompt": "A plushie cat is hugging a cat.", "phrase": "plushie_cat", "model": "lora-hug"}]' >"$m/eval_relationbench.json"
printf '\000{"format": "relbooth.relation-data", "version": 1, "root": "data", "samples": [{"id": "0", "prompt": "A cat is hugging a dog.", "entities": ["cat", "dog"], "predicate": ["hugging"], "motion": "videos/0/motion.png", "concepts": ["videos/0/concept0.png", "videos/0/concept1.png"], "masks": ["masks/0/motion0.png", "masks/0/motion1.png"], "motion_keypoints": "videos/0/motion_keyposes.pth", "concept_keypoints": ["videos/0/concept_keyposes_one.pth", [[0.51, 0.32], [0.49, 0.30]]]}]}' >"$m/train.json"
n=$((n + 3))
echo "fuzz/seed.sh: $n seed files in $out"

