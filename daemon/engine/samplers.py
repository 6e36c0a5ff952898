"""Samplers and noise schedules by their AUTOMATIC1111 names, mapped onto diffusers schedulers.

A1111 names a sampler ("Euler a", "DPM++ 2M") and, since 1.9, a separate schedule ("Karras",
"Exponential"); older clients still send both in one name ("DPM++ 2M Karras"). Each sampler here
is a diffusers scheduler class with options, and each schedule is options that class takes, so a
request's pair becomes ``Cls.from_config(pipe.scheduler.config, **options)`` for one pipeline
call (:func:`sampler_applied`); without either, the model keeps its own scheduler.

    >>> split_legacy("DPM++ 2M Karras"), split_legacy("euler a")
    (('DPM++ 2M', 'Karras'), ('Euler a', None))
    >>> options_for("DPM++ 2M", "Karras", "PNDMScheduler")
    ('DPMSolverMultistepScheduler', {'use_karras_sigmas': True})
    >>> options_for("DDIM", "Karras", "PNDMScheduler")  # A1111 too ignores it for DDIM
    ('DDIMScheduler', {})

Samplers that need packages pennello does not ship (LMS and Beta need scipy, DPM++ SDE needs
torchsde) are left out rather than named and then refused at run time.
"""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

SamplerName = Literal["Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DDIM",
                      "PLMS", "UniPC", "DEIS", "LCM"]
ScheduleName = Literal["Automatic", "Uniform", "Normal", "Simple", "Karras", "Exponential", "SGM Uniform",
                       "DDIM"]


@dataclass(frozen=True)
class Sampler:
    """A diffusers scheduler class (by name, so nothing imports diffusers until a call needs it)."""

    cls: str
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


SAMPLERS: dict[str, Sampler] = {
    "Euler": Sampler("EulerDiscreteScheduler", aliases=("k_euler",)),
    "Euler a": Sampler("EulerAncestralDiscreteScheduler", aliases=("k_euler_a", "k_euler_ancestral")),
    "Heun": Sampler("HeunDiscreteScheduler", aliases=("k_heun",)),
    "DPM2": Sampler("KDPM2DiscreteScheduler", aliases=("k_dpm_2",)),
    "DPM2 a": Sampler("KDPM2AncestralDiscreteScheduler", aliases=("k_dpm_2_a",)),
    "DPM++ 2M": Sampler("DPMSolverMultistepScheduler", aliases=("k_dpmpp_2m",)),
    "DPM++ 2M SDE": Sampler("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"},
                            ("k_dpmpp_2m_sde",)),
    "DDIM": Sampler("DDIMScheduler"),
    "PLMS": Sampler("PNDMScheduler", {"skip_prk_steps": True}),  # PLMS is PNDM without Runge-Kutta warm-up
    "UniPC": Sampler("UniPCMultistepScheduler"),
    "DEIS": Sampler("DEISMultistepScheduler"),
    "LCM": Sampler("LCMScheduler"),
}

# label -> (A1111's internal name, the scheduler options that give that schedule).
SCHEDULES: dict[str, tuple[str, dict[str, Any]]] = {
    "Automatic": ("automatic", {}),
    "Uniform": ("uniform", {"timestep_spacing": "linspace"}),
    "Normal": ("normal", {"timestep_spacing": "linspace"}),
    "Simple": ("simple", {"timestep_spacing": "trailing"}),
    "Karras": ("karras", {"use_karras_sigmas": True}),
    "Exponential": ("exponential", {"use_exponential_sigmas": True}),
    "SGM Uniform": ("sgm_uniform", {"timestep_spacing": "trailing"}),
    "DDIM": ("ddim", {"timestep_spacing": "leading"}),
}
assert set(SAMPLERS) == set(typing.get_args(SamplerName)) and set(SCHEDULES) == set(typing.get_args(ScheduleName))


def _lookup(table: dict[str, list[str]], name: str) -> str | None:
    wanted = name.strip().lower()
    return next((canonical for canonical, names in table.items() if wanted in names), None)


def sampler_name(name: str) -> str | None:
    """The sampler ``name`` means, by name or alias, in any case; None if there is none."""
    return _lookup({k: [k.lower(), *s.aliases] for k, s in SAMPLERS.items()}, name)


def schedule_name(name: str) -> str | None:
    """The schedule ``name`` means, by label or A1111's internal name, in any case."""
    return _lookup({k: [k.lower(), internal] for k, (internal, _) in SCHEDULES.items()}, name)


def split_legacy(name: str) -> tuple[str, str | None]:
    """A sampler name as clients before A1111 1.9 send it ("DPM++ 2M Karras") as (sampler, schedule);
    an unknown name comes back as it is, for the parameter check to refuse by name."""
    known = sampler_name(name)
    if known is not None:
        return known, None
    head, _, tail = name.strip().rpartition(" ")
    if head and sampler_name(head) and schedule_name(tail):
        return sampler_name(head), schedule_name(tail)  # type: ignore[return-value]
    return name, None


def options_for(sampler: str | None, schedule: str | None, own_cls: str) -> tuple[str, dict[str, Any]]:
    """The diffusers class name and options of a (sampler, schedule) pair; ``own_cls`` (the
    model's scheduler) stands in for an absent sampler. A schedule the class cannot follow (DDIM
    has no Karras sigmas) is left out and logged, as A1111 ignores schedules for such samplers."""
    cls = SAMPLERS[sampler].cls if sampler else own_cls
    schedule_options = SCHEDULES[schedule or "Automatic"][1]
    import diffusers

    accepted = inspect.signature(getattr(diffusers, cls).__init__).parameters
    if any(option not in accepted for option in schedule_options):
        log.info("%s cannot follow the %s schedule; its own is used, as A1111 does", sampler or cls, schedule)
        schedule_options = {}
    return cls, {**(SAMPLERS[sampler].options if sampler else {}), **schedule_options}


@contextmanager
def sampler_applied(pipe: Any, sampler: str | None, schedule: str | None) -> Iterator[None]:
    """``pipe`` with the scheduler of (``sampler``, ``schedule``) for the duration of one call,
    then its own again (the device thread is the only user of a loaded pipeline)."""
    if sampler is None and schedule in (None, "Automatic"):
        yield
        return
    own = pipe.scheduler
    cls, options = options_for(sampler, schedule, type(own).__name__)
    import diffusers

    pipe.scheduler = getattr(diffusers, cls).from_config(own.config, **options)
    try:
        yield
    finally:
        pipe.scheduler = own


def counts_as_step(pipe: Any, index: int) -> bool:
    """Whether the pipeline's denoising iteration ``index`` completes one of the steps asked for:
    a scheduler may take more iterations than steps (Heun and DPM2 two per step, PLMS one more),
    and progress must still reach exactly ``steps``, spread evenly over the iterations."""
    total, steps = len(pipe.scheduler.timesteps), getattr(pipe.scheduler, "num_inference_steps", None)
    if not steps or total <= steps:
        return True
    return (index + 1) * steps // total > index * steps // total


def a1111_samplers() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/samplers``: A1111's shape, with the diffusers class each one runs."""
    return [{"name": name, "aliases": list(s.aliases), "options": {"scheduler": s.cls, **s.options}}
            for name, s in SAMPLERS.items()]


def a1111_schedules() -> list[dict[str, Any]]:
    """``GET /sdapi/v1/schedulers``: A1111's shape (``default_rho`` -1: not a rho schedule)."""
    return [{"name": internal, "label": label, "aliases": None,
             "default_rho": 7.0 if label == "Karras" else -1, "need_inner_model": False}
            for label, (internal, _) in SCHEDULES.items()]
