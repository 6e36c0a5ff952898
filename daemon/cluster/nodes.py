"""A pennello node: Ray started for one box, offering the models its own store verified.

``ray start --block`` runs as our child, so every Ray process of this node (GCS on the head,
raylet, workers, Serve replicas) descends from a pid we know. Stopping kills exactly that tree:
``ray stop`` would kill every Ray process on the machine, another user's or namespace's too.

Each verified model version becomes one Ray resource (:func:`model_resource`) with a quantity of
1, so Serve places at most one replica of a model per node, and only on nodes whose copy passed
verification; the manifest digest is part of the name, so a node with another version or
catalog offers a different resource and never gets that model's replica. The node also publishes
its pennello version as a Ray label (:data:`VERSION_LABEL`): the front places replicas only on
nodes of its own version, and names the others (:func:`.membership.refusals`).

    >>> model_resource("pennello-tiny", 1, "sha256:ab12cd34ef56ab12cd34")
    'pennello:pennello-tiny@1:ab12cd34ef56ab12'
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Callable

from pennello import __version__
from pennello.errors import DaemonError, PennelloError
from pennello.files import write_atomic

from .ray_env import local_provider_config, ports_from, ray_environment

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0
# Ray's words when a starting node missed registering with the GCS within the 30 s that Ray 2.60
# hard-codes (ray/_private/node.py: no setting, no variable), as a loaded machine sometimes does.
MISSED_START = "timed out during startup"
START_TRIES = 3
NODE_FILE = "cluster-node.json"  # in the runtime dir while `pennello node` runs: its address and pid
RESOURCE_PREFIX = "pennello:"  # of every Ray resource a node offers for a model
VERSION_LABEL = "pennello/version"  # the Ray node label holding the node's pennello version


def model_resource(name: str, version: int, digest: str) -> str:
    """The Ray resource a node offers for one verified model version."""
    return f"{RESOURCE_PREFIX}{name}@{version}:{digest.removeprefix('sha256:')[:16]}"


def version_label(version: str = __version__) -> str:
    """``version`` as a Ray label value, which allows only letters, digits and ``-_.`` (a local
    version's ``+`` becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", version)[:63]


def verified_resources(store: Any) -> dict[str, float]:
    """One resource per installed model whose files re-hash correctly now; a damaged copy is
    logged and left out (the store marks it broken), so this node refuses that model."""
    resources: dict[str, float] = {}
    for installed in store.installed():
        try:
            store.verify([installed.name], progress=False)
        except PennelloError as e:
            log.warning("%s is not offered to the cluster: %s", installed.name, e)
            continue
        resources[model_resource(installed.name, installed.version, installed.digest)] = 1.0
    return resources


def ray_start_command(head: str | None, head_port: int, port_base: int, node_ip: str,
                      resources: dict[str, float], num_gpus: int | None) -> list[str]:
    """The ``ray start --block`` command line of a head (``head`` None) or a joining node."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        raise DaemonError("Ray is not installed: pip install 'pennello[cluster]'")
    command = [ray, "start", "--block", "--disable-usage-stats", f"--node-ip-address={node_ip}",
               f"--resources={json.dumps(resources)}", f"--labels={VERSION_LABEL}={version_label()}"]
    command += ["--head", f"--port={head_port}", "--include-dashboard=false",
                "--ray-client-server-port", str(port_base + 6)] if head is None else [f"--address={head}"]
    if num_gpus is not None:
        command.append(f"--num-gpus={num_gpus}")
    for option, value in ports_from(port_base).items():
        command += [option, value]
    return command


def start(command: list[str], token_file: Path, env: dict[str, str]) -> subprocess.Popen:
    """Run ``command`` (see :func:`ray_start_command`) with our Ray environment; its stderr is a pipe."""
    log.info("starting Ray: %s", " ".join(command))
    local_provider_config(Path(env.get("HOME") or Path.home()))  # Ray's own ~, as it will expand it
    return subprocess.Popen(command, env={**env, **ray_environment(token_file)}, stderr=subprocess.PIPE,
                            text=True, errors="replace")


def run(command: list[str], token_file: Path, env: dict[str, str],
        started: Callable[[subprocess.Popen], None], stop: Callable[[int], None]) -> int:
    """Run ``command`` (:func:`start`) until it ends, its stderr passed on to ours; started again,
    up to :data:`START_TRIES` times in all, when it missed Ray's fixed window to register with the
    head (:data:`MISSED_START`), never for another failure. ``started`` gets each process;
    ``stop(pid)`` ends what a missed start left behind (it holds the pinned ports). Returns Ray's
    last exit status."""
    attempt = 1
    while True:
        process = start(command, token_file, env)
        started(process)
        missed = threading.Event()
        passing = threading.Thread(target=_pass_on, args=(process.stderr, missed), daemon=True)
        passing.start()
        code = process.wait()
        passing.join(timeout=STOP_GRACE_S)  # a leftover child may hold the pipe: do not wait for it
        if code == 0 or not missed.is_set() or attempt == START_TRIES:
            return code
        stop(process.pid)
        attempt += 1
        log.warning("this node did not register with the head within the 30 s Ray allows (is this box "
                    "or the head overloaded?); starting Ray again (try %d of %d)", attempt, START_TRIES)


def _pass_on(stream: IO[str], missed: threading.Event) -> None:
    """Copy Ray's stderr to ours line by line; set ``missed`` on :data:`MISSED_START`."""
    for line in stream:
        sys.stderr.write(line)
        if MISSED_START in line:
            missed.set()


def write_node_file(runtime_dir: Path, node_ip: str, pid: int) -> Path:
    """Say where this box's node runs, for ``pennello serve --cluster`` on the same box."""
    path = runtime_dir / NODE_FILE
    write_atomic(path, json.dumps({"ip": node_ip, "pid": pid}).encode(), mode=0o600)
    return path


def node_ip(runtime_dir: Path) -> str:
    """This box's node address, from its node file.

    Raises:
        DaemonError: no ``pennello node`` runs on this box (a Ray driver needs a local node).
    """
    try:
        return json.loads((runtime_dir / NODE_FILE).read_text())["ip"]
    except (OSError, ValueError, KeyError):
        raise DaemonError("no pennello node runs on this box: start `pennello node --head` or "
                          "`pennello node --join HEAD` here first") from None


def stop_node(pid: int, node_ip: str, port_base: int, grace_s: float = STOP_GRACE_S) -> None:
    """Stop this node's Ray processes and nothing else: the tree below ``pid`` (``ray start``),
    then any worker of this node that a dying raylet left behind, told by the node's own pinned
    address on its command line (other nodes on the machine have other ports)."""
    import psutil  # a Ray dependency

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    _end(tree, grace_s)
    marks = {f"--node-ip-address={node_ip}", f"--node-manager-port={ports_from(port_base)['--node-manager-port']}"}
    strays = [process for process in psutil.process_iter(["cmdline"])
              if marks <= set(process.info["cmdline"] or ())]
    _end(strays, grace_s)


def _end(processes: list[Any], grace_s: float) -> None:
    """SIGTERM ``processes``, then SIGKILL those still there after ``grace_s``."""
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
