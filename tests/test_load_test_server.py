"""benchmarks/load_test_server.py's core: a few seconds of load from 2 clients, and the report's fields agree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from server_process import start_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from load_test_server import acceptance, load_clips, run_load, table  # noqa: E402


def test_a_short_load_reports_consistent_counts(shared_data, tiny_en):
    pytest.importorskip("openai")
    clips = load_clips(shared_data / "librispeech_test_clean_4")
    proc, url = start_server("--model", "tiny.en", "--max-batch", "2")  # the bundled demo adapter as 'demo'
    try:
        report = run_load(url + "/v1", clips, ["whisper-1", "demo"], clients=2, seconds=3, server_pid=proc.pid,
                          rss_every=1)
    finally:
        proc.terminate()
        proc.wait(30)
    assert report["requests"] >= 2 and report["requests"] == report["ok"] + sum(report["errors"].values())
    assert report["errors"] == {} and report["empty"] == 0
    assert sum(report["per_model"].values()) == report["ok"] and report["per_model"]["demo"] >= 1
    assert 0 < report["p50"] <= report["p95"] <= report["p99"]
    assert report["throughput"] > 0 and report["wall_seconds"] >= 3
    assert report["audio_seconds"] == pytest.approx(report["throughput"] * report["wall_seconds"])
    assert report["rss_end"] > 50 * 2 ** 20 and report["rss_ratio"] > 0 and len(report["rss"]) >= 2
    report.update(system="ours", serves="base + 1 adapter")
    lines = acceptance(report, dict(report, system="peer"))
    assert "errors other than 429: none -> holds" in lines[0] and "1.00x -> holds" in lines[2]
    assert table([report]).count("\n") == 2
