"""Train ``pennello-tiny`` to draw simple scenes of coloured shapes from their description.

Everything is made here, with no download: a synthetic data set of one shape (circle, square,
triangle, star) of one colour on a plain background, at one of two sizes and five positions,
captioned the way a user would ask ("a small red circle on a blue background, top left"); a
held-out set of prompt combinations the model never sees in training; and a checker that reads
the colour and shape of the main object back from the pixels. The pipeline is the one
:func:`build_embedded_model.build_pipeline` makes (a diffusers ``StableDiffusionPipeline``);
training fills in its weights in stages:

1. the VAE, as a near-identity autoencoder: the first three latent channels are pinned to the
   image averaged over 4x4 pixels, so the latent space is a quarter-size picture and the
   decoder only has to upsample; then its decoder alone, on latents roughened the way a
   few-step denoiser gives them back, to draw crisp outlines from soft ones;
2. the UNet (v-prediction, loss weighted up where the object is and more on its outline) and
   the CLIP text encoder together, on those latents, some captions left empty so that
   classifier-free guidance works, with an exponential moving average of both.

The shipped weights came from a chain of such runs; docs/embedded-model.md lists the commands.

Every random draw is seeded. Run it under ``nice`` on a shared machine::

    nice -n 19 python packaging/train_embedded_model.py          # trains, checks, writes
    python packaging/sign_catalog.py                             # re-hashes and re-signs

The parts live beside it in ``packaging/embedded_training/`` (scenes, checker, the VAE's and the
denoiser's stages); this script is the command line and the order of the stages. The checker is
importable from it (the tests and ``bench/bench_embedded.py`` use it)::

    >>> scene = Scene("red", "circle", "blue", "small", "top left")
    >>> check(render(scene), scene) == (True, True)
    True
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The parts in embedded_training/ import each other by that name; a script loaded by path (the
# tests, bench/bench_embedded.py) lacks its folder on sys.path, which `python packaging/...` has.
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from embedded_training.autoencoder import (VAE_SCALE, as_vae_input, encode_latents, latent_scale,  # noqa: E402
                                           make_dataset, outline_band, pinned_latents, train_decoder, train_vae)
from embedded_training.checker import (GUIDANCE, check, contact_sheet, generate, placed, read_layout,  # noqa: E402
                                       read_scene, score)
from embedded_training.denoiser import train_denoiser  # noqa: E402
from embedded_training.scenes import (HELD_OUT_PAIRS, POSITIONS, SEED, Scene, all_scenes,  # noqa: E402
                                      held_out_prompts, render, split)

__all__ = ["GUIDANCE", "HELD_OUT_PAIRS", "POSITIONS", "Scene", "all_scenes", "check", "generate",
           "held_out_prompts", "main", "placed", "read_layout", "read_scene", "render", "score", "split"]

log = logging.getLogger("train_embedded_model")

REPO_ROOT = Path(__file__).resolve().parent.parent


def finalize(pipe: Any, held: list[Scene], baseline: dict, out: Path | None, sheet: Path | None,
             report: Path | None, train_seconds: float | None, guidance: float = GUIDANCE) -> dict:
    """Score on every held-out prompt, draw the contact sheet, and write the pipeline if it is better."""
    import build_embedded_model as build

    result = score(pipe, held, guidance=guidance)
    log.info("trained model on %d held-out prompts: %s (untrained: %s)", len(held), result, baseline)
    if report:
        report.write_text(json.dumps({"trained": result, "untrained": baseline, "guidance": guidance,
                                      "train_seconds": train_seconds}, indent=2) + "\n")
    if sheet:
        contact_sheet(pipe, held[:48], sheet, guidance=guidance)
        log.info("wrote %s", sheet)
    if out is not None:
        if result["both"] <= baseline["both"]:
            raise SystemExit("the trained model is no better than the untrained one; not saving")
        build.save_pipeline(pipe, out)
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        log.info("wrote %s (%.2f MB)", out, total / 1e6)
    return result


def _finetune_decoder(args: argparse.Namespace, data: torch.Tensor, masks: torch.Tensor, held: list[Scene]) -> None:
    """The decoder stage: checkpoints (scored on the exact latents of held-out renders) and WORK/vae."""
    from diffusers import AutoencoderKL

    if args.vae_init is None:
        raise SystemExit("--stage decoder needs --vae-init (the VAE whose decoder it fine-tunes)")
    vae = AutoencoderKL.from_pretrained(args.vae_init, local_files_only=True)
    rng = random.Random(args.seed + 5)
    renders = np.stack([render(s, rng) for s in held])
    exact = pinned_latents(as_vae_input(renders))

    def checkpoint(model: Any, step: int) -> None:
        with torch.no_grad():
            out = ((model.decode(exact).sample.clamp(-1, 1) + 1) * 127.5).round().byte()
        results = [check(im, s) for im, s in zip(out.permute(0, 2, 3, 1).numpy(), held)]
        log.info("step %d, held-out renders' exact latents: shape %.3f colour %.3f", step,
                 np.mean([sh for _, sh in results]), np.mean([c for c, _ in results]))
        model.save_pretrained(args.work / f"vae-step{step:05d}", safe_serialization=True)

    checkpoint(vae, 0)
    train_decoder(vae, data, masks, args.vae_steps, args.batch, args.vae_lr, args.seed + 3,
                  args.decoder_edge_weight, args.decoder_noise, checkpoint, args.eval_every)
    checkpoint(vae, args.vae_steps)
    vae.save_pretrained(args.work / "vae", safe_serialization=True)


def _train_vae_stage(args: argparse.Namespace, pipe: Any, data: torch.Tensor, scale: float) -> None:
    """The VAE stage (from --vae-init if given): trains ``pipe.vae``, logs how well it
    reconstructs and encodes, and writes it to WORK/vae."""
    from diffusers import AutoencoderKL

    if args.vae_init:
        pipe.vae = AutoencoderKL.from_pretrained(args.vae_init, local_files_only=True)
    train_vae(pipe.vae, data, args.vae_steps, 16, args.vae_lr, args.seed + 1)
    pipe.vae.register_to_config(scaling_factor=scale)
    with torch.no_grad():
        rec = pipe.vae.decode(pinned_latents(data[:256])).sample
        enc = encode_latents(pipe.vae, data[:256])
    log.info("vae: reconstruction MSE %.4f, encoder error %.4f", F.mse_loss(rec, data[:256]).item(),
             F.mse_loss(enc, pinned_latents(data[:256])).item())
    pipe.vae.save_pretrained(args.work / "vae", safe_serialization=True)


def _train_denoiser_stage(args: argparse.Namespace, pipe: Any, data: torch.Tensor, captions: list[str],
                          masks: torch.Tensor, scale: float, held: list[Scene]) -> None:
    """The denoiser stage (from --init if given): ``pipe`` ends with the EMA UNet and text encoder
    and the VAE of --vae-from (or WORK/vae), saved to WORK/final; checkpoints every --eval-every."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    vae_dir = args.vae_from or args.work / "vae"
    if args.stage == "denoiser" and (vae_dir / "config.json").exists():
        # Train on the latent scale the pipeline will decode with (the VAE's, fixed when it was trained).
        scale = json.loads((vae_dir / "config.json").read_text())["scaling_factor"]
    if args.init:  # continue from a saved denoiser (its UNet and text encoder)
        init = StableDiffusionPipeline.from_pretrained(args.init, local_files_only=True)
        pipe.unet, pipe.text_encoder = init.unet.train(), init.text_encoder.train()
    live_unet, live_text = pipe.unet, pipe.text_encoder

    def checkpoint(ema_unet: Any, ema_text: Any, step: int) -> None:
        pipe.unet, pipe.text_encoder = ema_unet, ema_text
        pipe.save_pretrained(args.work / f"step{step:05d}", safe_serialization=True)
        if (vae_dir / "config.json").exists():
            trained_vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
            with_vae = StableDiffusionPipeline(**{**pipe.components, "vae": trained_vae})
            with_vae.set_progress_bar_config(disable=True)
            log.info("step %d held-out: %s", step, score(with_vae, held[:48], guidance=args.guidance))
        pipe.unet, pipe.text_encoder = live_unet, live_text

    weights = 1.0 + args.object_weight * F.avg_pool2d(masks, VAE_SCALE)
    if args.edge_weight:  # the band along the object's outline: where the shapes differ
        weights = weights + args.edge_weight * F.avg_pool2d(outline_band(masks), VAE_SCALE)
    ema_unet, ema_text = train_denoiser(pipe, pinned_latents(data), scale, captions, weights, args.steps,
                                        args.batch, args.lr, args.ema, args.seed + 2, args.sampled_fraction,
                                        checkpoint, args.eval_every, not args.no_ema_warmup,
                                        args.text_lr_scale, args.uncond_fraction)
    pipe.unet, pipe.text_encoder = ema_unet.eval(), ema_text.eval()
    pipe.vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True)
    pipe.save_pretrained(args.work / "final", safe_serialization=True)


