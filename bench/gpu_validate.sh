#!/usr/bin/env bash
# On a GPU machine: the extractor end to end (default GPU dtype vs fp32) for the base
# backbone.pt and a OneVision-Encoder-large HF folder, then model-only settings.
# Usage: bash bench/gpu_validate.sh VIDEO_DIR OUT_DIR [model_speed settings]
set -uo pipefail
videos=$1; out=$2; settings=${3:-}
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/env.txt"
python3 -c "import torch, decord; print('torch', torch.__version__, 'decord', decord.__version__, 'cpus', __import__('os').cpu_count())" | tee -a "$out/env.txt"
python3 bench/checkpoints.py "$work/base.pt" --variant llava_vit_base_ln
python3 bench/checkpoints.py "$work/hf_large" --variant hf_large
common=(--data_set charades --data_path "$videos")
echo "== base, defaults (bf16, compiled)"
python3 feat_extraction.py "${common[@]}" --save_path "$work/base_default" --ckpt_path "$work/base.pt" 2>&1 | tee "$out/base_default.log"
echo "== base, fp32 reference"
python3 feat_extraction.py "${common[@]}" --save_path "$work/base_fp32" --ckpt_path "$work/base.pt" --dtype fp32 --no-compile 2>&1 | tee "$out/base_fp32.log"
python3 bench/compare.py "$work/base_default" "$work/base_fp32" | tee "$out/base_cosine.txt"
echo "== HF large, defaults"
python3 feat_extraction.py "${common[@]}" --save_path "$work/hf_default" --ckpt_path "$work/hf_large" 2>&1 | tee "$out/hf_default.log"
echo "== HF large, fp32 reference"
python3 feat_extraction.py "${common[@]}" --save_path "$work/hf_fp32" --ckpt_path "$work/hf_large" --dtype fp32 --no-compile 2>&1 | tee "$out/hf_fp32.log"
python3 bench/compare.py "$work/hf_default" "$work/hf_fp32" | tee "$out/hf_cosine.txt"
if [ -n "$settings" ]; then
  echo "== model only"
  python3 bench/model_speed.py --settings "$settings" --json "$out/model_speed.jsonl" 2>&1 | tee "$out/model_speed.log"
fi
