"""The pennello daemon: warm models, a job queue with batching, and the HTTP API.

Other parts use only what is exported here (the tray and clients use HTTP, not this package).
Names are imported on first use so that ``pennello status`` does not pay for importing torch.

    >>> from pennello.daemon import create_app, Engine, GenerateRequest  # doctest: +SKIP
    >>> engine = Engine(config, paths); engine.start()  # doctest: +SKIP
    >>> app = create_app(config, engine)  # doctest: +SKIP
"""

from __future__ import annotations

from pennello.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Engine": "engine.engine",
    "create_app": "http.app",
    "BLUEPRINTS": "http.app",
    "GenerateRequest": "engine.jobs",
    "Job": "engine.jobs",
    "JobStatus": "engine.jobs",
    "ImageFormat": "engine.jobs",
    "OutputImage": "engine.jobs",
    "Outputs": "engine.outputs",
    "ModelFamily": "engine.families",
    "register_family": "engine.families",
    "get_family": "engine.families",
    "register_post_step": "engine.poststeps",
    "register_upscaler": "tools.upscale",
    "register_style": "tools.styles",
    "EditRequest": "tools.edit",
    "run_edit": "tools.edit",
    "serve": "server",
    "start_background_server": "server",
    "Advertiser": "net.mdns",
    "NetworkGuard": "net.offline",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
