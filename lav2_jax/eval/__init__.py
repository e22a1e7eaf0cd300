"""Benchmark evaluation: COCO captions, MME, ScienceQA and held-out loss.

``runner`` holds the pieces every benchmark shares (resumable ``predictions.jsonl``, bad-input accounting,
``--strict`` / ``--limit``, an atomically written ``summary.json`` and a printed table); one module per
benchmark turns its data layout into prompts and its predictions into scores.
"""
