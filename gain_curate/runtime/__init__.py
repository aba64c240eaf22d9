"""Where and how the model runs, decided once per run; the lowest layer (it imports only
gain_curate.errors and gain_curate.kernels).

    hardware.py             the CPU's and GPU's matrix units (AMX, AVX-512 BF16, tensor cores)
    models.py               a --model name -> a local folder (ModelRef), tokenizer, dtype, revision
    gguf.py                 the registry-packaged models (SmolLM2, Qwen2.5-Coder) converted once
    transformers_compat.py  what differs between transformers versions
    truncated.py            the base model cut after the hooked layer, and its MLP inputs
    placement.py            one replica split over a node's GPUs (accelerate device map)
    kernel.py               which reduction runs: the Triton kernel where a probe launch works
    resolve.py              the Runtime of a run: device, dtype, kernel, token budget, placement
"""
