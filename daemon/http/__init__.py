"""The HTTP layer: the app factory, request helpers, the access surface, OpenAPI, and one routes module per API dialect."""
