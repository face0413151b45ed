"""Models: which checkpoints there are and how a task reads them.

:mod:`~tangentft.models.registry` (names → checkpoints, loading), :mod:`~tangentft.models.task_model` (a
checkpoint as f(x) ∈ R^K for a task), :mod:`~tangentft.models.structure` (roles and layers of each
architecture), :mod:`~tangentft.models.spec` (the selection spec as a parsed value) and
:mod:`~tangentft.models.selection` (a spec resolved to parameter blocks), :mod:`~tangentft.models.candidates`
(an analysis's base and candidate groups, selected together), plus fingerprints and tiny seeded test models.
"""
