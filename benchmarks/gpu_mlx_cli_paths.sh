#!/usr/bin/env bash
#   OUT=/tmp/gpu_paths bash benchmarks/gpu_mlx_cli_paths.sh
# Every CLI path in the MLX engine on an MLX GPU device (issue 37, item 4), in one call: on a CUDA machine with
# mlx's CUDA back end (mlx[cuda]) and this package importable (e.g. through PYTHONPATH), or on a Mac. MLX has no
# float64 on GPUs and raises for an op without a GPU kernel, so a path that strays onto the CPU's ops fails here;
# the package's numpy kernels run only where MLX's default device is the CPU (backend_mlx/training/host_kernels.py).
# Each path has its own time limit and a line in $OUT/paths.txt: ok or FAILED, seconds, and its log file.
set -u
OUT=${OUT:-/tmp/gpu_mlx_cli_paths}
WORK=$(mktemp -d)
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
ROOT=$PWD
export PYTHONUNBUFFERED=1
DATA=$ROOT/mlx_whisper_lora/assets/demo_data
CLIP=$ROOT/mlx_whisper_lora/assets/demo.flac
ADAPTER=$ROOT/mlx_whisper_lora/assets/demo_adapter
python3 - <<'PY' 2>&1 | tee "$OUT/device.txt"
import mlx.core as mx
print("mlx", mx.__version__, "default device:", mx.default_device())
assert mx.default_device() == mx.gpu, "MLX's default device is not a GPU here: nothing to check"
PY
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
: > "$OUT/paths.txt"
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    (cd "$WORK" && timeout "$limit" "$@") > "$OUT/$name.log" 2>&1
    local rc=$? status=ok
    [ $rc = 0 ] || status="FAILED (rc $rc)"
    printf '%-28s %-16s %5ds  %s\n' "$name" "$status" $((SECONDS - start)) "$OUT/$name.log" | tee -a "$OUT/paths.txt"
}
L=(python3 -m mlx_whisper_lora.lora --backend mlx --model tiny.en --data "$DATA" --iters 6 --batch-size 4
   --steps-per-eval 3 --val-batches 1 --no-progress)
step train_frozen_encoder 600 "${L[@]}" --train --adapter-path frozen
step train_encoder 600 "${L[@]}" --train --train-encoder --adapter-path encoder
step train_encoder_bf16 600 "${L[@]}" --train --train-encoder --dtype bfloat16 --adapter-path bf16
step train_grad_checkpoint 600 "${L[@]}" --train --train-encoder --grad-checkpoint --adapter-path checkpointed
step train_bits8 600 "${L[@]}" --train --bits 8 --adapter-path bits8
step test 600 "${L[@]}" --test --adapter-path frozen
for fmt in mlx hf peft ct2 ggml; do
    step "fuse_$fmt" 600 python3 -m mlx_whisper_lora.fuse --adapter-path "$ADAPTER" --save-path "fused_$fmt" \
        --export-format $fmt
done
step fuse_mlx_int4 600 python3 -m mlx_whisper_lora.fuse --adapter-path "$ADAPTER" --save-path fused_int4 --quantize int4
T=(python3 -m mlx_whisper_lora.transcribe --backend mlx)
step transcribe_demo 300 "${T[@]}"
step transcribe_words_srt 300 "${T[@]}" "$CLIP" --adapter-path "$ADAPTER" --word-timestamps True --output-format srt
step transcribe_beam 300 "${T[@]}" "$CLIP" --model tiny.en --beam-size 5
step transcribe_bf16 300 "${T[@]}" "$CLIP" --model tiny.en --dtype bfloat16
step transcribe_vad 300 "${T[@]}" "$CLIP" --model tiny.en --vad
step transcribe_fused 300 "${T[@]}" "$CLIP" --model "$WORK/fused_mlx"
step serve 300 python3 - <<PY
import subprocess, sys, time, httpx
proc = subprocess.Popen([sys.executable, "-m", "mlx_whisper_lora.serve", "--backend", "mlx", "--port", "8765"])
try:
    for _ in range(240):
        try:
            if httpx.get("http://127.0.0.1:8765/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    with open("$CLIP", "rb") as f:
        reply = httpx.post("http://127.0.0.1:8765/v1/audio/transcriptions", data={"model": "demo"},
                           files={"file": ("demo.flac", f, "audio/flac")}, timeout=300)
    print(reply.status_code, reply.text)
    assert reply.status_code == 200
finally:
    proc.terminate()
PY
grep -c FAILED "$OUT/paths.txt" | xargs -I{} echo "{} path(s) failed" | tee -a "$OUT/paths.txt"
rm -rf "$WORK"
