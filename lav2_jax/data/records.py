"""Reading back the records `lav2 data build` wrote: one random-access source per dataset folder and split.

`open_source(path, split)` → a TFDS array_record data source: `len(source)` records, `source[i]` one record dict
(the fields of its kind, `lav2_jax.data.samples`; no TensorFlow needed). The grain pipeline
(`lav2_jax.data.pipeline`) and the modality grouping (`lav2_jax.data.modality_groups`) both read through it.
"""

from __future__ import annotations


def open_source(path: str, split: str = "train"):
    """Random-access source over a dataset folder written by `lav2 data build` (no TensorFlow needed)."""
    # Lazy: tensorflow_datasets takes seconds to import; only opening a dataset needs it.
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(path)
    except Exception as e:  # noqa: BLE001 - tfds raises several types for a folder that is not a dataset
        raise ValueError(f"{path}: not a dataset written by `lav2 data build`: {e}") from None
    return builder.as_data_source(split=split)
