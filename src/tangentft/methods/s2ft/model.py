"""S2FTModel: the PEFT tuner — select, co-permute, inject S2FT layers, and save against the original base.

Registered with PEFT under the name ``s2ft`` when ``tangentft.methods.s2ft`` is imported (see
:mod:`.registration`), so the usual calls work::

    from tangentft.methods.s2ft import S2FTConfig
    model = get_peft_model(hf_model, S2FTConfig(ratios={"o": 0.1, "down": 0.05}, strategy="W"))
    model.save_pretrained("out/")                       # adapter_config.json + adapter_model.safetensors
    model = PeftModel.from_pretrained(fresh_base, "out/")

Injection (``_pre_injection_hook``) fingerprints the base weights the adapter touches, refuses a base that
differs from ``config.base_fingerprint`` if one is set, ranks units (:mod:`.selection`) unless
``config.selection`` is already given, and co-permutes the base weights (:mod:`.permute`) so each trained
slice is contiguous. The saved adapter stores, per module, ``s2ft_index`` (original row/column indices),
``s2ft_axis`` and ``s2ft_delta`` (values shaped like ``W.index_select(axis, index)``): ΔW against the
ORIGINAL base weights, appliable with ``W.index_add_(axis, index, delta)`` to the checkpoint as downloaded.
:meth:`S2FTModel.unload` and :meth:`S2FTModel.merge_and_unload` undo the permutation.
"""

from __future__ import annotations

import contextlib

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ...errors import TangentError
from ...models.fingerprint import modules_fingerprint
from ...models.structure import StructureMap, structure_map
from . import permute
from .config import S2FTConfig
from .layer import S2FTLayer, SliceSpec
from .selection import COLUMN_TYPES, num_units, pick_units, structure_of, unit_width


def target_paths(smap: StructureMap, roles) -> list[str]:
    """Module paths carrying a delta for ``roles`` (GPT-2's q/k/v share one c_attn path)."""
    return list(dict.fromkeys(smap.ref(layer, r).path for layer in range(smap.num_layers) for r in roles))


def check_selection(smap: StructureMap, selection: dict) -> None:
    """Refuse a stored selection whose shape does not fit this model (layers, unit ids, counts)."""
    for s in ("attention", "ffn"):
        if s not in selection:
            continue
        per_layer = selection[s]
        if len(per_layer) != smap.num_layers:
            raise TangentError(f"S2FT selection has {len(per_layer)} layers for {s}; the model has {smap.num_layers}")
        n = num_units(smap, s)
        for ranked in per_layer:
            if len(set(ranked)) != len(ranked) or any(not 0 <= u < n for u in ranked):
                raise TangentError(f"S2FT selection for {s} names units outside 0..{n - 1} or repeats one")
    for role, counts in selection.get("counts", {}).items():
        s = structure_of(role)
        if s not in selection or any(c > len(r) for c, r in zip(counts, selection[s], strict=True)):
            raise TangentError(f"S2FT selection counts for '{role}' exceed the ranked units stored for {s}")


def slice_plan(smap: StructureMap, selection: dict, perms: dict[str, permute.ModulePermutation]) -> dict[str, SliceSpec]:
    """Module path -> where its delta lives after co-permutation (segments) and which original indices it covers."""
    segs: dict[str, list[tuple[int, int]]] = {}
    info: dict[str, tuple[str, bool]] = {}
    for role, counts in selection["counts"].items():
        for layer, n_units in enumerate(counts):
            ref = smap.ref(layer, role)
            mode = "col" if role in COLUMN_TYPES else "row"
            start = ref.out_range[0] if (ref.out_range is not None and mode == "row") else 0
            segs.setdefault(ref.path, []).append((start, n_units * unit_width(smap, role)))
            info[ref.path] = (mode, ref.transposed)
    plan = {}
    for path, seg in segs.items():
        mode, transposed = info[path]
        seg = tuple(sorted(seg))
        positions = torch.cat([torch.arange(s, s + n) for s, n in seg])
        plan[path] = SliceSpec(mode, seg, transposed, perms[path].index[positions].clone())
    return plan


