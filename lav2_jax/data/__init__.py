"""Training data and host image preprocessing (docs/design.md §3.2.4).

Modules, one concept each:

* `images`    decode / resize + center crop / RandomResizedCrop / CLIP normalisation, RGB or BGR
* `tokenizer` one interface over sentencepiece `tokenizer.model` and Hugging Face `tokenizer.json`
* `tokenizer_train` a small LLaMA-like sentencepiece tokenizer trained on the spot (synthetic runs, the demo)
* `samples`   record → template segments → tokens / targets / loss mask, truncation rule
* `sources`   parsers: Alpaca JSON(L), ShareGPT/LLaVA conversations, caption TSV, COCO (+ Karpathy), TFDS catalog
* `builder`   `lav2 data build`: TFDS array_record datasets, parallel, counted skips, `--strict`
* `records`   `open_source`: random access to the records of a built dataset (pipeline, modality grouping)
* `pipeline`  grain pipelines with the batch contract, sharding, checkpointable state, joint recipe
* `modality_groups`  LLaVA-1.5's all-image / all-text global batches, spread over processes by length
* `packing`   several samples per row
* `testing`   tiny synthetic tokenizer / images / files for tests and benchmarks (imported by tests only)

Templates live in `lav2_jax.core.templates`. Submodules are imported on use (grain/TFDS stay out of light imports).
"""
