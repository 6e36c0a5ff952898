"""The VAE's side of training: renders as VAE input, the pinned latent space, and two stages.

The latent is fixed in advance (:func:`pinned_latents`: the picture averaged over 4x4 pixels,
plus a zero channel), so the latent space is a quarter-size picture and the VAE and the
denoiser train independently. :func:`train_vae` fits the encoder to it and the decoder to draw
the picture back; :func:`train_decoder` then fine-tunes the decoder alone on latents roughened
the way a few-step denoiser gives them back, so it draws crisp outlines from soft ones.
"""

from __future__ import annotations

import logging
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from embedded_training.scenes import COLOURS, Scene, render

log = logging.getLogger("train_embedded_model")  # one logger for every stage of a run

VAE_SCALE = 4  # latents are the picture averaged over 4x4 pixels; build_embedded_model.VAE_SCALE


def as_vae_input(images: np.ndarray) -> torch.Tensor:
    """uint8 pictures (n, 64, 64, 3) as the VAE takes them: (n, 3, 64, 64) floats in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def make_dataset(scenes: list[Scene], n: int, seed: int,
                 jitter: float = 1.0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` jittered renders of scenes drawn at random (``jitter``: see :func:`render`).

    Returns:
        images in [-1, 1] (n, 3, 64, 64), captions, and object masks (n, 1, 64, 64): where the
        picture differs from its background colour.
    """
    rng = random.Random(seed)
    picks = [rng.choice(scenes) for _ in range(n)]
    images = np.stack([render(s, rng, jitter=jitter) for s in picks])
    backgrounds = np.array([COLOURS[s.background] for s in picks], dtype=float)[:, None, None, :]
    masks = np.abs(images.astype(float) - backgrounds).sum(-1) > 30
    return as_vae_input(images), [s.caption(rng) for s in picks], torch.from_numpy(masks)[:, None].float()


def pinned_latents(x: torch.Tensor) -> torch.Tensor:
    """The latent the VAE is trained to produce: the picture averaged over 4x4 pixels, plus a zero channel.

    Fixing it in advance makes the latent space a quarter-size picture (easy for the denoiser)
    and lets the VAE and the denoiser train independently.
    """
    pooled = F.avg_pool2d(x, VAE_SCALE)
    return torch.cat([pooled, torch.zeros_like(pooled[:, :1])], dim=1)


def latent_scale(data: torch.Tensor) -> float:
    """The VAE's ``scaling_factor``: brings the pinned colour channels to unit variance."""
    return round(1.0 / F.avg_pool2d(data, VAE_SCALE).std().item(), 4)


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warm: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warm`` steps, then a cosine decay to a tenth of the learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)) * 0.9 + 0.1))


def train_vae(vae, data: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> None:
    """Encoder regressed onto :func:`pinned_latents`; decoder trained to draw the picture back from it."""
    torch.manual_seed(seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, max(1, steps // 20))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=g)]
        target = pinned_latents(x)
        mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
        # Decode a slightly noisy latent so the decoder forgives the denoiser's small errors.
        z = target + 0.04 * torch.randn(target.shape, generator=g)
        recon = vae.decode(z).sample
        loss_rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        loss_lat = F.mse_loss(mean, target) + 0.01 * F.mse_loss(logvar, torch.full_like(logvar, -8.0))
        loss = loss_rec + loss_lat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("vae %5d/%d rec %.4f lat %.4f  %.0fs", step, steps, loss_rec.item(), loss_lat.item(),
                     time.time() - t0)
    vae.eval()


def outline_band(masks: torch.Tensor) -> torch.Tensor:
    """1 on a 2-pixel band either side of the object's outline (where a circle, square, triangle
    and star differ), 0 elsewhere; same shape as ``masks``."""
    return F.max_pool2d(masks, 5, 1, 2) + F.max_pool2d(-masks, 5, 1, 2)


def roughen(z: torch.Tensor, g: torch.Generator, noise: float) -> torch.Tensor:
    """``z`` the way a few-step denoiser gives it back: softened by a random share of a 3x3 blur, plus noise."""
    share = 0.5 * torch.rand(len(z), 1, 1, 1, generator=g)
    soft = F.avg_pool2d(z, 3, 1, 1, count_include_pad=False)
    return torch.lerp(z, soft, share) + noise * torch.randn(z.shape, generator=g)


def train_decoder(vae, data: torch.Tensor, masks: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
                  edge_weight: float, noise: float, eval_fn=None, eval_every: int = 0) -> None:
    """Fine-tune only the decoder (the encoder already gives the pinned latents) to draw sharp
    outlines back from roughened latents; the loss is weighted up on the outline band."""
    torch.manual_seed(seed)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    vae.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps, max(1, steps // 20))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x = data[idx]
        w = 1.0 + edge_weight * outline_band(masks[idx])
        recon = vae.decode(roughen(pinned_latents(x), g, noise)).sample
        loss = (w * (recon - x) ** 2).mean() + 0.5 * (w * (recon - x).abs()).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("decoder %5d/%d loss %.4f  %.0fs", step, steps, loss.item(), time.time() - t0)
        if eval_fn is not None and eval_every and step and step % eval_every == 0:
            vae.eval()
            eval_fn(vae, step)
            vae.train()
    vae.eval()


@torch.no_grad()
def encode_latents(vae, data: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Encoder means (no sampling) for ``data``, unscaled."""
    return torch.cat([vae.quant_conv(vae.encoder(data[i:i + batch])).chunk(2, dim=1)[0]
                      for i in range(0, len(data), batch)])
