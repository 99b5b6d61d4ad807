"""Ask benchmark: latency per step through the gRPC service, with the bundled tiny VLM on CPU.

    python -m benchmarks.bench_ask          # ~3 min on 2 cores; writes benchmarks/results/ask.json

Every question of tests/fixtures/screenshots/cases.json is asked once with its screenshot
uploaded, then once more as a retrieval-only question (k=3) over the indexed screenshots.
Per step (input_guards, ocr, retrieval, draft, output_guards, total) it prints p50 and p95
seconds, and the verdicts. The tiny VLM has random weights: its drafts cost what a
256-token-capped generation of a 167k-parameter model costs, and are all abstained on.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from protos.loupe.v1 import qa_pb2

SHOTS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "screenshots"
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from services.cli.launch import ServiceProcess
    from services.client.sdk import ImageInput, LoupeClient

    cases = json.loads((SHOTS / "cases.json").read_text())
    steps: dict[str, dict[str, list[float]]] = {"upload": defaultdict(list), "retrieval": defaultdict(list)}
    verdicts: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--bundled-models", "--data-dir", str(Path(tmp) / "data")]
        with ServiceProcess(args, log_path=Path(tmp) / "serve.log") as svc, LoupeClient(svc.target, timeout_s=600) as c:
            c.index_images([ImageInput((SHOTS / n).read_bytes(), source=n) for n in sorted(cases)], collection="bench")
            for name, case in sorted(cases.items()):
                for q in case["questions"]:
                    for kind, kwargs in (
                        ("upload", {"images": [(SHOTS / name).read_bytes()]}),
                        ("retrieval", {"k": 3, "collection": "bench"}),
                    ):
                        answer = c.ask(q["question"], **kwargs)
                        verdicts[qa_pb2.AnswerVerdict.Name(answer.verdict)] += 1
                        for step, seconds in answer.timings_s.items():
                            steps[kind][step].append(seconds)
                        steps[kind]["attempts"].append(answer.attempts)
    report = {
        kind: {
            step: {
                "p50": round(statistics.median(v), 3),
                "p95": round(sorted(v)[int(0.95 * (len(v) - 1))], 3),
                "n": len(v),
            }
            for step, v in sorted(by_step.items())
        }
        for kind, by_step in steps.items()
    }
    report["verdicts"] = dict(verdicts)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ask.json").write_text(json.dumps(report, indent=2))
    for kind in ("upload", "retrieval"):
        print(f"\n{kind} questions: seconds per step (p50 / p95)")
        for step, v in report[kind].items():
            print(f"  {step:14} {v['p50']:>7} / {v['p95']:<7} (n={v['n']})")
    print("\nverdicts:", dict(verdicts))


if __name__ == "__main__":
    main()
