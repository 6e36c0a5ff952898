"""The embedded ``pennello-tiny`` model: prompt adherence on held-out prompts and CPU latency.

    python bench/bench_embedded.py               # writes bench/results/embedded-cpu.json
    python bench/bench_embedded.py --n 32        # fewer held-out prompts (quicker)
    python bench/bench_embedded.py --untrained   # also score the untrained (random) pipeline

Adherence: every held-out prompt ("a small red star on a white background, top left", whose
colour-shape-background combination never appears in training) is drawn once at the shipped
defaults (64x64, 4 steps, guidance 2.0, seeds 0, 1, ...) and the checker of
``packaging/train_embedded_model.py`` reads the main object's colour and shape back from the
pixels, and also where the object's centre is (right within a tenth of the side) and how
many separate objects the picture shows (place and count are reported, not targets).
Latency: one prompt, batch 1 and batch 4, median of ``--rounds`` calls after a warm-up, on
the CPU with ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

from _common import row, write_result

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "installer" / "embedded" / "pennello-tiny"


def _trainer():
    path = ROOT / "packaging" / "train_embedded_model.py"
    spec = importlib.util.spec_from_file_location("train_embedded_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def latency(pipe, batch: int, steps: int, rounds: int, guidance: float) -> float:
    """Median seconds per call drawing ``batch`` pictures."""
    import torch

    prompts = ["a large red circle on a blue background, center"] * batch
    times = []
    for i in range(rounds + 1):
        start = time.perf_counter()
        pipe(prompts, num_inference_steps=steps, height=64, width=64, guidance_scale=guidance,
             generator=torch.Generator().manual_seed(i))
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--n", type=int, default=96, help="held-out prompts to score")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--untrained", action="store_true", help="also score the untrained pipeline")
    args = parser.parse_args()

    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(args.threads)
    trainer = _trainer()
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(args.model, local_files_only=True)
    load_s = time.perf_counter() - start
    pipe.set_progress_bar_config(disable=True)
    held = trainer.held_out_prompts(args.n)
    scores = trainer.score(pipe, held, steps=args.steps)
    params = sum(p.numel() for part in (pipe.unet, pipe.vae, pipe.text_encoder) for p in part.parameters())
    weight_bytes = sum(p.stat().st_size for p in args.model.rglob("*.safetensors"))
    one, four = (latency(pipe, batch, args.steps, args.rounds, trainer.GUIDANCE) for batch in (1, 4))
    rows = [
        row("held-out adherence: colour", 100 * scores["colour"], "%", ">= 80 %", n=scores["n"]),
        row("held-out adherence: shape", 100 * scores["shape"], "%", ">= 80 %", n=scores["n"]),
        row("held-out adherence: colour and shape", 100 * scores["both"], "%", ">= 80 %", n=scores["n"]),
        row("held-out adherence: place", 100 * scores["place"], "%", "", n=scores["n"]),
        row("held-out pictures with one object", 100 * scores["one_object"], "%", "", n=scores["n"]),
        row(f"latency 64x64 {args.steps} steps guidance {trainer.GUIDANCE:g}, batch 1", 1000 * one, "ms/image", ""),
        row(f"latency 64x64 {args.steps} steps guidance {trainer.GUIDANCE:g}, batch 4", 1000 * four / 4, "ms/image", ""),
        row("pipeline load", load_s, "s", ""),
        row("weights", weight_bytes / 1e6, "MB", "<= 20 MB", params=params),
    ]
    extra = {"threads": args.threads, "steps": args.steps, "guidance": trainer.GUIDANCE}
    if args.untrained:
        untrained = trainer._load_build_module().build_pipeline()
        untrained.set_progress_bar_config(disable=True)
        extra["untrained"] = trainer.score(untrained, held, steps=args.steps)
    for r in rows:
        print(f"{r['metric']}: {r['value']:g} {r['unit']}")
    write_result("embedded-cpu", rows, **extra)


if __name__ == "__main__":
    main()
