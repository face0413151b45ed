"""Fine-tuning methods: each decides which parameters train and how the update is parameterized.

Importing this package registers every method (:data:`tangentft.methods.base.METHODS`) and, explicitly, the
selection term kinds the methods define (``lora``: :func:`tangentft.methods.lora.register_terms`).
Papers are cited by short name with their own equation/theorem numbers; see REFERENCES.md.
"""

from __future__ import annotations

from . import full, head, linearized, lora, nuclear_prox, s2ft  # noqa: F401

lora.register_terms()
