#!/usr/bin/env bash
# On a GPU machine: the hacs-like (1280x720, stride 16) preset with the CPU decoder at its
# best measured setting and with NVDEC, and NVDEC's features against the CPU decoder in fp32.
# Usage: bash bench/gpu_nvdec.sh SOURCE_VIDEOS WORK OUT   (SOURCE_VIDEOS: a few hacs-like .mp4,
# replicated to 24 files so that the run is long enough to measure)
set -uo pipefail
src=$1; work=$2; out=$3
export PYTHONUNBUFFERED=1
mkdir -p "$work/hacs"
i=0; for rep in 1 2 3 4 5 6; do for f in "$src"/*.mp4; do cp "$f" "$work/hacs/$(printf 'hacs_%03d.mp4' $i)"; i=$((i+1)); done; done
n=$i
python3 -c "import PyNvVideoCodec as n; print('PyNvVideoCodec', n.__version__)" 2>&1 | tail -1 | tee "$out/env.txt"
common=(--corpora hacs --videos $n --work "$work" --skip original_fp32_b20,original_planned)
[ -n "${SKIP_CPU:-}" ] || { echo "== cpu decoder, 16 videos x 1 thread"
python3 bench/run.py "${common[@]}" --parallel_videos 16 --num_threads 1 --json "$out/hacs_cpu.json" 2>&1 | grep -v '^\[R0\]' | tail -4 | tee "$out/hacs_cpu.log"; }
for pv in 4 7; do
  echo "== nvdec, $pv videos at once"
  python3 bench/run.py "${common[@]}" --skip original_fp32_b20,original_planned,ours_model_only --decoder nvdec --parallel_videos $pv --json "$out/hacs_nvdec_$pv.json" > "$out/hacs_nvdec_$pv.log" 2>&1; grep -v "^\[R0\]" "$out/hacs_nvdec_$pv.log" | tail -25
done
[ -n "${SKIP_FEATURES:-}" ] && exit 0
echo "== NVDEC features (default dtype) against the CPU decoder in fp32"
ckpt="$work/model.pt"
python3 feat_extraction.py --data_set hacs --data_path "$src" --save_path "$work/ref_fp32" --ckpt_path "$ckpt" --model_name auto --dtype fp32 --no-compile 2>&1 | tail -1
python3 feat_extraction.py --data_set hacs --data_path "$src" --save_path "$work/nvdec" --ckpt_path "$ckpt" --model_name auto --decoder nvdec 2>&1 | tail -1
python3 feat_extraction.py --data_set hacs --data_path "$src" --save_path "$work/cpu_bf16" --ckpt_path "$ckpt" --model_name auto 2>&1 | tail -1
python3 bench/compare.py "$work/nvdec" "$work/ref_fp32" | sed 's/^/nvdec bf16 vs cpu fp32: /' | tee "$out/nvdec_cosine.txt"
python3 bench/compare.py "$work/cpu_bf16" "$work/ref_fp32" | sed 's/^/cpu bf16 vs cpu fp32: /' | tee -a "$out/nvdec_cosine.txt"
