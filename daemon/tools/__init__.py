"""Picture tools on top of the engine: edit, upscale, styles, style batches, saved pipelines."""
