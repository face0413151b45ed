"""Sparse adapters after training (S2FT paper §6.2): extract, merge/unmerge exactly, fuse, switch, and serve
several adapters in one batch; read a served adapter folder (LoRA or S2FT) and hold both kinds on one base.
An adapter is ΔW on selected rows/columns of the ORIGINAL base weights.
Papers are cited by short name with their own equation/theorem numbers; see REFERENCES.md.
"""

from .export import lora_factors, save_merged, to_lora
from .folder import AdapterFolder, read_folder
from .fuse import FusionReport, fuse
from .host import AdapterConflict, AdapterHost
from .merge import MergeRecord, check_base, merge, unmerge
from .multi import MultiAdapter
from .sparse import SparseAdapter, SparseDelta, extract, extract_diff, load_adapter, save_adapter
from .switch import switch

__all__ = [
    "AdapterConflict", "AdapterFolder", "AdapterHost", "FusionReport", "MergeRecord", "MultiAdapter", "SparseAdapter",
    "SparseDelta", "check_base", "extract", "extract_diff", "fuse", "load_adapter", "lora_factors", "merge", "read_folder",
    "save_adapter", "save_merged", "switch", "to_lora", "unmerge",
]
