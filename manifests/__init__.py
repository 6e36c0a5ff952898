"""The shipped catalog: signed model manifests (``*.json``) and the public keys we trust (``keys/``).

Installed as ``pennello.manifests`` so wheel installs carry the catalog too; read it with
``importlib.resources.files("pennello.manifests")``.
"""
