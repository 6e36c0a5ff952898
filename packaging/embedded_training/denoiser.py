"""The denoiser stage: the UNet (v-prediction) and the CLIP text encoder, trained together.

Each step noises a batch of pinned latents (:mod:`.autoencoder`) at random timesteps, most of
them ones that 4- and 8-step sampling visits, and weighs the loss up where the object is. Some
captions are replaced by the empty prompt so that classifier-free guidance works, and an
exponential moving average of both models is what the stage returns.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from embedded_training.autoencoder import warmup_cosine

log = logging.getLogger("train_embedded_model")  # one logger for every stage of a run


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - decay)


def _few_step_timesteps(n_train: int) -> torch.Tensor:
    """The timesteps few-step sampling visits (4 and 8 trailing steps), which get extra weight."""
    return torch.tensor(sorted({int(t) for k in (4, 8)
                                for t in np.round(np.arange(n_train, 0, -n_train / k)) - 1}))


@dataclass(frozen=True)
class _Noising:
    """What a training batch is drawn from: the latents and their captions' token ids, and the
    scheduler's noise levels."""

    latents: torch.Tensor
    scale: float
    ids: torch.Tensor
    empty: torch.Tensor  # the empty prompt's ids
    alphas: torch.Tensor
    n_train: int
    sampled: torch.Tensor

    @classmethod
    def of(cls, pipe: Any, latents: torch.Tensor, scale: float, captions: list[str]) -> "_Noising":
        tokenizer, scheduler = pipe.tokenizer, pipe.scheduler

        def tokens(texts: list[str]) -> torch.Tensor:
            return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids

        n_train = scheduler.config.num_train_timesteps
        return cls(latents, scale, tokens(captions), tokens([""])[0], scheduler.alphas_cumprod.float(), n_train,
                   _few_step_timesteps(n_train))

    def draw(self, batch: int, g: torch.Generator, sampled_fraction: float,
             uncond_fraction: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: which latents, the noised latents x_t, their timesteps, the v target, and
        the caption ids (``uncond_fraction`` of them emptied)."""
        idx = torch.randint(len(self.latents), (batch,), generator=g)
        x0 = self.latents[idx] * self.scale
        t = torch.randint(self.n_train, (batch,), generator=g)
        pick = torch.rand(batch, generator=g) < sampled_fraction
        t[pick] = self.sampled[torch.randint(len(self.sampled), (int(pick.sum()),), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        a = self.alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - self.alphas[t]).sqrt().view(-1, 1, 1, 1)
        batch_ids = self.ids[idx]
        if uncond_fraction:
            batch_ids[torch.rand(batch, generator=g) < uncond_fraction] = self.empty
        return idx, a * x0 + s * noise, t, a * noise - s * x0, batch_ids


def train_denoiser(pipe: Any, latents: torch.Tensor, scale: float, captions: list[str], weights: torch.Tensor,
                   steps: int, batch: int, lr: float, ema_decay: float, seed: int, sampled_fraction: float = 0.5,
                   eval_fn: Callable[[Any, Any, int], None] | None = None, eval_every: int = 0,
                   ema_warmup: bool = True, text_lr_scale: float = 1.0,
                   uncond_fraction: float = 0.0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """UNet (v-prediction) and text encoder trained together; returns the EMA copies.

    ``uncond_fraction`` of the captions are replaced by the empty prompt, which is what the
    pipeline's classifier-free guidance feeds as its unconditional branch.
    """
    torch.manual_seed(seed)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    noising = _Noising.of(pipe, latents, scale, captions)
    unet.train(); text_encoder.train()
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW([{"params": list(unet.parameters())},
                             {"params": list(text_encoder.parameters()), "lr": lr * text_lr_scale}],
                            lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps, max(1, min(200, steps // 10)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    running = None
    for step in range(steps):
        idx, xt, t, v, batch_ids = noising.draw(batch, g, sampled_fraction, uncond_fraction)
        cond = text_encoder(batch_ids)[0]
        # Euler sampling feeds the UNet x_t (scaled back to unit variance), as trained here.
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        # The object is a tenth of the picture but all of what the prompt asks; weigh it up.
        loss = (weights[idx] * (pred - v) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # Warm-up: forget the random start quickly.
        decay = min(ema_decay, (1 + step) / (10 + step)) if ema_warmup else ema_decay
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log.info("denoise %5d/%d loss %.4f lr %.2e  %.0fs", step, steps, running,
                     sched.get_last_lr()[0], time.time() - t0)
        if eval_fn is not None and eval_every and step and step % eval_every == 0:
            eval_fn(ema_unet, ema_text, step)
    return ema_unet, ema_text
