#!/usr/bin/env bash
# On a GPU machine: feat_extraction.py defaults with the PyAV decoder and with decord, on the
# charades-like corpus and on one long 640x480 video, with each run's peak memory.
# Usage: bash bench/gpu_decoders.sh WORK OUT ["cpu decord auto"]
set -uo pipefail
work=$1; out=$2; decoders=${3:-cpu decord auto}
export PYTHONUNBUFFERED=1
python3 bench/corpus.py "$work/charades" --kind charades --count 6 --seconds 30 > /dev/null &
python3 bench/corpus.py "$work/long" --kind charades --count 1 --seconds 300 > /dev/null &
[ -e "$work/base.pt" ] || python3 bench/checkpoints.py "$work/base.pt" --variant llava_vit_base_ln > /dev/null
wait
for corpus in charades long; do
  for decoder in $decoders; do
    echo "== $corpus, --decoder $decoder: feat_extraction.py --data_set charades --ckpt_path base.pt --decoder $decoder"
    python3 feat_extraction.py --data_set charades --data_path "$work/$corpus" --save_path "$work/out_${corpus}_$decoder" \
      --ckpt_path "$work/base.pt" --decoder $decoder --overwrite 2>&1 | grep -E "summary|\] charades_000|\] charades_long|long_000" | tee -a "$out/decoders.log"
  done
done
