"""Training data and host image preprocessing (DESIGN.md §1.3).

Modules, one concept each:

* `images`    decode / resize + center crop / RandomResizedCrop / CLIP normalisation, RGB or BGR
* `tokenizer` one interface over sentencepiece `tokenizer.model` and Hugging Face `tokenizer.json`
* `samples`   record → template segments → tokens / targets / loss mask, truncation rule
* `sources`   parsers: Alpaca JSON(L), ShareGPT/LLaVA conversations, caption TSV, COCO (+ Karpathy), TFDS catalog
* `builder`   `lav2 data build`: TFDS array_record datasets, parallel, counted skips, `--strict`
* `pipeline`  grain pipelines with the batch contract, sharding, checkpointable state, joint recipe
* `testing`   tiny synthetic tokenizer / images / files for tests and benchmarks

Templates live in `lav2_jax.core.templates`. Submodules are imported on use (grain/TFDS stay out of light imports).
"""
