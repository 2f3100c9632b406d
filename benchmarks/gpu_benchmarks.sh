#!/usr/bin/env bash
#   OUT=/tmp/gpu bash benchmarks/gpu_benchmarks.sh
# The GPU section of docs/benchmarks.md in one run on a CUDA machine (python3 with torch, transformers,
# peft; bitsandbytes and mlx with its CUDA back end importable, e.g. through PYTHONPATH). Each part has
# its own time limit, so one that fails leaves the others' figures; logs and JSON go to $OUT.
#   1. large-v2 (random weights), 8-bit base, bf16, frozen encoder: ours (torch) against transformers+PEFT,
#      step time and peak GPU memory (issue 17's <= 8 GB goal for the T4 recipe);
#   2. large-v2 in bf16, encoder+decoder LoRA and frozen encoder: our MLX back end on CUDA against our
#      torch back end, same inputs;
#   3. transcription (benchmarks/benchmark_transcribe.py --device cuda): our torch back end against transformers
#      (and faster-whisper, where its CUDA 12 libraries load), real tiny.en weights and speech, from the folder
#      benchmarks/pack_transcribe_benchmark.py writes beforehand (run it here; the device call carries .device_carry).
# PARTS="1 2" or "3" runs some (the carried packages of 1-2 and of 3 do not fit in one call together).
set -u
PARTS=${PARTS:-1 2 3}
OUT=${OUT:-/tmp/gpu_benchmarks}
WORK=${WORK:-/tmp/gpu_benchmarks_work}
mkdir -p "$OUT" "$WORK"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
uptime | tee -a "$OUT/gpu.txt"
if [[ " $PARTS " == *" 1 "* || " $PARTS " == *" 2 "* ]]; then
python3 - <<'EOF' 2>&1 | tee -a "$OUT/gpu.txt"
import time
import mlx.core as mx, torch
print("torch", torch.__version__, torch.cuda.get_device_name(), "| mlx", mx.__version__, mx.default_device(),
      "cuda available:", mx.cuda.is_available())
a = mx.random.normal((8192, 8192)).astype(mx.bfloat16)
mx.eval(a @ a)
tic = time.perf_counter()
for _ in range(10):
    mx.eval(a @ a)
print(f"mlx bf16 8192^3 matmul: {10 * 2 * 8192 ** 3 / (time.perf_counter() - tic) / 1e12:.0f} TFLOP/s")
EOF

common=(--dims large-v2 --rounds 1 --steps 6 --skip 2 --work "$WORK")
echo "== 1. 8-bit large-v2, frozen encoder, ours vs PEFT"
timeout 300 python3 benchmarks/benchmark_train.py "${common[@]}" --device cuda --backend torch --bits 8 \
    --dtype bfloat16 --grad-checkpoint --configs decoder --json "$OUT/bits8_decoder.json" 2>&1 | tee "$OUT/bits8_decoder.log"
for backend in torch mlx; do
    echo "== 2. bf16 large-v2, ours with --backend $backend"
    device=(); [ "$backend" = torch ] && device=(--device cuda)
    timeout 300 python3 benchmarks/benchmark_train.py "${common[@]}" "${device[@]}" --backend "$backend" --systems ours \
        --dtype bfloat16 --configs encdec,decoder --json "$OUT/bf16_$backend.json" 2>&1 | tee "$OUT/bf16_$backend.log"
done
fi

PACK=.device_carry/transcribe
if [[ " $PARTS " == *" 3 "* && -d $PACK ]]; then
    echo "== 3. transcription on the GPU, ours (torch) vs transformers"
    python3 -m pip install -q --no-index --no-deps --no-compile --target $PACK/site $PACK/wheels/*.whl
    python3 benchmarks/pack_transcribe_benchmark.py --unpack $PACK
    PYTHONPATH=$PACK/site${PYTHONPATH:+:$PYTHONPATH} timeout 420 python3 benchmarks/benchmark_transcribe.py \
        --device cuda --data $PACK/data --model $PACK/hf --hf-model $PACK/hf --long-seconds 300 2>&1 | tee "$OUT/transcribe.log"
fi
uptime | tee -a "$OUT/gpu.txt"
