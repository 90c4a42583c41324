"""How the cost of one GRPO step grows: clip length, G and completion length, ours vs ms-swift, TRL, the anchor.

The systems, their settings and their phase timings are ``bench/step_bench.py``'s (imported, not copied):
``ours`` (``omni_grpo.trainer.GRPOTrainer``), ``swift`` (ms-swift's GRPO in its own environment,
``bench/swift_system.py``; its worker process reports its own memory), ``trl`` (TRL's ``GRPOTrainer`` on the
text prompt only: it ignores the video) and ``anchor`` (the loop we replace: decode the mp4 every step, one
``generate`` per completion, the towers in every pass). Three sweeps, each from one base point (3 s clip, G = 8,
16 tokens):

* ``clip``: clip length 3, 15, 30, 60 s at G = 8, 16 tokens;
* ``G``: G = 2, 4, 8, 16 on the 3 s clip, 16 tokens;
* ``completion``: 16, 64, 256 new tokens on the 3 s clip, G = 8.

Clips are synthetic 360x640 H.264 + AAC at 30 fps, preprocessed as ``python -m preprocess`` does by default:
qwen-omni-utils' frame choice (2 fps, its default pixel limits) under the prompt budget of
``--max-prompt-tokens`` (2048, ``preprocess.budget.DEFAULT_MAX_PROMPT_TOKENS``): beyond a few seconds the
budget reduces the frames (fewer, then smaller) and the prompt stays near 2k tokens while the audio grows
(25 tokens/s). The anchor decodes the mp4 every step but asks qwen-omni-utils for the same frame count and
size as the shard holds (``step_bench.frame_plan``), so every system with media sees the same prompt.
Completions are forced to their length: every system bans its stop tokens before ``C`` new tokens
(``min_new_tokens``), so the completion sweep measures 16, 64 and 256 tokens, not where a random model
happens to stop.

Each worker runs torch on ``--threads`` threads (1 by default: on a shared machine more threads than free cores
spin against each other). Each system's point runs in its own worker process (this file with ``--worker``);
the driver starts the point's workers, waits until all are built, then asks each for one step in turn, round
after round (the alternating design of ``step_bench``: every round sees one background load for all systems).
Step time is the median over the timed rounds. Peak memory is the worker's resident set: its high-water mark is reset
(``/proc/self/clear_refs`` = 5) once the system is built, and ``VmHWM`` read after the last step is the step
peak (weights, optimizer state, activations, caches; everything resident during the rounds); the resident
set after the build is reported too, and the difference is what the steps add.

    python bench/scale_bench.py                       # the three sweeps, 256x4:qwen, about 25 min on 2 cores
    python bench/scale_bench.py --only G              # one sweep
    python bench/scale_bench.py --quick --no-plot     # tiny model, short clips, seconds (the test)

Where a system would take too long at a point it is left out by ``--skip SYSTEM:SWEEP:X`` (defaults in
``DEFAULT_SKIP``; ``--skip`` with no value runs everything); the table says which points were left out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
SWEEPS = {  # sweep -> (values, which setting they change)
    "clip": ([3.0, 15.0, 30.0, 60.0], "seconds"),
    "G": ([2, 4, 8, 16], "generations"),
    "completion": ([16, 64, 256], "completion_length"),
}
BASE = {"seconds": 3.0, "generations": 8, "completion_length": 16}
QUICK_SWEEPS = {
    "clip": ([1.0, 2.0], "seconds"),
    "G": ([2, 4], "generations"),
    "completion": ([4, 8], "completion_length"),
}
QUICK_BASE = {"seconds": 1.0, "generations": 2, "completion_length": 4}
# Points a system is left out of by default: each would take minutes per step here (the anchor runs one
# generate per completion and the towers in every pass; measured per-step cost grows with G and C).
DEFAULT_SKIP = ["anchor:clip:60", "anchor:G:16", "anchor:completion:256"]
OURS_PHASES = ("data", "encode", "rollout", "rewards", "ref", "update")
MARK = "@@scale "


def load_step_bench():
    """bench/step_bench.py as a module (bench/ is a folder of scripts, not a package)."""
    name = "bench_step_bench"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "step_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------- worker
def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker() -> None:
    """One system at one point: a JSON request on stdin, then one line per command ("step", "close")."""
    import resource

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to the log, not into the protocol

    def reply(obj) -> None:
        proto.write(MARK + json.dumps(obj) + "\n")

    sb = load_step_bench()
    quiet()
    request = json.loads(sys.stdin.readline())
    known = {f.name for f in fields(sb.Settings)}
    settings = {k: v for k, v in request["settings"].items() if k in known}
    for key in ("model_dir", "shards", "manifest", "out"):
        settings[key] = Path(settings[key])
    settings["frames"] = {k: tuple(v) for k, v in settings.get("frames", {}).items()}
    s = sb.Settings(**settings)
    if request.get("threads"):
        import torch

        torch.set_num_threads(request["threads"])
    try:
        system = sb.make_system(
            request["system"], s, request["rounds"], request.get("trl_gpu_path", True), request.get("threads", 0)
        )
    except Exception as exc:
        reply({"error": f"{type(exc).__name__}: {exc}"})
        return
    built_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    own = system.memory() if hasattr(system, "memory") else {}  # a system in a process of its own (ms-swift)
    reply({"ready": True, "rss_built_gb": own.get("rss_built_gb", built_kb / 2**20), "peak_reset": reset})
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            try:
                r = system.step()
            except Exception as exc:
                reply({"error": f"{type(exc).__name__}: {exc}"})
                system.close()
                return
            reply(
                {
                    "wall": r.wall,
                    "rows": r.rows,
                    "phases": r.phases,
                    "tower_calls": r.tower_calls,
                    "completion_tokens": r.completion_tokens,
                    "prompt_tokens": r.prompt_tokens,
                }
            )
        elif command == "close":
            peak_kb = _status_kb("VmHWM")
            own = system.close() or {}
            reply(
                {
                    "peak_step_gb": own.get("peak_step_gb", peak_kb / 2**20 if reset else math.nan),
                    "ru_maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                }
            )
            return


def quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("qwen_omni_utils", "transformers", "omni_grpo", "trl", "accelerate", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import transformers

    transformers.logging.set_verbosity_error()


def worker_env(system: str, threads: int, env: dict | None = None) -> dict:
    """A worker's environment: this one; for ours, idle OpenMP threads sleep as `python -m omni_grpo.train` sets
    them (`omni_grpo.train.passive_openmp_wait`) unless the environment chose a policy; then `env` over both
    (a value of None unsets the variable); then `threads` intra-op threads (0: torch's default)."""
    out = dict(os.environ)
    if system == "ours":
        out.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out.update(env or {})
    if threads:
        out["OMP_NUM_THREADS"] = str(threads)
    return {k: v for k, v in out.items() if v is not None}


class Worker:
    """The driver's handle on one worker process."""

    def __init__(
        self, system: str, settings, rounds: int, log: Path, threads: int, trl_gpu_path: bool, env: dict | None = None
    ):
        self.system, self.log = system, log
        payload = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
        self.stderr = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "scale_bench.py"), "--worker"],
            env=worker_env(system, threads, env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.send(
            json.dumps(
                {
                    "system": system,
                    "settings": payload,
                    "rounds": rounds,
                    "threads": threads,
                    "trl_gpu_path": trl_gpu_path,
                }
            )
        )

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        self.proc.wait()
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
        return {"error": f"worker exited with {self.proc.returncode}: {' | '.join(tail)[-400:]}"}

    def finish(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


# ----------------------------------------------------------------------------------------------- driver
def run_point(
    settings, systems: list[str], warmup: int, steps: int, logs: Path, threads: int, trl_gpu_path: bool
) -> dict:
    """Every system of one point in its own worker, `warmup + steps` alternating rounds; medians and peaks."""
    sb = load_step_bench()
    workers, errors, memory = {}, {}, {}
    for name in systems:
        workers[name] = Worker(name, settings, warmup + steps, logs / f"{name}.log", threads, trl_gpu_path)
    for name, w in list(workers.items()):
        msg = w.receive()
        if "error" in msg:
            errors[name] = msg["error"]
            w.finish()
            del workers[name]
        else:
            memory[name] = {"rss_built_gb": msg["rss_built_gb"]}
    results = {name: [] for name in systems}
    try:
        for r in range(warmup + steps):
            for name, w in list(workers.items()):
                w.send("step")
                msg = w.receive()
                if "error" in msg:
                    errors[name] = msg["error"]
                    w.finish()
                    del workers[name]
                    continue
                if r >= warmup:
                    results[name].append(sb.StepResult(**msg))
        for name, w in workers.items():
            w.send("close")
            msg = w.receive()
            if "error" in msg:
                errors[name] = msg["error"]
            else:
                memory[name].update(msg)
    finally:
        for w in workers.values():
            w.finish()
    summary = {name: sb.summarize(rs) for name, rs in results.items() if rs}
    for name, x in summary.items():
        x["memory"] = memory.get(name, {})
    return {"summary": summary, "errors": errors}


def points(sweeps: dict, base: dict, only: list[str]) -> list[tuple[str, float, dict]]:
    out = []
    for sweep in only:
        values, key = sweeps[sweep]
        for x in values:
            out.append((sweep, x, dict(base, **{key: x})))
    return out


def parse_skip(items: list[str]) -> set[tuple[str, str, float]]:
    out = set()
    for item in items:
        try:
            system, sweep, x = item.split(":")
            out.add((system, sweep, float(x)))
        except ValueError:
            raise SystemExit(f"--skip: {item!r} is not SYSTEM:SWEEP:X, e.g. anchor:clip:60") from None
    return out


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x (nan with fewer than two points)."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0]
    if len(pairs) < 2:
        return math.nan
    mx = statistics.fmean(p[0] for p in pairs)
    my = statistics.fmean(p[1] for p in pairs)
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    return sum((p[0] - mx) * (p[1] - my) for p in pairs) / sxx


def curves(records: list[dict], systems: list[str]) -> dict:
    """sweep -> system -> (xs, step seconds, step peak GB) over the points where the system ran."""
    out = {}
    for rec in records:
        for name in systems:
            x = rec["summary"].get(name)
            if x is None:
                continue
            xs, ts, ms = out.setdefault(rec["sweep"], {}).setdefault(name, ([], [], []))
            xs.append(rec["x"])
            ts.append(x["step_s"])
            ms.append(x["memory"].get("peak_step_gb", math.nan))
    return out


def ours_phases(x: dict) -> dict:
    p = x["phases"]
    return {
        "data": p["data"],
        "encode": p["encode"],
        "rollout": p["rollout"],
        "rewards": p["rewards"],
        "ref": p["ref"] + p["old"],
        "update": p["policy"] + p["optimizer"],
    }


def unit(sweep: str, x: float) -> str:
    return {"clip": f"{x:g} s", "G": f"G={x:g}", "completion": f"C={x:g}"}[sweep]


def tables(records: list[dict], systems: list[str]) -> str:
    def cell(x, key, fmt):
        return fmt.format(x[key]) if x is not None else "—"

    lines = [
        "| sweep | point | prompt tok | compl tok | "
        + " | ".join(f"{n} s" for n in systems)
        + " | "
        + " | ".join(f"ours/{n}" for n in systems if n != "ours")
        + " | peak GB "
        + "/".join(systems)
        + " | built GB "
        + "/".join(systems)
        + " | load avg |",
        "|" + "---|" * (7 + 2 * len(systems) - (1 if "ours" in systems else 0)),
    ]
    for rec in records:
        summ = rec["summary"]
        ours = summ.get("ours")
        prompt = "/".join(str(summ[n]["prompt_tokens"]) for n in systems if n in summ)
        compl = "/".join(f"{summ[n]['completion_tokens']:.0f}" for n in systems if n in summ)
        times = []
        for n in systems:
            if n in summ:
                times.append(f"{summ[n]['step_s']:.2f}")
            elif n in rec["skipped"]:
                times.append("left out")
            else:
                times.append("failed" if n in rec["errors"] else "—")
        ratios = []
        for n in systems:
            if n == "ours":
                continue
            if ours and n in summ:
                per_round = [w / o for w, o in zip(summ[n]["walls"], ours["walls"])]
                ratios.append(f"{summ[n]['step_s'] / ours['step_s']:.2f}x ({min(per_round):.2f}–{max(per_round):.2f})")
            else:
                ratios.append("—")
        peak = "/".join(f"{summ[n]['memory'].get('peak_step_gb', math.nan):.2f}" if n in summ else "—" for n in systems)
        built = "/".join(
            f"{summ[n]['memory'].get('rss_built_gb', math.nan):.2f}" if n in summ else "—" for n in systems
        )
        lines.append(
            f"| {rec['sweep']} | {unit(rec['sweep'], rec['x'])} | {prompt} | {compl} | "
            + " | ".join(times)
            + " | "
            + " | ".join(ratios)
            + f" | {peak} | {built} | {rec['load']} |"
        )
    lines += [
        "",
        "ours/X = X's median step time over ours' (> 1: ours is faster), with the same ratio's range over "
        "the timed rounds; prompt tok / compl tok per system in the order of the time columns (TRL reads "
        "the text prompt only); peak GB = resident-set high-water mark of the system's worker over its "
        "steps; built GB = resident after the build (model, reference, optimizer, data).",
        "",
        "Ours' phases (median seconds per step; ref = reference (+ old) log-probs; update = policy forward + "
        "backward + optimizer):",
        "",
        "| sweep | point | " + " | ".join(OURS_PHASES) + " | step | largest |",
        "|" + "---|" * 10,
    ]
    for rec in records:
        x = rec["summary"].get("ours")
        if x is None:
            continue
        ph = ours_phases(x)
        top = max(ph, key=ph.get)
        lines.append(
            f"| {rec['sweep']} | {unit(rec['sweep'], rec['x'])} | "
            + " | ".join(f"{ph[p]:.3f}" for p in OURS_PHASES)
            + f" | {x['step_s']:.3f} | {top} ({ph[top] / x['step_s']:.0%}) |"
        )
    lines += [
        "",
        "Measured exponents (least-squares slope of log step time against log x; of log step peak memory in brackets):",
        "",
        "| sweep | " + " | ".join(systems) + " |",
        "|" + "---|" * (1 + len(systems)),
    ]
    for sweep, per in curves(records, systems).items():
        cells = []
        for n in systems:
            if n not in per or len(per[n][0]) < 2:  # a slope needs two points
                cells.append("—" if n not in per else "— (1 point)")
                continue
            xs, ts, ms = per[n]
            cells.append(f"{exponent(xs, ts):.2f} ({exponent(xs, ms):.2f}) over {len(xs)} points")
        lines.append(f"| {sweep} | " + " | ".join(cells) + " |")
    errors = [(rec, n, e) for rec in records for n, e in rec["errors"].items()]
    if errors:
        lines.append("")
        for rec, n, e in errors:
            lines.append(f"- {n} failed at {rec['sweep']} {unit(rec['sweep'], rec['x'])}: {e[:400]}")
    return "\n".join(lines)


def plot(records: list[dict], systems: list[str], path: Path) -> None:
    """Step time and step peak memory against each sweep's x, log-log (matplotlib, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_sweep = curves(records, systems)
    sweeps = [s for s in SWEEPS if s in per_sweep]
    labels = {"clip": "clip length (s)", "G": "G (completions per prompt)", "completion": "completion tokens"}
    fig, axes = plt.subplots(2, len(sweeps), figsize=(4.2 * len(sweeps), 7), squeeze=False)
    for col, sweep in enumerate(sweeps):
        for name, (xs, ts, ms) in per_sweep[sweep].items():
            k = exponent(xs, ts)
            slope = f"slope {k:.2f}" if len(xs) > 1 else "1 point"
            axes[0][col].plot(xs, ts, marker="o", label=f"{name} ({slope})")
            axes[1][col].plot(xs, ms, marker="o", label=name)
        values = sorted({x for xs, _, _ in per_sweep[sweep].values() for x in xs})
        for row, ylabel in enumerate(("step time (s, median; log)", "peak resident GB during steps")):
            ax = axes[row][col]
            ax.set_xscale("log")
            if row == 0:
                ax.set_yscale("log")
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
            ax.set_xlabel(labels[sweep])
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("One GRPO step: how the cost grows (ours, TRL text-only, the anchor loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only", nargs="+", choices=list(SWEEPS), default=list(SWEEPS), help="sweeps (default: all)")
    p.add_argument(
        "--model",
        default="256x4:qwen",
        help="HIDDENxLAYERS[:tiny|qwen] of the tiny kit, as step_bench (default: 256x4:qwen, the real "
        "Qwen2 BPE and 152k vocabulary)",
    )
    p.add_argument(
        "--systems",
        nargs="+",
        default=["ours", "swift", "trl", "anchor"],
        choices=["ours", "swift", "trl", "anchor"],
        help="default: all; swift = ms-swift in .swift-venv, created on first use",
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=DEFAULT_SKIP,
        metavar="SYSTEM:SWEEP:X",
        help=f"points a system is left out of (default: {' '.join(DEFAULT_SKIP)}; none: run all)",
    )
    p.add_argument("--steps", type=int, default=None, help="timed rounds per point (default: 2; --quick: 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    p.add_argument("--micro-batch", type=int, default=2, help="update micro-batch rows, all systems (default: 2)")
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="preprocess's prompt budget (default: its default, 2048)"
    )
    p.add_argument("--clips", type=int, default=1, help="clips per length, used in turn (default: 1)")
    p.add_argument("--size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"))
    p.add_argument("--video-fps", type=int, default=30)
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (default: 1; on a shared machine more threads than free cores "
        "spin against each other: a 64x2 step was 23x slower with 2 threads at load 7)",
    )
    p.add_argument("--trl-cpu-path", action="store_true", help="as step_bench's")
    p.add_argument("--workdir", type=Path, default=None, help="keep models, clips and worker logs here")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--plot", type=Path, default=HERE / "scaling.png", help="PNG path (default: bench/scaling.png)")
    p.add_argument("--no-plot", action="store_true", help="no PNG (no matplotlib needed)")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="JSON",
        help="print the tables (and the plot) of a saved --json run instead of measuring",
    )
    p.add_argument(
        "--quick", action="store_true", help="64x2:tiny, 56x84 clips of 1-2 s, G 2-4, 4-8 tokens, one timed round"
    )
    args = p.parse_args(argv)
    args.sweeps, args.base = SWEEPS, BASE
    if args.quick:
        args.model, args.sweeps, args.base = "64x2:tiny", QUICK_SWEEPS, QUICK_BASE
        args.size, args.video_fps, args.micro_batch = [56, 84], 8, 2
    if args.steps is None:
        args.steps = 1 if args.quick else 2
    for sweep in args.only:
        for _, _, point in points(args.sweeps, args.base, [sweep]):
            if point["generations"] % args.micro_batch:
                p.error(f"--micro-batch {args.micro_batch} must divide every G (got {point['generations']})")
    args.skip_set = parse_skip(args.skip)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    sb = load_step_bench()
    if args.report:
        records = json.loads(args.report.read_text())
        systems = [
            n for n in ("ours", "swift", "trl", "anchor") if any(n in r["systems"] + r["skipped"] for r in records)
        ]
        print(tables(records, systems))
        if not args.no_plot:
            plot(records, systems, args.plot)
        return records
    from preprocess.budget import DEFAULT_MAX_PROMPT_TOKENS

    if args.max_prompt_tokens is None:
        args.max_prompt_tokens = DEFAULT_MAX_PROMPT_TOKENS
    args.max_pixels = args.min_pixels = None  # qwen-omni-utils' defaults, as `python -m preprocess`
    records = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"scaling sweep on {sb.machine()}; load average at start {sb.load()}", flush=True)
        model_dir = sb.prepare_model(work, args.model)
        done = {}
        for sweep, x, point in points(args.sweeps, args.base, args.only):
            skipped = [n for n in args.systems if (n, sweep, float(x)) in args.skip_set]
            systems = [n for n in args.systems if n not in skipped]
            key = (point["seconds"], point["generations"], point["completion_length"], tuple(systems))
            if key in done:  # the base point is in every sweep: measured once
                records.append(dict(done[key], sweep=sweep, x=x, skipped=skipped))
                continue
            if not systems:
                records.append(
                    {
                        "sweep": sweep,
                        "x": x,
                        "point": point,
                        "systems": [],
                        "skipped": skipped,
                        "errors": {},
                        "summary": {},
                        "load": sb.load(),
                        "seconds": 0.0,
                    }
                )
                continue
            manifest, shards = sb.prepare_data(work, point["seconds"], args)
            tag = f"{point['seconds']:g}s-G{point['generations']}-C{point['completion_length']}"
            logs = work / "logs" / tag
            logs.mkdir(parents=True, exist_ok=True)
            s = sb.Settings(
                model_dir=model_dir,
                shards=shards,
                manifest=manifest,
                generations=point["generations"],
                completion_length=point["completion_length"],
                micro_batch=args.micro_batch,
                beta=args.beta,
                max_pixels=None,
                min_pixels=None,
                fps=args.fps,
                out=Path(tmp) / f"run-{tag}",
                min_new_tokens=point["completion_length"],
                frames=sb.frame_plan(shards),
            )
            t0 = time.perf_counter()
            out = run_point(s, systems, args.warmup, args.steps, logs, args.threads, not args.trl_cpu_path)
            rec = {
                "sweep": sweep,
                "x": x,
                "point": point,
                "systems": systems,
                "skipped": skipped,
                "errors": out["errors"],
                "summary": out["summary"],
                "load": sb.load(),
                "seconds": time.perf_counter() - t0,
            }
            done[key] = rec
            records.append(rec)
            print(
                f"[{sweep} {unit(sweep, x)}] {rec['seconds']:.0f} s, load {rec['load']}; "
                + ", ".join(
                    f"{k} {v['step_s']:.2f} s/step {v['memory'].get('peak_step_gb', math.nan):.2f} GB"
                    for k, v in rec["summary"].items()
                )
                + "".join(f"; {k} FAILED" for k in rec["errors"])
                + "".join(f"; {k} left out" for k in skipped),
                flush=True,
            )
    print()
    print(
        f"# {args.model}; micro-batch {args.micro_batch}, beta {args.beta}, prompt budget {args.max_prompt_tokens} "
        f"tokens, clips {args.size[0]}x{args.size[1]} at {args.video_fps} fps sampled at {args.fps:g} fps; median "
        f"of {args.steps} rounds after {args.warmup} warm-up; float32 on CPU; total "
        f"{time.perf_counter() - started:.0f} s; load average at end {sb.load()}"
    )
    print(tables(records, args.systems))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=str))
    if not args.no_plot:
        plot(records, args.systems, args.plot)
        print(f"plot: {args.plot}")
    return records


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker()
    else:
        main()
