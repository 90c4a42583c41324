"""How much one system's step slows when a second training process shares the cores, per thread setting.

A *load* process (a second training process: ``ours`` at the same point, torch's default thread count and the
training entry point's wait policy, stepping without pause) is frozen (``SIGSTOP``) or running (``SIGCONT``)
while the measured workers take their steps: every round measures each variant once with the load frozen and
once with it running, variants alternating, so every pair sees the same background. Each variant is a worker
process (``bench/scale_bench.py``'s) with its own thread count and environment:

* ``default``: torch's default intra-op threads (one per core), OpenMP's default wait policy (threads spin at
  the end of a parallel region before they sleep) — what a process gets that sets nothing;
* ``passive``: the same threads with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once) — what
  ``python -m omni_grpo.train`` sets unless the environment chose a policy;
* ``one``: one intra-op thread (``OMP_NUM_THREADS=1``: nothing to wait for);
* any other as ``NAME:THREADS[:VAR=VALUE,...]`` (threads 0 = torch's default).

Reported per variant: median step seconds frozen / running, their ratio (the slowdown under the co-running
process) with its range over the rounds, and the load average.

    python bench/contention.py                                  # 256x4:qwen, 3 s clip, G = 8, 3 rounds
    python bench/contention.py --model 64x2:tiny --rounds 2     # quicker
    python bench/contention.py --systems ours swift             # ms-swift's step the same way (default variant)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_scale_bench():
    """bench/scale_bench.py as a module (bench/ is a folder of scripts, not a package)."""
    name = "bench_scale_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "scale_bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


VARIANTS = {
    "default": (0, {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None}),
    "passive": (0, {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": "PASSIVE"}),
    "one": (1, {}),
}


def parse_variant(text: str) -> tuple[str, int, dict]:
    if text in VARIANTS:
        threads, env = VARIANTS[text]
        return text, threads, dict(env)
    try:
        name, threads, *rest = text.split(":")
        env = dict(kv.split("=", 1) for kv in rest[0].split(",")) if rest and rest[0] else {}
        return name, int(threads), ({"OMP_NUM_THREADS": None} if int(threads) == 0 else {}) | env
    except ValueError:
        raise SystemExit(
            f"--variants: {text!r} is not a known variant ({', '.join(VARIANTS)}) nor NAME:THREADS[:VAR=VALUE,...]"
        ) from None


class Load:
    """A second training process stepping without pause; `freeze()` / `run()` stop and resume it."""

    def __init__(self, settings, log: Path):
        self.worker = load_scale_bench().Worker("ours", settings, 10**6, log, 0, True, env={"OMP_NUM_THREADS": None})
        msg = self.worker.receive()
        if "error" in msg:
            raise RuntimeError(f"load process: {msg['error']}")
        self.stop = threading.Event()
        self.steps = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.freeze()
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            self.worker.send("step")
            if "error" in self.worker.receive():
                return
            self.steps += 1

    def freeze(self) -> None:
        os.kill(self.worker.proc.pid, signal.SIGSTOP)

    def run(self) -> None:
        os.kill(self.worker.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop.set()
        self.run()
        self.worker.proc.kill()
        self.worker.proc.wait()
        self.worker.stderr.close()


def measure(settings, variants, systems, rounds: int, warmup: int, logs: Path) -> dict:
    sb = load_scale_bench().load_step_bench()
    Worker = load_scale_bench().Worker
    workers = {}
    for system in systems:
        for name, threads, env in variants if system == "ours" else [parse_variant("default")]:
            key = f"{system}/{name}"
            workers[key] = Worker(
                system, settings, 2 * (rounds + warmup), logs / f"{key.replace('/', '-')}.log", threads, True, env=env
            )
    for key, w in workers.items():
        msg = w.receive()
        if "error" in msg:
            raise RuntimeError(f"{key}: {msg['error']}")
    load = Load(settings, logs / "load.log")
    times = {key: {"frozen": [], "running": []} for key in workers}
    loads = []
    try:
        for r in range(warmup + rounds):
            for state in ("frozen", "running"):
                load.run() if state == "running" else load.freeze()
                if state == "running":
                    time.sleep(1.0)  # the load process is back inside its step
                for key, w in workers.items():
                    w.send("step")
                    msg = w.receive()
                    if "error" in msg:
                        raise RuntimeError(f"{key}: {msg['error']}")
                    if r >= warmup:
                        times[key][state].append(sb.StepResult(**msg).wall)
            loads.append(os.getloadavg()[0])
    finally:
        load.close()
        for w in workers.values():
            w.send("close")
            w.receive()
            w.finish()
    out = {}
    for key, t in times.items():
        ratios = [b / a for a, b in zip(t["frozen"], t["running"])]
        out[key] = {
            "frozen_s": statistics.median(t["frozen"]),
            "running_s": statistics.median(t["running"]),
            "slowdown": statistics.median(ratios),
            "range": (min(ratios), max(ratios)),
            **t,
        }
    return {"variants": out, "load_steps": load.steps, "load_avg_1min": loads}


def table(rec: dict) -> str:
    lines = [
        "| system / threads | step s, load frozen | step s, load running | slowdown | per round |",
        "|---|---|---|---|---|",
    ]
    for key, v in rec["variants"].items():
        lines.append(
            f"| {key} | {v['frozen_s']:.2f} | {v['running_s']:.2f} | {v['slowdown']:.2f}x | "
            f"{v['range'][0]:.2f}–{v['range'][1]:.2f}x |"
        )
    lines.append("")
    lines.append(
        f"load process steps while running: {rec['load_steps']}; 1-min load average after each round: "
        + " ".join(f"{x:.2f}" for x in rec["load_avg_1min"])
    )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="256x4:qwen", help="HIDDENxLAYERS[:tiny|qwen] (default: 256x4:qwen)")
    p.add_argument(
        "--systems",
        nargs="+",
        default=["ours"],
        choices=["ours", "swift", "trl", "anchor"],
        help="ours runs every variant; the others run with their default threads (default: ours)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        default=["default", "passive", "one"],
        help="thread settings of ours' workers (default: default passive one)",
    )
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion-length", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default: 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--clips", type=int, default=1)
    p.add_argument("--size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"))
    p.add_argument("--video-fps", type=int, default=30)
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.variants = [parse_variant(v) for v in args.variants]
    args.max_pixels = args.min_pixels = None
    from preprocess.budget import DEFAULT_MAX_PROMPT_TOKENS

    args.max_prompt_tokens = DEFAULT_MAX_PROMPT_TOKENS
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    sb = load_scale_bench().load_step_bench()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"contention on {sb.machine()}; load average at start {sb.load()}", flush=True)
        model_dir = sb.prepare_model(work, args.model)
        manifest, shards = sb.prepare_data(work, args.seconds, args)
        s = sb.Settings(
            model_dir=model_dir,
            shards=shards,
            manifest=manifest,
            generations=args.generations,
            completion_length=args.completion_length,
            micro_batch=args.micro_batch,
            max_pixels=None,
            min_pixels=None,
            fps=args.fps,
            out=Path(tmp) / "run",
            min_new_tokens=args.completion_length,
            frames=sb.frame_plan(shards),
        )
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        rec = measure(s, args.variants, args.systems, args.rounds, args.warmup, logs)
    rec.update(
        model=args.model,
        point=dict(seconds=args.seconds, G=args.generations, C=args.completion_length),
        load_end=sb.load(),
    )
    print(
        f"# {args.model}, {args.seconds:g} s clip, G = {args.generations}, C = {args.completion_length}; median of "
        f"{args.rounds} rounds after {args.warmup} warm-up; load average at end {rec['load_end']}"
    )
    print(table(rec))
    if args.json:
        args.json.write_text(json.dumps(rec, indent=1, default=str))
    return rec


if __name__ == "__main__":
    main()
