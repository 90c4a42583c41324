"""The token loop's decode step: eager over a growing cache vs compiled (``torch.compile``) over a static cache.

The language model of a tiny-kit thinker decodes G rows after one prompt (token ids, no media): C tokens,
greedy and seeded sampling, three ways — eager with a ``DynamicCache`` (the cache our token loop grows), eager
with a ``StaticCache`` (keys/values preallocated for P + C positions, a mask over the filled ones), and the
static one with its one-token step compiled (``dynamic=False``: one graph per G x (P + C); on a GPU the same
path gives CUDA graphs). Reported: decode tokens/s (G·(C − 1) / the loop's seconds after the prefill, the
best of ``--repeats``), the compile seconds, and whether every variant's tokens equal the eager loop's, greedy
and seeded (a faster path that changes a token is a bug, not a speed-up).

This measures the language model alone with the prompt copied per row; the package's token loop
(``omni_grpo.models.sampling.generate``) reads one copy of the prompt's keys/values through
``prefix_attention``, which a static compiled step would have to keep.

    python bench/decode_bench.py --model 64x2:tiny --prompt 300
    python bench/decode_bench.py --model 256x4:qwen --prompt 1100
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_step_bench():
    name = "bench_step_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "step_bench.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Decoder:
    """The thinker's language model, head and embeddings, and the three token loops."""

    def __init__(self, model_dir: Path, g: int, p: int, c: int, seed: int = 0):
        import torch

        from omni_grpo.models import get_module
        from omni_grpo.models.base import _getattr_path, base_thinker

        module = get_module("qwen2_5_omni")
        thinker = base_thinker(module.load_model(model_dir).eval())
        self.lm = _getattr_path(thinker, module.language_model)
        self.head, self.embed = thinker.lm_head, thinker.get_input_embeddings()
        self.g, self.p, self.c = g, p, c
        gen = torch.Generator().manual_seed(seed)
        self.prompt = torch.randint(0, min(self.head.weight.shape[0], 300), (1, p), generator=gen)
        self.compiled = torch.compile(self._step, dynamic=False)

    def _positions(self, start: int, length: int, rows: int):
        import torch

        return torch.arange(start, start + length)[None, None].expand(3, rows, length)  # TMRoPE: 3 equal axes

    def _token(self, hidden, gen):
        import torch

        logits = self.head(hidden).float()
        if gen is None:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)

    def _step(self, token, position, cache_position, cache, mask):
        out = self.lm(
            inputs_embeds=self.embed(token[:, None]),
            past_key_values=cache,
            use_cache=True,
            position_ids=position,
            cache_position=cache_position,
            attention_mask=mask,
        )
        return out.last_hidden_state[:, -1]

    def run(self, way: str, seed: int | None):
        """(tokens [G, C], seconds of the C - 1 decode steps) for `way` in eager / static / compiled."""
        import torch
        from transformers import DynamicCache, StaticCache

        g, p, c = self.g, self.p, self.c
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if way == "eager":
                cache = DynamicCache(config=self.lm.config)
                out = self.lm(
                    inputs_embeds=self.embed(self.prompt),
                    past_key_values=cache,
                    use_cache=True,
                    position_ids=self._positions(0, p, 1),
                )
                cache.batch_repeat_interleave(g)
                hidden = out.last_hidden_state[:, -1].repeat(g, 1)
            else:
                cache = StaticCache(config=self.lm.config, max_cache_len=p + c)
                out = self.lm(
                    inputs_embeds=self.embed(self.prompt).expand(g, -1, -1),
                    past_key_values=cache,
                    use_cache=True,
                    position_ids=self._positions(0, p, g),
                    cache_position=torch.arange(p),
                )
                hidden = out.last_hidden_state[:, -1]
            step = self.compiled if way == "compiled" else self._step
            tokens = []
            start = time.perf_counter()
            for t in range(c):
                token = self._token(hidden, gen)
                tokens.append(token)
                if t == c - 1:
                    break
                if way == "eager":
                    hidden = self.lm(
                        inputs_embeds=self.embed(token[:, None]),
                        past_key_values=cache,
                        use_cache=True,
                        position_ids=self._positions(p + t, 1, g),
                    ).last_hidden_state[:, -1]
                else:
                    mask = (torch.arange(p + c) <= p + t).long()[None].expand(g, -1)
                    hidden = step(token, self._positions(p + t, 1, g), torch.tensor([p + t]), cache, mask)
            return torch.stack(tokens, 1), time.perf_counter() - start


def measure(dec: Decoder, repeats: int, seed: int) -> dict:
    import torch

    greedy, seeded = dec.run("eager", None)[0], dec.run("eager", seed)[0]
    t0 = time.perf_counter()
    dec.run("compiled", None)
    compile_s = time.perf_counter() - t0
    out = {"compile_s": compile_s}
    for way in ("eager", "static", "compiled"):
        best = min(dec.run(way, seed)[1] for _ in range(repeats))
        out[way] = {
            "tokens_per_s": dec.g * (dec.c - 1) / best,
            "decode_s": best,
            "greedy_identical": bool(torch.equal(dec.run(way, None)[0], greedy)),
            "seeded_identical": bool(torch.equal(dec.run(way, seed)[0], seeded)),
        }
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="64x2:tiny", help="HIDDENxLAYERS[:tiny|qwen] (default: 64x2:tiny)")
    p.add_argument("--prompt", type=int, default=300, help="prompt tokens P (default: 300)")
    p.add_argument("--generations", type=int, default=8, help="G rows (default: 8)")
    p.add_argument("--completion-length", type=int, default=32, help="C tokens (default: 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed loops per way, the best kept (default: 3)")
    p.add_argument("--seed", type=int, default=1, help="sampling seed of the seeded comparison (default: 1)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the model here between runs")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    import logging
    import warnings

    import torch
    import transformers

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    sb = load_step_bench()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = sb.prepare_model(work, args.model)
        dec = Decoder(model_dir, args.generations, args.prompt, args.completion_length)
        load_start = sb.load()
        rec = measure(dec, args.repeats, args.seed)
    rec.update(
        model=args.model,
        G=args.generations,
        P=args.prompt,
        C=args.completion_length,
        threads=torch.get_num_threads(),
        load_start=load_start,
        load_end=sb.load(),
    )
    print(
        f"# {args.model}, G = {args.generations}, P = {args.prompt}, C = {args.completion_length}, "
        f"{rec['threads']} threads; compile {rec['compile_s']:.1f} s; load average {load_start} -> {rec['load_end']}"
    )
    print("| decode | tokens/s | decode s | greedy tokens = eager | seeded tokens = eager |\n|---|---|---|---|---|")
    for way, label in (
        ("eager", "eager, growing cache"),
        ("static", "eager, static cache"),
        ("compiled", "compiled, static cache"),
    ):
        x = rec[way]
        print(
            f"| {label} | {x['tokens_per_s']:.1f} | {x['decode_s']:.3f} | {x['greedy_identical']} | "
            f"{x['seeded_identical']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rec, indent=1))
    return rec


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    main()
