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
    "Engine": "engine",
    "create_app": "app",
    "BLUEPRINTS": "app",
    "GenerateRequest": "jobs",
    "Job": "jobs",
    "JobStatus": "jobs",
    "ImageFormat": "jobs",
    "OutputImage": "jobs",
    "Outputs": "outputs",
    "ModelFamily": "pipelines",
    "register_family": "pipelines",
    "get_family": "pipelines",
    "register_post_step": "poststeps",
    "register_upscaler": "upscale",
    "register_style": "styles",
    "EditRequest": "edit",
    "run_edit": "edit",
    "serve": "server",
    "start_background_server": "server",
    "Advertiser": "advertise",
    "NetworkGuard": "offline",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
