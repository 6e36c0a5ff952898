"""The daemon's command-line verbs (``serve``, ``generate``, ``pair``, ``offline``, the picture tools); each talks HTTP to a daemon except ``serve``."""
