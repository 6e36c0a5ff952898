"""Picture tools on top of the engine: edit, enhance, upscale, copyright check, styles, style batches, saved pipelines."""
