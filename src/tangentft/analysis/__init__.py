"""Analysis before training: what the eNTK at θ0 predicts about fine-tuning, and what to tune.

One concern per module — spectrum (κ, effective rank, decay β), bounds (Theorem 5 risk bounds), krr
(kernel-ridge predictions), perturbation (Theorems 6–7, Algorithm 2 layer selection), stopping (early-stopping
rule; kernel_rule applies it to the parameters a run trains), lora_rank (rank advisor), lipschitz (linear-regime
checks); analyze.analyze ties them to one eNTK pass and report/figures write the result.
Import from the submodules, e.g. ``from tangentft.analysis.spectrum import spectrum``.
Papers are cited by short name with their own equation/theorem numbers; see REFERENCES.md.
"""
