"""The front box: pennello's engine, with each batch drawn by a Ray Serve replica.

Everything users see stays the single-box engine's: the queue (429 when full), jobs, progress,
cancel, the saver and the gallery. Only two parts differ. :class:`ClusterResidency` keeps no
weights here: "loading" a model deploys its Serve application, one replica on each node whose
store verified that version. :class:`ClusterRunner` sends the batch's prompts and seeds through
a streaming :class:`ray.serve.handle.DeploymentHandle` with local preference off (through a head's
own routing every request would go to the head's replica), counts each denoising step the replica
reports while it draws (progress, events and A1111's ``progress`` move per step, as on one box),
cancels the call once every job of the batch was cancelled, and counts which node drew what
(``/api/ps``).

    >>> connect("127.0.0.1:6379", token_file)  # doctest: +SKIP
    >>> engine = ClusterEngine(config, paths)  # then as any Engine  # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pennello.errors import DaemonError, ModelNotFoundError, RequestError

from ..engine.engine import Engine, Task
from ..engine.families import get_family
from ..engine.jobs import GenerateRequest, Job, Slot
from ..engine.residency import Loaded, Residency
from ..engine.runner import Interrupted, Runner
from .deployment import deployment_for
from .membership import offer, refusals
from .nodes import VERSION_LABEL, model_resource, version_label
from .ray_env import apply

log = logging.getLogger(__name__)

_NO_WEIGHTS = SimpleNamespace(dtype=None)  # what describe sees of a model whose weights are on the nodes
RETRIES = 2  # a replica that died mid-batch: the batch goes to another one this many times more
RESCALE_S = 2.0  # how often the nodes offering each deployed model are counted again


def connect(head: str, token_file: Path, node_ip: str) -> None:
    """Join this process to the cluster at ``head`` as a driver of this box's node (``node_ip``,
    see :func:`.nodes.node_ip`).

    Raises:
        DaemonError: Ray is not installed, or the head cannot be reached or refuses the token.
    """
    apply(token_file)
    try:
        import ray
    except ImportError:
        raise DaemonError("Ray is not installed: pip install 'pennello[cluster]'") from None
    try:
        ray.init(address=head, _node_ip_address=node_ip, namespace="pennello", logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:  # ConnectionError, an auth refusal: one clear message either way
        raise DaemonError(f"cannot join the cluster at {head}: {type(e).__name__}: {e}") from None


class ClusterResidency(Residency):
    """Models as Serve applications: "loaded" means deployed on every node that verified it.

    A watcher thread keeps each deployment at one replica per node offering the model, so a node
    joining later adds capacity, and one that died stops being waited for, without a restart.
    Only nodes of this front's pennello version count (and get replicas); the nodes refused are
    logged once and listed by :meth:`describe`."""

    _watcher: threading.Thread | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: dict[str, str] = {}  # node address: why it gets no replica

    def _load(self, name: str) -> Loaded:
        installed = self.store.get(name)
        resource = model_resource(installed.name, installed.version, installed.digest)
        replicas = self._offering(resource)
        if replicas == 0:
            raise ModelNotFoundError(f"no node of the cluster offers {name} v{installed.version} "
                                     f"({installed.digest}); run `pennello node` where it is installed")
        handle = _deploy(name, resource, replicas)
        handle._init(_prefer_local_routing=False)  # Ray's only switch for it in 2.60
        log.info("%s v%d deployed on %d node(s)", name, installed.version, replicas)
        loaded = Loaded(installed, get_family(installed.manifest.pipeline.family),
                        pipe=handle.options(stream=True))  # the replica's steps, as it draws them
        loaded.derived.update(replicas=replicas, served_by=Counter(), resource=resource)
        self._watch()
        return loaded

    def _watch(self) -> None:
        """Start the watcher (:meth:`_rescale`) once."""
        with self.cond:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._rescale_forever, name="pennello-cluster-watch",
                                                 daemon=True)
                self._watcher.start()

    def _rescale_forever(self) -> None:
        while True:
            time.sleep(RESCALE_S)
            with self.cond:
                models = list(self.loaded.values())
            for loaded in models:
                try:
                    self._rescale(loaded)
                except Exception as e:  # the cluster may be changing under us: try again later
                    log.warning("cannot rescale %s: %s", loaded.installed.name, e)

    def _rescale(self, loaded: Loaded) -> None:
        """One replica per node offering the model now; Serve adds or removes replicas in place
        (the running ones and the handle stay). Returns once the new replicas are up."""
        name, resource = loaded.installed.name, loaded.derived["resource"]
        replicas = self._offering(resource)
        with self.cond:
            dropped = self.loaded.get(name) is not loaded  # unloaded meanwhile: do not deploy it again
        if dropped or replicas in (0, loaded.derived["replicas"]):
            return  # none left: keep waiting for one rather than delete the application
        log.info("%s: %d node(s) offer it now, had %d; rescaling", name, replicas, loaded.derived["replicas"])
        if replicas < loaded.derived["replicas"]:  # stop waiting for the lost ones now, not once Serve is done
            with self.cond:
                loaded.derived["replicas"] = replicas
        _deploy(name, resource, replicas)
        with self.cond:
            loaded.derived["replicas"] = replicas

    def _offering(self, resource: str) -> int:
        """How many live nodes of this front's pennello version offer ``resource`` (where Serve may
        place its replicas, :func:`.deployment.deployment_for`); notes the nodes refused, and logs
        each newly refused one."""
        import ray

        nodes = ray.nodes()
        refused = refusals(offer(self.store), nodes)
        for address in refused.keys() - self.refused.keys():
            log.warning("node %s is refused: %s", address, refused[address])
        self.refused = refused
        return sum(1 for node in nodes if node.get("Alive") and resource in node.get("Resources", {})
                   and (node.get("Labels") or {}).get(VERSION_LABEL) == version_label())

    def describe(self, loaded: Loaded) -> dict[str, Any]:
        """As on one box (no weights here), with the replicas, which node drew how many pictures,
        and the nodes refused (another pennello or model version), each with the reason."""
        here = super().describe(replace(loaded, pipe=_NO_WEIGHTS))
        return {**here, "device": "cluster", "dtype": None,
                "cluster": {"replicas": loaded.derived["replicas"],
                            "pictures_by_node": dict(loaded.derived["served_by"]),
                            "refused_nodes": dict(self.refused)}}

    def drop(self, name: str) -> bool:
        """Delete the model's Serve application, then forget it as on one box."""
        from ray import serve

        with self.cond:
            deployed = name in self.loaded
        if deployed:
            serve.delete(_application(name))
        return super().drop(name)


