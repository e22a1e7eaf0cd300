"""COCO caption metrics through `pycocoevalcap` (the `eval` extra), with a pure-Python tokenizer fallback.

`caption_scores(refs, preds, tokenizer="auto")` → (metrics, info):
  refs {image_id: [reference caption, ...]}, preds {image_id: caption} (scored over the ids of `preds`).
  metrics: BLEU_1..BLEU_4 (pycocoevalcap's Bleu_1..Bleu_4, "closest" reference length), ROUGE_L, CIDEr (CIDEr-D
  with the document frequencies of these references, as COCOEvalCap computes it), and METEOR / SPICE when they
  can run. info: {"tokenizer": ..., "skipped_metrics": {name: reason}}.

Tokenizers (both lower-case and drop pycocoevalcap's punctuation list `PUNCTUATIONS`):
  ptb     pycocoevalcap's `PTBTokenizer` (Stanford CoreNLP 3.4.1's PTBTokenizer; needs `java` on PATH).
  python  `ptb_like_tokenize` below, for machines without Java. The rules: lower-case; split off
          ``! ? ; " ( ) [ ] { }`` everywhere (brackets written ``-lrb-`` etc. and kept, as the PTB tokenizer's
          lower-cased output is by pycocoevalcap), ``,`` and ``:`` unless between digits, a final ``.`` unless the
          token is an abbreviation (``a.m.``) or ``...``; split the clitics ``n't 's 're 've 'll 'd 'm`` and a
          trailing ``'``; a leading ``$`` becomes its own token. On ordinary captions it gives the same tokens as
          the PTB tokenizer (tested against it); exotic punctuation may differ, so figures meant for comparison
          with published tables should use ``ptb``.
  auto    ptb when `java` is found, else python.

METEOR (`meteor-1.5.jar`, shipped in the pip package) needs Java; SPICE needs Java and the Stanford CoreNLP 3.6.0
jars in pycocoevalcap's `spice/lib/`, which pycocoevalcap would download on first use: this module never
downloads, it reports SPICE as skipped and says where the jars go.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from typing import Mapping

# pycocoevalcap's list (tokenizer/ptbtokenizer.py): tokens dropped after tokenising.
PUNCTUATIONS = ("''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...",
                ";")
_DROP = set(PUNCTUATIONS) | {'"'}
# With -lowerCase the PTB tokenizer writes brackets as lower-case -lrb- etc., which pycocoevalcap's upper-case
# list does not drop: they stay in the tokenised text, and so they do here.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITIC = re.compile(r"^(.+?)('s|'re|'ve|'ll|'d|'m)$")
_ABBREV = re.compile(r"^([a-z]\.)+$")
_SPLIT = re.compile(r"([!?;\"()\[\]{}])|(?<!\d)([,:])|([,:])(?!\d)")


def ptb_like_tokenize(text: str) -> str:
    """The pure-Python tokenizer (rules in the module docstring): caption → space-joined lower-case tokens."""
    text = _SPLIT.sub(lambda m: f" {m.group(0)} ", text.replace("\n", " ").lower())
    out: list[str] = []
    for tok in text.split():
        tail = []
        if tok.endswith(".") and tok != "..." and not _ABBREV.match(tok) and len(tok) > 1:
            tok, tail = tok.rstrip("."), ["."]
        if tok.startswith("$") and len(tok) > 1:
            out.append("$")
            tok = tok[1:]
        if tok.endswith("n't") and len(tok) > 3:
            out += [tok[:-3], "n't"]
        elif _CLITIC.match(tok):
            out += list(_CLITIC.match(tok).groups())
        elif tok.endswith("'") and len(tok) > 1:
            out += [tok[:-1], "'"]
        elif tok:
            out.append(tok)
        out += tail
    return " ".join(_BRACKETS.get(t, t) for t in out if t not in _DROP)


def java_available() -> bool:
    return shutil.which("java") is not None


def _package_dir(sub: str) -> str:
    import pycocoevalcap  # lazy here and below: the optional `eval` extra

    return os.path.join(list(pycocoevalcap.__path__)[0], sub)


SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_missing() -> str | None:
    """Why SPICE cannot run here (None when it can)."""
    if not java_available():
        return "needs Java (java not found on PATH)"
    lib = _package_dir(os.path.join("spice", "lib"))
    absent = [j for j in SPICE_JARS if not os.path.isfile(os.path.join(lib, j))]
    if absent:
        return (f"needs the Stanford CoreNLP 3.6.0 jars ({', '.join(absent)}) in {lib}; pycocoevalcap would "
                "download them, this tool does not (copy them there to enable SPICE)")
    return None


def resolve_tokenizer(name: str) -> str:
    if name not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenizer {name!r}: expected auto, ptb or python")
    if name == "auto":
        return "ptb" if java_available() else "python"
    if name == "ptb" and not java_available():
        raise ValueError("--tokenizer ptb needs Java (java not found on PATH); use --tokenizer python")
    return name


TOKENIZER_NAMES = {"ptb": "ptb (pycocoevalcap PTBTokenizer, Stanford CoreNLP 3.4.1, Java)",
                   "python": "python (lav2_jax.eval.caption_metrics.ptb_like_tokenize, no Java)"}


def tokenize(captions: Mapping, tokenizer: str) -> dict:
    """{id: [caption, ...]} → {id: [tokenized caption, ...]} with the resolved tokenizer "ptb" or "python"."""
    if tokenizer == "python":
        return {k: [ptb_like_tokenize(c) for c in v] for k, v in captions.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def caption_scores(refs: Mapping, preds: Mapping, tokenizer: str = "auto", meteor: bool = True,
                   spice: bool = True, meteor_scorer=None) -> tuple[dict, dict]:
    """(metrics, info) — see the module docstring. Ids of `preds` must all be in `refs`.

    `meteor_scorer`: a running `pycocoevalcap.meteor.meteor.Meteor` to use instead of starting one (its JVM
    takes seconds to load METEOR's paraphrase tables).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    tok = resolve_tokenizer(tokenizer)
    ids = list(preds)
    missing = [i for i in ids if i not in refs or not refs[i]]
    if missing:
        raise ValueError(f"no reference captions for image ids {missing[:5]}")
    if not ids:
        return {}, {"tokenizer": TOKENIZER_NAMES[tok], "skipped_metrics": {}}
    # One tokenizer call for references and predictions (one JVM start with ptb); tokenisation is per caption.
    both = tokenize({**{("ref", i): list(refs[i]) for i in ids}, **{("pred", i): [preds[i]] for i in ids}}, tok)
    gts, res = {i: both[("ref", i)] for i in ids}, {i: both[("pred", i)] for i in ids}
    metrics: dict[str, float] = {}
    skipped: dict[str, str] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
        bleu, _ = Bleu(4).compute_score(gts, res)
    metrics.update({f"BLEU_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if meteor and java_available():
        try:
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = meteor_scorer if meteor_scorer is not None else Meteor()
            metrics["METEOR"] = float(scorer.compute_score(gts, res)[0])
            del scorer
        except Exception as e:  # noqa: BLE001 - a JVM failure must not lose the other metrics
            skipped["METEOR"] = f"METEOR failed: {type(e).__name__}: {e}"
    else:
        skipped["METEOR"] = "needs Java (java not found on PATH)" if meteor else "disabled (--no-meteor)"
    metrics["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    metrics["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    why = spice_missing() if spice else "disabled (--no-spice)"
    if why is None:
        try:
            from pycocoevalcap.spice.spice import Spice

            metrics["SPICE"] = float(Spice().compute_score(gts, res)[0])
        except Exception as e:  # noqa: BLE001
            skipped["SPICE"] = f"SPICE failed: {type(e).__name__}: {e}"
    else:
        skipped["SPICE"] = why
    return metrics, {"tokenizer": TOKENIZER_NAMES[tok], "skipped_metrics": skipped}
