"""PyTorch checkpoints → orbax: `convert_meta`, `convert_hf`, `convert_clip`, `convert_official`,
`convert_chat65b` in the modules of the same names; `sources` reads files tensor by tensor, `plan` checks and
streams, `ops` holds the shared array transforms."""
