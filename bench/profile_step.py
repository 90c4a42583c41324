"""Profile one system's GRPO step at a scale_bench point: where the seconds go, operation by operation.

Builds the point as ``bench/scale_bench.py`` does (synthetic 360x640 clip preprocessed at the prompt budget,
forced completion length), runs warm-up steps, then profiles timed steps with ``torch.profiler`` (the top
operations by self time, grouped by input shapes) or ``cProfile`` (Python functions by cumulative time).
TRL runs its steps in a worker thread (``step_bench.TRL``), which ``torch.profiler`` does not follow, so its
profile is taken inside that thread by a ``TrainerCallback``. One torch thread, as the sweep.

    python bench/profile_step.py --model 256x4:qwen                 # ours, torch.profiler
    python bench/profile_step.py --model 256x4:qwen --system trl    # TRL's step, the same table
    python bench/profile_step.py --model 64x2:tiny --profiler cprofile --seconds 30
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _scale_bench():
    spec = importlib.util.spec_from_file_location("bench_scale_bench", HERE / "scale_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _table(prof, rows: int) -> str:
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="256x4:qwen", help="HIDDENxLAYERS[:tiny|qwen] (default: 256x4:qwen)")
    ap.add_argument("--system", choices=["ours", "trl"], default="ours")
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length (default: 3)")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--completion-length", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="profiled steps (default: 1)")
    ap.add_argument("--profiler", choices=["torch", "cprofile"], default="torch")
    ap.add_argument("--rows", type=int, default=30, help="rows of the table (default: 30)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the model and clips here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    sb = _scale_bench().load_step_bench()
    from preprocess.budget import DEFAULT_MAX_PROMPT_TOKENS

    data_args = argparse.Namespace(
        clips=1,
        size=[360, 640],
        video_fps=30,
        fps=2.0,
        max_pixels=None,
        min_pixels=None,
        max_prompt_tokens=DEFAULT_MAX_PROMPT_TOKENS,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = sb.prepare_model(work, args.model)
        manifest, shards = sb.prepare_data(work, args.seconds, data_args)
        s = sb.Settings(
            model_dir=model_dir,
            shards=shards,
            manifest=manifest,
            generations=args.generations,
            completion_length=args.completion_length,
            micro_batch=args.micro_batch,
            max_pixels=None,
            min_pixels=None,
            out=work / "run",
            min_new_tokens=args.completion_length,
            frames=sb.frame_plan(shards),
        )
        total = args.warmup + args.steps
        system = sb.TRL(s, total_steps=total + 1) if args.system == "trl" else sb.Ours(s)
        done = {"steps": 0}
        if args.system == "trl":  # profile inside TRL's thread, on the profiled steps
            from torch.profiler import ProfilerActivity, profile
            from transformers import TrainerCallback

            class Profile(TrainerCallback):
                def on_step_begin(self, *_a, **_k):
                    done["steps"] += 1
                    if done["steps"] == args.warmup + 1:
                        done["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
                        done["prof"].__enter__()

                def on_step_end(self, *_a, **_k):
                    if done["steps"] == total:
                        done["prof"].__exit__(None, None, None)

            system.trainer.callback_handler.callbacks.insert(0, Profile())
        try:
            for i in range(total):
                profiling = i == args.warmup and args.system == "ours"
                if profiling and args.profiler == "cprofile":
                    py = cProfile.Profile()
                    py.enable()
                elif profiling:
                    from torch.profiler import ProfilerActivity, profile

                    done["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
                    done["prof"].__enter__()
                r = system.step()
                print(
                    f"{'warm-up' if i < args.warmup else 'profiled'} step: {r.wall:.3f} s; "
                    + ", ".join(f"{k} {v:.3f}" for k, v in r.phases.items() if v),
                    flush=True,
                )
            if args.system == "ours" and args.profiler == "cprofile":
                py.disable()
                pstats.Stats(py).sort_stats("cumulative").print_stats(args.rows)
            elif "prof" in done:
                if args.system == "ours":
                    done["prof"].__exit__(None, None, None)
                print(_table(done["prof"], args.rows))
        finally:
            system.close()


if __name__ == "__main__":
    main()
