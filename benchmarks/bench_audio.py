"""Transcription benchmark: prints a table and writes benchmarks/results/audio.json.

    python -m benchmarks.bench_audio                  # everything (~10 min on 2 cores)
    python -m benchmarks.bench_audio --skip-service   # in-process backends only
    python -m benchmarks.bench_audio --controls-only  # repetition controls off vs on (~4 min)

Measures on CPU, over the speech fixtures in tests/fixtures/audio (espeak-ng clips):
1. real-time factor (transcribe seconds / audio seconds, warm, after load) and word error
   rate of faster-whisper and openai-whisper with tiny.en and base, in one process;
2. through the gRPC service (IndexAudio, faster-whisper base, the default): one clip at a
   time and 4 clips at once (RTF = wall seconds / audio seconds);
3. resident memory of the Transcriber replica and of each backend in-process;
4. repetition and hallucination controls off ("before": Whisper's checks alone, no silence
   skip, prompt kept after a fallback, no repeat/loop filter) vs on (the defaults): WER per
   clip, whether two runs gave the same transcript, and what the controls removed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from encoders.audio.decode import decode_audio
from encoders.common.metrics import wer
from encoders.whisper.transcribe import TranscribeOptions, create_transcriber

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audio"
RESULTS = Path(__file__).resolve().parent / "results"
REFS = json.loads((FIXTURES / "references.json").read_text())
SPEECH = sorted(n for n, r in REFS.items() if r["text"])


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def in_process(backend: str, model: str) -> dict:
    clips = [n for n in SPEECH if not (model.endswith(".en") and not REFS[n]["language"].startswith("en"))]
    before = rss_mb()
    start = time.perf_counter()
    t = create_transcriber(backend, model, TranscribeOptions(threads=2)).load()
    load_s = time.perf_counter() - start
    audio_s = busy_s = 0.0
    rates = {}
    for name in clips:
        samples = decode_audio((FIXTURES / name).read_bytes()).samples
        list(t.transcribe(samples)[1])  # warm this clip's shapes
        start = time.perf_counter()
        info, segments = t.transcribe(samples)
        text = " ".join(s.text for s in segments)
        busy_s += time.perf_counter() - start
        audio_s += info.duration_s
        rates[name] = round(wer(REFS[name]["text"], text), 3)
    english = [v for k, v in rates.items() if REFS[k]["language"].startswith("en")]
    return {
        "backend": backend,
        "model": model,
        "load_s": round(load_s, 2),
        "rtf": round(busy_s / audio_s, 3),
        "audio_s": round(audio_s, 1),
        "wer_mean_english": round(statistics.mean(english), 3),
        "wer": rates,
        "rss_growth_mb": round(rss_mb() - before),
    }


CONTROLS_OFF = {"drop_repeats": False, "hallucination_silence_s": None, "prompt_reset_on_fallback": False}


def controls(backend: str, model: str) -> dict:
    """Per clip, controls off vs on: WER, same transcript on a second run, what was removed."""
    clips = [n for n in SPEECH if not (model.endswith(".en") and not REFS[n]["language"].startswith("en"))]
    report = {"backend": backend, "model": model, "clips": {}}
    for label, options in (("off", TranscribeOptions(threads=2, **CONTROLS_OFF)), ("on", TranscribeOptions(threads=2))):
        t = create_transcriber(backend, model, options).load()
        for name in clips:
            samples = decode_audio((FIXTURES / name).read_bytes()).samples
            runs = []
            for _ in range(2):
                info, segments = t.transcribe(samples)
                runs.append([s.text for s in segments])
            report["clips"].setdefault(name, {})[label] = {
                "wer": round(wer(REFS[name]["text"], " ".join(runs[0])), 3),
                "identical": runs[0] == runs[1],
                "segments": len(runs[0]),
                **info.controls.as_dict(),
            }
    return report


def print_controls(rows: list[dict]) -> None:
    print(
        f"\n{'backend':15} {'model':8} {'clip':40} {'WER off':>7} {'WER on':>6} {'same':>5} {'fallback':>8} "
        f"{'repeats':>7} {'loops':>5} {'words-':>6}"
    )
    for r in rows:
        for name, c in r["clips"].items():
            on = c["on"]
            print(
                f"{r['backend']:15} {r['model']:8} {name:40} {c['off']['wer']:>7} {on['wer']:>6} "
                f"{str(on['identical'] and c['off']['identical']):>5} {on['fallback_windows']:>8} "
                f"{on['repeated_segments']:>7} {on['loops_cut']:>5} {on['words_removed']:>6}"
            )


def through_service(workdir: Path) -> dict:
    from services.cli.launch import ServiceProcess
    from services.client.sdk import LoupeClient

    clips = [(FIXTURES / n).read_bytes() for n in SPEECH]
    audio_s = sum(REFS[n]["duration_s"] for n in SPEECH)
    args = ["--bundled-models", "--data-dir", str(workdir / "data")]
    with ServiceProcess(args, log_path=workdir / "serve.log") as svc, LoupeClient(svc.target, timeout_s=600) as c:
        c.index_audio(clips[0], collection="warm")
        start = time.perf_counter()
        for i, data in enumerate(clips):
            c.index_audio(data, id=f"single-{i}", collection="bench")
        single = time.perf_counter() - start
        start = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda job: c.index_audio(job[1], id=f"conc-{job[0]}", collection="bench"),
                    [(i, d) for i, d in enumerate(clips * 4)][: 4 * len(clips)],
                )
            )
        concurrent = time.perf_counter() - start
        memory = transcriber_memory_mb()
    return {
        "clips": len(clips),
        "audio_s": round(audio_s, 1),
        "single_rtf": round(single / audio_s, 3),
        "concurrent4_rtf": round(concurrent / (4 * audio_s), 3),
        "concurrent4_wall_s": round(concurrent, 1),
        "transcriber_rss_mb": memory,
    }


def transcriber_memory_mb() -> int:
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        if "ServeReplica:loupe:Transcriber" in " ".join(proc.info["cmdline"] or []):
            total += proc.info["memory_info"].rss / 2**20
    return round(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-backends", action="store_true")
    parser.add_argument("--controls-only", action="store_true")
    args = parser.parse_args()
    report: dict = {"backends": [], "controls": []}
    for backend in ("faster-whisper", "openai-whisper"):
        for model in ("tiny.en", "base"):
            report["controls"].append(controls(backend, model))
    print_controls(report["controls"])
    if args.controls_only:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "audio_controls.json").write_text(json.dumps(report["controls"], indent=2))
        return
    if not args.skip_backends:
        for backend in ("faster-whisper", "openai-whisper"):
            for model in ("tiny.en", "base"):
                report["backends"].append(in_process(backend, model))
                print(report["backends"][-1], flush=True)
    if not args.skip_service:
        with tempfile.TemporaryDirectory() as tmp:
            report["service"] = through_service(Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "audio.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'backend':16} {'model':8} {'load s':>7} {'RTF':>6} {'WER en':>7} {'RSS+ MB':>8}")
    for r in report["backends"]:
        print(
            f"{r['backend']:16} {r['model']:8} {r['load_s']:>7} {r['rtf']:>6} {r['wer_mean_english']:>7} "
            f"{r['rss_growth_mb']:>8}"
        )
    if "service" in report:
        s = report["service"]
        print(
            f"\nservice (faster-whisper base, IndexAudio incl. chunking + CLIP + store), {s['clips']} clips, "
            f"{s['audio_s']} s audio: RTF one at a time {s['single_rtf']}, 4 at once {s['concurrent4_rtf']}; "
            f"Transcriber replica RSS {s['transcriber_rss_mb']} MB"
        )


if __name__ == "__main__":
    main()
