"""`lav2 demo`: LLaMA-Adapter V2 end to end on embedded, procedurally generated data.

  scenes   the world: shapes × colours × counts × positions, captions, visual questions, text-only instructions
  data     writes images, caption TSV, conversations, the held-out split, the tokenizer and the TFDS datasets
  priors   the frozen base: a language-prior stage for the tiny LLaMA and a contrastive stage for the tiny CLIP
  run      every stage in order: data, priors, `lav2 train`'s engine, export, held-out evaluation, report
  report   the printed table, report.md, report.json and report.png
"""
