"""tangentft: predictable, cheap fine-tuning of pretrained language models.

Packages sit on floors — each imports only from floors below it; cli/ only parses and prints and the library
never imports it. The floors are stated once, in the README's "Layers" section, which tests/test_layering.py
holds to its import check.

Papers are cited by short name — the linearization paper, the early-stopping paper, the LoRA-NTK paper,
the S2FT paper, Raskutti et al. 2014 — with their own equation/theorem numbers; full titles, authors and
arXiv ids are in REFERENCES.md at the repository root.

Importing the package registers the S2FT tuner with PEFT, so ``import tangentft`` is all a script needs
before ``peft.PeftModel.from_pretrained`` on an S2FT adapter folder.
"""

__version__ = "0.1.0"

from .methods import s2ft as _s2ft  # noqa: E402, F401  (registers S2FT with PEFT)
