"""The Ray Serve deployment: one replica draws one model on one node, with pennello's own runner.

A replica loads the model from *its own node's* store, through the same
:class:`~pennello.daemon.engine.residency.Residency` the single-box daemon uses, re-hashing every
file first: a copy that is missing or damaged makes the replica fail to start, so that node
serves nothing for the model. Models never travel through Ray; only the request (prompts,
seeds, parameters) goes in and PNG bytes come out. The answer is a Serve *streaming* response: a
``{"step": n}`` after each denoising step while the replica draws (the front's progress, as on one
box), then the pictures. Cancelling the call on the front stops the pipeline at its next step.

The front (:mod:`.front`) checks that the replica's model is the very version and manifest digest
it resolved the request against; Ray's placement already keeps replicas on nodes offering that
version's resource (:func:`.nodes.model_resource`), this is the second check.

    >>> painter = Painter("pennello-tiny")  # inside a Serve replica  # doctest: +SKIP
    >>> [m async for m in painter.draw("pennello-tiny", digest, [(request, 7)])][-1]["node"]  # doctest: +SKIP
    'c0ffee…'
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

from pennello.config import load_config
from pennello.errors import StoreError
from pennello.paths import get_paths

from ..engine.devices import pick_device
from ..engine.jobs import GenerateRequest, Job
from ..engine.residency import Residency
from ..engine.runner import Runner
from .nodes import VERSION_LABEL, version_label

log = logging.getLogger(__name__)


class _VerifyingStore:
    """The node's store, re-hashing a model's files whenever the residency asks for it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get(self, name: str) -> Any:
        return self.store.get(name, verify=True)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.store, attribute)


class Painter:
    """One model, warm on this node; Serve wraps it (:func:`deployment_for`)."""

    def __init__(self, model: str) -> None:
        from pennello.installer import Store

        import ray

        config, paths = load_config(), get_paths()
        self.model = model
        self.node = ray.get_runtime_context().get_node_id()
        cond = threading.Condition()
        self.residency = Residency(cond, config, paths, _VerifyingStore(Store(paths)),
                                   pick_device(config.engine.device))
        self.loaded = self.residency.ensure_loaded(model)  # verified, then loaded; raises if damaged
        self.runner = Runner(cond, self.residency, saver=None)
        # One pipeline call at a time: a cancelled call draws on in its thread until its next step
        # while Serve hands this replica the next batch, and two calls on one scheduler ran past its
        # last step.
        self._drawing = threading.Lock()
        log.info("replica of %s v%d ready on node %s", model, self.loaded.installed.version, self.node)

    async def draw(self, model: str, digest: str,
                   pictures: list[tuple[GenerateRequest, int]]) -> AsyncIterator[dict[str, Any]]:
        """Draw one picture per (request, seed) in one pipeline call, on a thread: yields
        ``{"step": n}`` after each denoising step, then the PNG bytes, stage seconds, and which node
        drew them. Cancelled (Serve raises ``CancelledError`` at our ``await``), the call stops at
        its next step.

        Raises:
            StoreError: this replica holds another model, version or catalog than the front asked.
        """
        installed = self.loaded.installed
        if model != self.model or digest != installed.digest:
            raise StoreError(f"version mismatch: this node has {self.model} {installed.digest}, "
                             f"the front asked for {model} {digest}")
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[int | None] = asyncio.Queue()

        def tell(step: int | None) -> None:
            loop.call_soon_threadsafe(steps.put_nowait, step)

        # One job per picture, each of one picture, so a job's step is the call's step.
        jobs = [Job(replace(request, n=1), [seed]) for request, seed in pictures[1:]]
        jobs.insert(0, _Telling(replace(pictures[0][0], n=1), [pictures[0][1]], tell=tell))
        drawing = loop.run_in_executor(None, self._draw, jobs, tell)
        try:
            while (step := await steps.get()) is not None:
                yield {"step": step}
            images, timing = await drawing
        finally:
            for job in jobs:  # cancelled: the runner stops the call once every job of it is
                job.cancel()
            drawing.add_done_callback(_retrieved)
        yield {"images": [_png(image) for image in images], "timing": timing, "node": self.node}

    def _draw(self, jobs: list[Job], tell: Callable[[int | None], None]) -> tuple[list[Any], dict[str, float]]:
        """The pipeline call (on an executor thread); tells None once it ended, however it ended."""
        try:
            with self._drawing:
                return self.runner.draw(self.loaded, [(job, 0) for job in jobs])
        finally:
            tell(None)


class _Telling(Job):
    """A replica's job that tells ``tell`` of each denoising step it makes (the front counts them)."""

    def __init__(self, request: GenerateRequest, seeds: list[int], tell: Callable[[int | None], None]) -> None:
        super().__init__(request, seeds)
        self._tell = tell

    def advance(self, images: int) -> None:
        super().advance(images)
        self._tell(self.step)


def _retrieved(future: asyncio.Future) -> None:
    """Take a cancelled draw's outcome (its ``Interrupted``), which nobody awaits, so asyncio does
    not log it as an error "never retrieved"."""
    if not future.cancelled():
        future.exception()


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # the front re-encodes in the format asked
    return buffer.getvalue()


def deployment_for(model: str, resource: str, replicas: int) -> Any:
    """The Serve application of ``model``: ``replicas`` replicas, one per node offering ``resource``."""
    from ray import serve

    # num_cpus 0: a replica waits on its device, and must not starve Ray's own actors of CPU.
    # The label: only nodes of the front's pennello version (one joined with a copied token is
    # not checked at the door; the front names it, .membership.refusals).
    return serve.deployment(Painter, name=f"painter-{model}", num_replicas=replicas,
                            max_ongoing_requests=1,
                            ray_actor_options={"num_cpus": 0, "resources": {resource: 1},
                                               "label_selector": {VERSION_LABEL: version_label()}}).bind(model)
