"""The Ray Serve deployment: one replica draws one model on one node, with pennello's own runner.

A replica loads the model from *its own node's* store, through the same
:class:`~pennello.daemon.engine.residency.Residency` the single-box daemon uses, re-hashing every
file first: a copy that is missing or damaged makes the replica fail to start, so that node
serves nothing for the model. Models never travel through Ray; only the request (prompts,
seeds, parameters) goes in and PNG bytes come out.

The front (:mod:`.front`) checks that the replica's model is the very version and manifest digest
it resolved the request against; Ray's placement already keeps replicas on nodes offering that
version's resource (:func:`.nodes.model_resource`), this is the second check.

    >>> painter = Painter("pennello-tiny")  # inside a Serve replica  # doctest: +SKIP
    >>> painter.draw("pennello-tiny", digest, [(request, 7)])["node"]  # doctest: +SKIP
    'c0ffee…'
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

from pennello.config import load_config
from pennello.errors import StoreError
from pennello.paths import get_paths

from ..engine.devices import pick_device
from ..engine.jobs import GenerateRequest, Job
from ..engine.residency import Residency
from ..engine.runner import Runner

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
        # One pipeline call at a time: a cancelled call goes on drawing in its thread while Serve
        # hands this replica the next batch, and two calls on one scheduler ran past its last step.
        self._drawing = threading.Lock()
        log.info("replica of %s v%d ready on node %s", model, self.loaded.installed.version, self.node)

    def draw(self, model: str, digest: str, pictures: list[tuple[GenerateRequest, int]]) -> dict[str, Any]:
        """Draw one picture per (request, seed) in one pipeline call; PNG bytes, stage seconds,
        and which node drew them.

        Raises:
            StoreError: this replica holds another model, version or catalog than the front asked.
        """
        installed = self.loaded.installed
        if model != self.model or digest != installed.digest:
            raise StoreError(f"version mismatch: this node has {self.model} {installed.digest}, "
                             f"the front asked for {model} {digest}")
        slots = [(Job(request, [seed]), 0) for request, seed in pictures]
        with self._drawing:
            images, timing = self.runner.draw(self.loaded, slots)
        return {"images": [_png(image) for image in images], "timing": timing, "node": self.node}


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # the front re-encodes in the format asked
    return buffer.getvalue()


def deployment_for(model: str, resource: str, replicas: int) -> Any:
    """The Serve application of ``model``: ``replicas`` replicas, one per node offering ``resource``."""
    from ray import serve

    # num_cpus 0: a replica waits on its device, and must not starve Ray's own actors of CPU.
    return serve.deployment(Painter, name=f"painter-{model}", num_replicas=replicas,
                            max_ongoing_requests=1,
                            ray_actor_options={"num_cpus": 0, "resources": {resource: 1}}).bind(model)