def in_layout(plan: dict[str, SliceSpec], layout: dict[str, SliceSpec], perms: dict[str, permute.ModulePermutation]) -> dict[str, SliceSpec]:
    """Re-express ``plan`` (specs of one selection, by original index) on a base co-permuted for another
    selection: a module whose positions coincide with the layout's contiguous slice shares it, any other gets
    its current positions ``perms[path].inverse[original_index]`` (the scattered, sparse-adapter path)."""
    out = {}
    for path, spec in plan.items():
        pos = perms[path].inverse[spec.original_index] if path in perms else spec.original_index.clone()
        same = layout.get(path)
        if same is not None and same.mode == spec.mode and torch.equal(same.positions(), pos):
            out[path] = same
        else:
            out[path] = SliceSpec(spec.mode, (), spec.transposed, spec.original_index, scattered=pos)
    return out


class S2FTModel(BaseTuner):
    """PEFT tuner for S2FT.

    The base is co-permuted once, for the first adapter's selection (its delta is a contiguous slice, the fast
    partial-backprop path). Further adapters may have other selections: each module where an extra adapter's
    rows/columns are not that slice applies its delta at scattered positions in the permuted base, which is
    the same update as in original coordinates. Mixed batches: ``model(..., adapter_names=[...])``.
    """

    prefix: str = "s2ft_"
    tuner_layer_cls = S2FTLayer
    target_module_mapping: dict = {}

    # -- injection ---------------------------------------------------------------------------------------
    def _pre_injection_hook(self, model: nn.Module, config: S2FTConfig, adapter_name: str) -> None:
        plans = self.__dict__.setdefault("_s2ft_plans", {})
        if adapter_name in plans:
            return
        smap = structure_map(model)
        config.validate()
        roles = list(config.ratios)
        paths = target_paths(smap, [r for r in roles if r in smap.roles])
        perms = self.s2ft_permutations
        if perms:  # fingerprints and selections speak of the original layout: undo ours while reading it
            permute.apply(model, perms, inverse=True)
        try:
            fingerprint = modules_fingerprint(model, paths)
            if config.base_fingerprint is not None and config.base_fingerprint != fingerprint:
                raise TangentError(
                    f"S2FT adapter was made for a different base model (fingerprint {config.base_fingerprint}, "
                    f"this model {fingerprint})"
                )
            selection = config.selection
            if selection is None:
                selection = pick_units(model, smap, config)
            check_selection(smap, selection)
            own = permute.permutations(model, smap, selection)
        finally:
            if perms:
                permute.apply(model, perms)
        plan = slice_plan(smap, selection, own)
        if not perms:
            permute.apply(model, own)
            self.__dict__["_s2ft_perms"] = own
            self.__dict__["_s2ft_layout"] = plan
        else:
            plan = in_layout(plan, self.__dict__["_s2ft_layout"], perms)
        config.selection, config.base_fingerprint, config.target_modules = selection, fingerprint, paths
        config.fingerprint_modules = list(paths)
        plans[adapter_name] = plan
        self.__dict__["_s2ft_structure"] = smap

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        """PEFT's ``add_adapter``/``load_adapter`` inject without the pre-injection hook: plan the adapter first."""
        self._pre_injection_hook(model, self.peft_config[adapter_name], adapter_name)
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
        except Exception:
            self.__dict__["_s2ft_plans"].pop(adapter_name, None)
            raise

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop an adapter (its deltas and its plan); the base keeps the layout it was co-permuted for."""
        was_active = adapter_name in self.active_adapters
        super().delete_adapter(adapter_name)
        self.__dict__.get("_s2ft_plans", {}).pop(adapter_name, None)
        # adapters may target different modules, so PEFT's per-layer choice of a successor can disagree
        # between layers: make one choice for the whole model
        active = [a for a in self.active_adapters if a in self.peft_config] if not was_active else []
        if not active and self.peft_config:
            active = [next(iter(self.peft_config))]
        self._activate(active)

    def _activate(self, names: list[str]) -> None:
        for module in self.model.modules():
            if isinstance(module, S2FTLayer):
                module.set_adapter(names)
        self.active_adapter = names[0] if len(names) == 1 else names

    def _prepare_adapter_config(self, peft_config: S2FTConfig, model_config: dict) -> S2FTConfig:
        return peft_config

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kw) -> None:
        spec = self.__dict__["_s2ft_plans"][adapter_name][current_key]
        if isinstance(target, S2FTLayer):
            target.update_layer(adapter_name, spec)
            return
        layer = S2FTLayer(target, adapter_name, spec)
        # a module only this (extra) adapter targets must still follow the model's active adapter
        layer.set_adapter(self.active_adapters)
        self._replace_module(parent, target_name, layer, target)

    # -- mixed-adapter batches, as PEFT's LoRA ------------------------------------------------------------
    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        """Within the block, forwards route row b to adapter ``adapter_names[b]`` (``__base__``: none)."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is None:
            yield
            return
        if self.training:
            raise ValueError("Cannot pass `adapter_names` when the model is in training mode.")
        known = set(self.peft_config)
        unknown = sorted({n for n in adapter_names if n != "__base__"} - known)
        if unknown:
            raise ValueError(f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}")
        beams = kwargs.get("num_beams")
        if isinstance(beams, int) and beams > 1:
            adapter_names = [n for n in adapter_names for _ in range(beams)]
        names = list(adapter_names)

        def inject(_module, args, kw):
            kw["adapter_names"] = names
            return args, kw

        handles = [m.register_forward_pre_hook(inject, with_kwargs=True) for m in self.model.modules() if isinstance(m, S2FTLayer)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # -- the permutation and the structure, for extraction and inspection --------------------------------
    @property
    def s2ft_permutations(self) -> dict[str, permute.ModulePermutation]:
        """Module path -> the co-permutation applied to the base weights."""
        return self.__dict__.get("_s2ft_perms", {})

    @property
    def s2ft_structure(self) -> StructureMap:
        """The structure map of the adapted model."""
        return self.__dict__["_s2ft_structure"]

    # -- unload ------------------------------------------------------------------------------------------
    def _restore_order(self) -> None:
        permute.apply(self.model, self.s2ft_permutations, inverse=True)
        self.__dict__["_s2ft_perms"] = {}
        self.__dict__["_s2ft_plans"] = {}

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names=None) -> nn.Module:
        """Merge the delta into the base weights, drop the S2FT layers and undo the co-permutation."""
        model = self._unload_and_optionally_merge(True, progressbar, safe_merge, adapter_names)
        self._restore_order()
        return model

    def unload(self) -> nn.Module:
        """Drop the S2FT layers (unmerging first if merged) and undo the co-permutation: the original base."""
        for module in self.model.modules():
            if isinstance(module, S2FTLayer) and module.merged:
                module.unmerge()
        model = self._unload_and_optionally_merge(merge=False)
        self._restore_order()
        return model

    # -- state dict: expressed against the original base ------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        out = {}
        for name, module in model.named_modules():
            if not isinstance(module, S2FTLayer) or adapter_name not in module.s2ft_delta:
                continue
            spec = module.s2ft_spec[adapter_name]
            out[f"{name}.s2ft_delta.{adapter_name}"] = spec.to_native(module.s2ft_delta[adapter_name].detach())
            out[f"{name}.s2ft_index.{adapter_name}"] = spec.original_index.clone()
            out[f"{name}.s2ft_axis.{adapter_name}"] = torch.tensor([spec.axis], dtype=torch.long)
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        state_dict = dict(state_dict)
        prefix = "base_model.model."
        for name, module in model.named_modules():
            if not isinstance(module, S2FTLayer) or adapter_name not in module.s2ft_spec:
                continue
            spec = module.s2ft_spec[adapter_name]
            key = next((k for k in (name, prefix + name) if f"{k}.s2ft_delta" in state_dict), None)
            if key is None:
                raise TangentError(f"S2FT adapter file has no delta for module {name.removeprefix(prefix)}")
            index = state_dict.pop(f"{key}.s2ft_index")
            axis = int(state_dict.pop(f"{key}.s2ft_axis")[0])
            if axis != spec.axis or not torch.equal(index.long().cpu(), spec.original_index):
                raise TangentError(f"S2FT adapter indices for {name.removeprefix(prefix)} do not match its config's selection")
            state_dict[f"{key}.s2ft_delta"] = spec.from_native(state_dict[f"{key}.s2ft_delta"])
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
