#!/usr/bin/env bash
# On a GPU machine: feat_extraction end to end, default GPU dtype against fp32, for a random
# base backbone.pt and a random OneVision-Encoder-large HF folder, on a generated
# charades-like corpus. Usage: bash bench/gpu_validate.sh WORK_DIR OUT_DIR
set -uo pipefail
work=$1; out=$2
export PYTHONUNBUFFERED=1
mkdir -p "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/env.txt"
python3 -c "import torch, decord; print('torch', torch.__version__, 'decord', decord.__version__)" | tee -a "$out/env.txt"
python3 bench/corpus.py "$work/charades" --kind charades --count 6 --seconds 30 > /dev/null
[ -e "$work/base.pt" ] || python3 bench/checkpoints.py "$work/base.pt" --variant llava_vit_base_ln
[ -e "$work/hf_large" ] || python3 bench/checkpoints.py "$work/hf_large" --variant hf_large
run() {  # name, extra flags...
  local name=$1; shift
  echo "== $name: python3 feat_extraction.py --data_set charades --data_path CORPUS --save_path OUT $*"
  python3 feat_extraction.py --data_set charades --data_path "$work/charades" --save_path "$work/$name" --overwrite "$@" 2>&1 | grep -v '^\[R0\] charades' | tee "$out/$name.log"
}
run base_default --ckpt_path "$work/base.pt"
run base_fp32 --ckpt_path "$work/base.pt" --dtype fp32 --no-compile
python3 bench/compare.py "$work/base_default" "$work/base_fp32" | tee "$out/base_cosine.txt"
run hf_default --ckpt_path "$work/hf_large"
run hf_fp32 --ckpt_path "$work/hf_large" --dtype fp32 --no-compile
python3 bench/compare.py "$work/hf_default" "$work/hf_fp32" | tee "$out/hf_cosine.txt"
