"""The engine: model residency, the job queue, the runner that calls pipelines, and the saver."""
