"""The built-in Tiny trainer: a real LoRA fine-tune of a Flux-architecture transformer small enough
to train in seconds on a CPU.

It is the smoke test of a deployment (a job that goes through every phase and every queue without
a GPU or model downloads) and the trainer of the demo and the test suite. It reads a kohya-style
TOML config, prints kohya-style progress (a tqdm bar described `steps`, `epoch N/M`,
`saving checkpoint: ...`, `saving state at step N`) and writes kohya-style artefacts
(`<name>-step00000050.safetensors`, `<name>-step00000050-state/`, `<name>.safetensors`), so the
rest of autotrain treats it exactly like sd-scripts.

Run it as `python -m autotrain.tiny_trainer --config_file job.toml [--resume STATE_DIR]`.
Importing this package is cheap; torch is only imported by the training modules.
"""
