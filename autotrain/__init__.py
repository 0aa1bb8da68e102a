"""autotrain: folders of captioned images in, trained diffusion models out, on every GPU you have.

The SDK lives in `autotrain.pipeline` (prepare_pipeline, run_pipeline, run_batch_pipeline); the
`autotrain` command is a thin layer over it.
"""

__version__ = "0.1.0"
