#!/usr/bin/env bash
# On a GPU machine: DINOv3-base-sized random model end to end on the charades-like corpus
# (default dtype and fp32, cosine), decoding scaling for 720p, whether NVDEC's library is
# visible, and the max-autotune compile lever. Usage: bash bench/gpu_dinov3_and_levers.sh WORK OUT
set -uo pipefail
work=$1; out=$2
export PYTHONUNBUFFERED=1
mkdir -p "$work"
python3 bench/corpus.py "$work/charades" --kind charades --count 6 --seconds 30 > /dev/null &
[ -e "$work/dinov3" ] || python3 bench/checkpoints.py "$work/dinov3" --variant dinov3_base > /dev/null 2>&1
wait
for run in "d3_default" "d3_fp32 --dtype fp32 --no-compile"; do
  set -- $run; name=$1; shift
  echo "== dinov3 $name: feat_extraction.py --model_type dinov3 --data_set charades $*"
  python3 feat_extraction.py --model_type dinov3 --ckpt_path "$work/dinov3" --data_set charades \
    --data_path "$work/charades" --save_path "$work/$name" --overwrite "$@" 2>&1 | grep -v '^\[R0\] charades' | tee "$out/$name.log"
done
python3 bench/compare.py "$work/d3_default" "$work/d3_fp32" | tee "$out/d3_cosine.txt"
echo "== NVDEC library"
(ldconfig -p | grep -i -E "nvcuvid|nvidia-encode"; ls /usr/local/nvidia/lib64 2>/dev/null | grep -i cuvid) | tee "$out/nvdec.txt"
echo "== decoding alone, hacs-like 720p"
python3 bench/decode_speed.py "$work/ds" --kind hacs --count 16 --seconds 10 2>&1 | tee "$out/decode.log"
echo "== max-autotune"
timeout 240 python3 bench/model_speed.py --settings bf16_maxautotune_cudnn_b64 2>&1 | grep -v -i warn | tail -4 | tee "$out/maxautotune.log"
