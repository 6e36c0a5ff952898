"""Several GPU boxes behind one pennello, on Ray Serve (``pip install 'pennello[cluster]'``).

Every box runs ``pennello node`` (one of them ``--head``): Ray with pinned ports, token
authentication on, every outbound report switched off (:mod:`.ray_env`), and one Ray resource
per verified model version in the box's own store (:mod:`.nodes`). The front box runs
``pennello serve --cluster HEAD``: pennello's queue, progress, cancel and gallery stay where
they are, and the engine's pipeline call becomes a call to a Ray Serve deployment
(:mod:`.deployment`, :mod:`.front`) with one replica on each box that holds the model.

Nothing here is imported unless a cluster command runs; Ray is an optional extra.
"""