def _parser(default_out: Path) -> argparse.ArgumentParser:
    """The command line: which stage, and each stage's knobs (the defaults made the shipped model)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out, help="where the trained pipeline goes")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--stage", choices=("all", "vae", "denoiser", "decoder"), default="all",
                        help="train both (one after the other) or one; the denoiser stage uses --vae-from; "
                             "decoder fine-tunes the decoder of --vae-init")
    parser.add_argument("--vae-steps", type=int, default=600)
    parser.add_argument("--vae-lr", type=float, default=3e-3)
    parser.add_argument("--vae-init", type=Path, default=None, help="continue training this VAE directory")
    parser.add_argument("--decoder-edge-weight", type=float, default=4.0,
                        help="decoder stage: extra loss weight on the 2-pixel band along the outline")
    parser.add_argument("--decoder-noise", type=float, default=0.04,
                        help="decoder stage: noise added to the (also softened) latents it learns from")
    parser.add_argument("--vae-from", type=Path, default=None, help="a trained VAE directory (default WORK/vae)")
    parser.add_argument("--steps", type=int, default=2500, help="denoiser training steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--object-weight", type=float, default=4.0,
                        help="extra loss weight on latent pixels covered by the object")
    parser.add_argument("--edge-weight", type=float, default=0.0,
                        help="extra loss weight on latent pixels along the object's outline (2 pixels either side)")
    parser.add_argument("--text-lr-scale", type=float, default=1.0,
                        help="the text encoder's learning rate as a multiple of --lr")
    parser.add_argument("--uncond-fraction", type=float, default=0.1,
                        help="share of captions replaced by the empty prompt (lets guidance above 1.0 work)")
    parser.add_argument("--guidance", type=float, default=GUIDANCE,
                        help="guidance scale the checkpoints are scored at (1.0 for a denoiser trained without "
                             "--uncond-fraction)")
    parser.add_argument("--sampled-fraction", type=float, default=0.75,
                        help="share of training timesteps drawn from those 4/8-step sampling visits")
    parser.add_argument("--data", type=int, default=12000, help="training renders")
    parser.add_argument("--jitter", type=float, default=1.0,
                        help="scale of the renders' position and size jitter (1: up to 3 and 1.5 pixels)")
    parser.add_argument("--eval-every", type=int, default=300, help="steps between checkpoints")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pennello-tiny-train"), help="checkpoints")
    parser.add_argument("--no-ema-warmup", action="store_true", help="EMA at --ema from the first step")
    parser.add_argument("--init", type=Path, default=None, help="denoiser stage: start from this saved pipeline")
    parser.add_argument("--finalize", type=Path, default=None, help="only score and ship this checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see docs/embedded-model.md)")
    parser.add_argument("--sheet", type=Path, default=REPO_ROOT / "docs" / "embedded-model-contact-sheet.png")
    parser.add_argument("--report", type=Path, default=None, help="write the scores as JSON here")
    parser.add_argument("--no-save", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    import build_embedded_model as build

    args = _parser(build.DEFAULT_OUT).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    t_start = time.time()
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    untrained = build.build_pipeline(args.seed)
    untrained.set_progress_bar_config(disable=True)
    held = held_out_prompts(seed=args.seed)
    baseline = score(untrained, held[:48], guidance=args.guidance)
    log.info("untrained model on held-out prompts: %s", baseline)
    out = None if args.no_save else args.out
    if args.finalize:
        pipe = StableDiffusionPipeline.from_pretrained(args.finalize, local_files_only=True)
        if args.vae_from:
            pipe.vae = AutoencoderKL.from_pretrained(args.vae_from, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        finalize(pipe, held, baseline, out, args.sheet, args.report, None, args.guidance)
        return

    if build.VAE_SCALE != VAE_SCALE:
        raise SystemExit(f"VAE_SCALE {VAE_SCALE} here but {build.VAE_SCALE} in build_embedded_model.py")
    pipe = untrained
    train_scenes, _ = split(args.seed)
    data, captions, masks = make_dataset(train_scenes, args.data, args.seed, args.jitter)
    scale = latent_scale(data)
    log.info("data: %d renders of %d training scenes, %d held-out prompts; latent scale %.4f",
             len(data), len(train_scenes), len(held), scale)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "decoder":
        _finetune_decoder(args, data, masks, held)
        return
    if args.stage in ("vae", "all"):
        _train_vae_stage(args, pipe, data, scale)
        if args.stage == "vae":
            return
    _train_denoiser_stage(args, pipe, data, captions, masks, scale, held)
    finalize(pipe, held, baseline, out, args.sheet, args.report, round(time.time() - t_start), args.guidance)


if __name__ == "__main__":
    main()