class ClusterRunner(Runner):
    """Draws batches on the replicas, as many at once as the model has replicas; cancel and
    progress stay on this box. ``run`` hands a batch to a thread and returns, so the device
    thread takes the next batch while the first is drawn elsewhere."""

    def __init__(self, cond: threading.Condition, residency: Residency, saver: Any) -> None:
        super().__init__(cond, residency, saver)
        self._pool = ThreadPoolExecutor(thread_name_prefix="pennello-cluster")
        self._room = threading.Condition()
        self._flying: list[list[Slot]] = []  # the batches being drawn now

    def run(self, slots: list[Slot]) -> None:
        """Wait for a free replica, then draw ``slots`` on a thread of ours."""
        with self._room:
            # Timed: a rescale (a node joined) frees room without any batch ending.
            while not self._room.wait_for(lambda: len(self._flying) < self._replicas(slots), timeout=RESCALE_S):
                pass
            self._flying.append(slots)
        self._pool.submit(self._run_one, slots)

    def _run_one(self, slots: list[Slot]) -> None:
        try:
            super().run(slots)
        finally:
            with self._room:
                self._flying.remove(slots)
                self._room.notify_all()

    def _replicas(self, slots: list[Slot]) -> int:
        with self.cond:
            loaded = self.residency.loaded.get(slots[0][0].request.model or "")
        return loaded.derived["replicas"] if loaded else 1

    def cancel_running(self) -> None:
        """Cancel the jobs of every batch being drawn, not only the last one begun."""
        super().cancel_running()
        with self._room:
            jobs = [job for slots in self._flying for job, _ in slots]
        for job in jobs:
            job.cancel()

    def drain(self) -> None:
        self._pool.shutdown(wait=True)

    def draw(self, loaded: Loaded, slots: list[Slot]) -> tuple[list[Any], dict[str, float]]:
        from PIL import Image

        jobs = list(dict.fromkeys(job for job, _ in slots))
        counted = {job: job.image_steps for job in jobs}
        for attempt in range(RETRIES + 1):
            try:
                answer = self._stream(loaded, slots)
                break
            except Interrupted:
                raise
            except Exception as e:
                if attempt == RETRIES or not _replica_lost(e):
                    raise
                log.warning("a replica was lost mid-batch (%s); sending the batch to another", e)
                for job in jobs:  # the lost replica's steps made nothing
                    job.rewind(counted[job])
        with self.cond:  # batches finish on several threads at once
            loaded.derived["served_by"][answer["node"]] += len(slots)
        loaded.touch()
        images = [Image.open(io.BytesIO(data)) for data in answer["images"]]
        return [image.convert("RGB") for image in images], answer["timing"]

    def _stream(self, loaded: Loaded, slots: list[Slot]) -> dict[str, Any]:
        """Send ``slots`` to a replica and advance the jobs by each step it reports while drawing;
        its answer. The call is cancelled as soon as every job of the batch was."""
        per_job = Counter(job for job, _ in slots)
        pictures = [(job.request, job.seeds[index]) for job, index in slots]
        stream = loaded.pipe.draw.remote(loaded.installed.name, loaded.installed.digest, pictures)
        drawing = True

        def on_end() -> None:  # a job ended: cancelled, most likely, on another thread
            if drawing and all(job.done for job in per_job):
                stream.cancel()

        for job in per_job:
            job.on_end(on_end)
        step = 0
        try:
            for message in stream:
                if "images" in message:
                    return message
                self._advance(per_job, message["step"] - step, message["step"])
                step = message["step"]
        except Exception:
            if all(job.done for job in per_job):  # Serve's cancelled-call errors, whichever it raised
                raise Interrupted from None
            raise
        finally:
            drawing = False
        raise DaemonError("the replica ended its answer without the pictures")

    def _advance(self, per_job: Counter, steps: int, step: int) -> None:
        """Count ``steps`` more denoising steps, up to ``step``, of the batch of ``per_job`` (its
        jobs' pictures)."""
        run = self._run
        for job, pictures in per_job.items():
            job.advance(pictures * steps)
        if run is not None and set(run.jobs) == set(per_job):  # several batches run at once here
            run.step = step


def _replica_lost(error: Exception) -> bool:
    """Whether ``error`` says the replica or its node died (worth another replica), not the request."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(error, (ActorDiedError, ActorUnavailableError, RayActorError))


def _application(name: str) -> str:
    return f"pennello-{name}"


def _deploy(name: str, resource: str, replicas: int) -> Any:
    """Deploy ``name``'s Serve application with ``replicas`` replicas, or rescale it in place (the
    running replicas and handles stay); its handle, once the new replicas are up."""
    from ray import serve

    return serve.run(deployment_for(name, resource, replicas), name=_application(name), route_prefix=None)


class ClusterEngine(Engine):
    """The engine of ``pennello serve --cluster``: the same façade, drawing on the cluster."""

    residency_class = ClusterResidency
    runner_class = ClusterRunner

    def submit_task(self, request: GenerateRequest, seeds: list[int], task: Task, kind: str,
                    total_steps: int) -> Job:
        """Refused (a 400 naming it): an edit or upscale needs the model's pipeline on this box,
        and the front loads none; only text-to-image goes to the cluster so far."""
        raise RequestError(f"{kind} is not available on a cluster front yet; only text-to-image is")
