"""Shared pieces of the drop-in integrations: finding masks, per-layer patch state, reports."""

from __future__ import annotations

import json
import logging
import os
import re
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..models.hub import HubLookupError, needs_hub_lookup, resolve_local_or_hub
from ..nn import SparsifyReport, sparsify_
from ..nn.semi_structured import SemiStructuredLinear
from ..ops import MixerConstants, SSMParams, StateLayout
from ..ops.layout import PRUNED_STATES_CHOICES as PRUNED_STATES
from ..sparsity import load_sparsities

logger = logging.getLogger("sparsessm_kernels")

MASKS_FILE = "sparsity.safetensors"
PROJECTIONS = ("in_proj", "x_proj", "out_proj")
"""Mixer linears that :func:`sparsify_projections` may swap (``dt_proj`` is used by weight)."""

_LAYER_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.mixer\.A_log$")
_MISSING = object()

SparsityArg = str | os.PathLike | Mapping[str, Any] | None


# ---------------------------------------------------------------------------------- masks
def layer_index(key: object) -> int | None:
    """Layer index named by a mask key (``...layers.{i}.mixer.A_log``), else None."""
    m = _LAYER_KEY.match(key) if isinstance(key, str) else None
    return None if m is None else int(m.group(1))


@dataclass
class LayerSpec:
    """What a patched mixer needs: its layout, the pruned-state semantics and the cache form."""

    layout: StateLayout | None
    pruned_states: str = "zero_transition"
    compact: bool = False

    def describe(self, d_state: int) -> str:
        if self.layout is None:
            return "dense"
        lay = self.layout
        pattern = getattr(lay, "pattern", None)
        if pattern is None or (pattern == "unstructured" and lay.uniform):
            if lay.kind == "column":
                pattern = "column"
            elif lay.uniform:
                pattern = f"per-channel ({lay.n_kept} of {d_state} kept in every channel)"
            else:
                pattern = "unstructured"
        cache = f"compact ssm cache ({lay.n_kept}/{d_state} states)" if self.compact else "dense ssm cache"
        return f"{pattern} mask, sparsity {lay.sparsity:.2f}, {self.pruned_states}, {cache}"


def _parse_pruned_states_meta(raw: str | None, where: str) -> str | dict[str, str]:
    if raw is None:
        return "zero_transition"
    if raw in PRUNED_STATES:
        return raw
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: metadata 'pruned_states' is neither a mode nor JSON: {raw!r}") from exc
    if isinstance(value, str) and value in PRUNED_STATES:
        return value
    if isinstance(value, dict) and all(v in PRUNED_STATES for v in value.values()):
        return value
    raise ValueError(
        f"{where}: metadata 'pruned_states' must be 'zero_transition', 'remove' or a JSON object "
        f"{{param name: mode}}, got {raw!r}"
    )


def _load_file(path: Path) -> tuple[dict[str, StateLayout], str | dict[str, str]]:
    sparsities, meta = load_sparsities(path)
    return dict(sparsities), _parse_pruned_states_meta(meta.get("pruned_states"), str(path))


MaskLoader = Callable[[Path], tuple[dict[str, Any], str | dict[str, str]]]
"""Reads a masks file: ``path -> (masks by parameter name, pruned_states from its metadata)``."""


def _masks_of_dir(
    directory: Path, shown: str, what: str, load: MaskLoader = _load_file
) -> tuple[dict[str, Any], str | dict[str, str], str]:
    """The masks file of the directory ``what`` was loaded from, or none (dense, logged at INFO)."""
    candidate = directory / MASKS_FILE
    if candidate.is_file():
        masks, modes = load(candidate)
        return masks, modes, str(candidate)
    logger.info(
        "sparsessm_kernels: %s was loaded from %s, which has no %s; running every layer dense",
        what,
        shown,
        MASKS_FILE,
    )
    return {}, "zero_transition", f"none ({shown} has no {MASKS_FILE}; dense)"


def read_sparsity(
    sparsity: SparsityArg,
    default_dir: str | os.PathLike | None,
    what: str,
    *,
    revision: str | None = None,
    load: MaskLoader = _load_file,
    dict_mode: str = "zero_transition",
) -> tuple[dict[str, Any], str | dict[str, str], str]:
    """``(masks, pruned_states from the source, description of the source)``.

    ``sparsity``: a pruned model directory (must contain ``sparsity.safetensors``), a masks file,
    a Hugging Face Hub id of a pruned model (``ORG/NAME`` that is no local path; its
    ``sparsity.safetensors`` is fetched), a dict ``{parameter name: mask}`` or ``None``: then
    ``default_dir``/``sparsity.safetensors`` when it exists -- ``default_dir`` may be a Hub id too
    (at ``revision``: pass the loaded model's commit), whose masks file is fetched when the
    repository has one; otherwise no masks.

    ``load`` reads a masks file (default: Mamba-1 state masks keyed by ``A_log``); ``dict_mode`` is
    the ``pruned_states`` reported for a dict of masks.
    """
    if sparsity is None:
        if default_dir and needs_hub_lookup(default_dir):
            try:
                snapshot = resolve_local_or_hub(default_dir, revision=revision, allow_patterns=[MASKS_FILE])
            except HubLookupError as exc:
                warnings.warn(
                    f"sparsessm_kernels: {what} was loaded from the Hugging Face Hub id {default_dir}, whose "
                    f"{MASKS_FILE} could not be looked up ({exc}); running every layer dense. Pass sparsity= "
                    "explicitly.",
                    UserWarning,
                    stacklevel=3,
                )
                return {}, "zero_transition", f"none (hub lookup of {default_dir} failed; dense)"
            return _masks_of_dir(snapshot, str(default_dir), what, load)
        if default_dir and Path(default_dir).is_dir():
            return _masks_of_dir(Path(default_dir), str(default_dir), what, load)
        where = f"{default_dir!r} is not a local directory" if default_dir else "no source directory is known"
        logger.info(
            "sparsessm_kernels: no sparsity given and %s (%s); running every layer dense. Pass a pruned "
            "model directory, a %s path or a dict of masks to apply().",
            where,
            what,
            MASKS_FILE,
        )
        return {}, "zero_transition", f"none ({where}; dense)"
    if isinstance(sparsity, (str, os.PathLike)):
        # a missing "*.safetensors" path is a missing masks file, not a Hub id
        is_file_name = str(sparsity).endswith(".safetensors")
        path = Path(sparsity) if is_file_name else resolve_local_or_hub(sparsity, allow_patterns=[MASKS_FILE])
        if path.is_dir():
            file = path / MASKS_FILE
            if not file.is_file():
                where = f"the Hub repository {sparsity}" if path != Path(sparsity) else str(path)
                raise FileNotFoundError(f"sparsity: {where} is a directory without {MASKS_FILE}")
            masks, modes = load(file)
            return masks, modes, str(file)
        if not path.exists():
            raise FileNotFoundError(
                f"sparsity: {path} does not exist (expected a pruned model directory or a {MASKS_FILE} file)"
            )
        masks, modes = load(path)
        return masks, modes, str(path)
    if isinstance(sparsity, Mapping):
        return dict(sparsity), dict_mode, f"dict of {len(sparsity)} mask(s)"
    raise TypeError(
        "sparsity: expected None, a pruned model directory, a sparsity.safetensors path or a dict "
        f"{{parameter name: mask}}, got {type(sparsity).__name__}"
    )


def check_pruned_states_arg(pruned_states: object) -> None:
    """Validate the ``pruned_states`` argument of ``apply``: None, a mode or ``{param name: mode}``."""
    if pruned_states is None:
        return
    if isinstance(pruned_states, str):
        if pruned_states not in PRUNED_STATES:
            raise ValueError(f"pruned_states: expected one of {PRUNED_STATES}, got {pruned_states!r}")
    elif isinstance(pruned_states, Mapping):
        for key, mode in pruned_states.items():
            if mode not in PRUNED_STATES:
                raise ValueError(f"pruned_states[{key!r}]: expected one of {PRUNED_STATES}, got {mode!r}")
    else:
        raise TypeError("pruned_states: expected None, a mode string or a dict {param name: mode}")


def layer_specs(
    masks: Mapping[str, Any],
    source_modes: str | dict[str, str],
    pruned_states: str | Mapping[str, str] | None,
    mixers: list[nn.Module],
    shapes: list[tuple[int, int]],
    *,
    compact_cache: bool,
) -> dict[int, LayerSpec]:
    """Validate ``masks`` against the layers and build ``{layer index: LayerSpec}``.

    Keys name ``A_log`` parameters (``backbone.layers.{i}.mixer.A_log``; any prefix before
    ``layers.{i}`` is accepted). ``shapes[i]`` is ``(d_inner, d_state)`` of layer ``i``.
    """
    check_pruned_states_arg(pruned_states)
    modes = pruned_states if pruned_states is not None else source_modes
    specs: dict[int, LayerSpec] = {}
    bad: list[str] = []
    for key, value in masks.items():
        i = layer_index(key)
        if i is None or i >= len(mixers):
            bad.append(repr(key))
            continue
        d_inner, d_state = shapes[i]
        if value is None:
            continue
        try:
            layout = value if isinstance(value, StateLayout) else StateLayout(value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"mask {key!r}: {exc}") from exc
        if layout.d_state != d_state or (layout.kind == "channel" and layout.d_inner != d_inner):
            raise ValueError(
                f"mask {key!r} has shape {tuple(layout.mask.shape)}; layer {i} needs ({d_state},) or "
                f"({d_inner}, {d_state})"
            )
        if i in specs:
            raise ValueError(f"mask {key!r}: layer {i} has more than one mask")
        if isinstance(modes, str):
            mode = modes
        else:
            mode = modes.get(key, modes.get(f"backbone.layers.{i}.mixer.A_log", "zero_transition"))
        if mode not in PRUNED_STATES:
            raise ValueError(f"pruned_states for {key!r}: expected one of {PRUNED_STATES}, got {mode!r}")
        compact = compact_cache and layout.uniform and 0 < layout.n_kept < d_state
        specs[i] = LayerSpec(layout, mode, compact)
    if bad:
        raise ValueError(
            f"sparsity: keys {', '.join(bad[:5])} do not name the A_log of a layer (expected "
            f"'backbone.layers.{{i}}.mixer.A_log' with 0 <= i < {len(mixers)})"
        )
    return specs


class Mamba1MixerPatch:
    """Per-mixer state of a Mamba-1 patch (kept in the instance ``__dict__``, not in ``state_dict``):
    the layer's :class:`LayerSpec`, the ops backend and the float32 constants of the shared mixer
    forward (:func:`sparsessm_kernels.ops.mixer_forward`)."""

    def __init__(self, spec: LayerSpec, backend: str) -> None:
        self.spec, self.backend = spec, backend
        self.constants = MixerConstants()

    def ssm(self, mixer: nn.Module) -> SSMParams:
        """The scan's per-layer inputs of ``mixer`` (float32 ``A``, ``D``, ``dt`` bias built once)."""
        A, D, dt_bias = self.constants.get(mixer.A_log, mixer.D, mixer.dt_proj.bias)
        layout = None if self.spec.layout is None else self.spec.layout.to(mixer.A_log.device)
        return SSMParams(A, D, dt_bias, layout, self.spec.pruned_states, self.backend)


# ---------------------------------------------------------------------------------- patching
def bind(module: nn.Module, attr: str, fn: Callable) -> Any:
    """Set ``module.<attr>`` to ``fn`` bound to ``module``; return what the instance held before.

    For ``forward`` on a module wrapped by accelerate hooks (``_hf_hook`` + ``_old_forward``), the
    wrapped ``_old_forward`` is replaced instead, so the hooks keep running.
    """
    target = attr
    if attr == "forward" and hasattr(module, "_hf_hook") and "_old_forward" in module.__dict__:
        target = "_old_forward"
    saved = module.__dict__.get(target, _MISSING)
    object.__setattr__(module, target, types.MethodType(fn, module))
    return target, saved


def unbind(module: nn.Module, target: str, saved: Any) -> None:
    """Undo :func:`bind`."""
    if saved is _MISSING:
        module.__dict__.pop(target, None)
    else:
        object.__setattr__(module, target, saved)


@dataclass
class ApplyReport:
    """What an integration's ``apply`` did.

    Attributes:
        framework: ``"transformers"`` or ``"mamba_ssm"``.
        masks_source: where the masks came from.
        layers: ``{layer index: description}`` (mask pattern, sparsity, cache form, or ``dense``).
        backend: the ``backend`` argument passed to the ops.
        projections: what the 2:4 projection swap did (``None`` when not requested).
    """

    framework: str
    masks_source: str
    layers: dict[int, str] = field(default_factory=dict)
    backend: str = "auto"
    projections: SparsifyReport | None = None

    @property
    def sparse_layers(self) -> list[int]:
        return [i for i, d in self.layers.items() if d != "dense"]

    def __str__(self) -> str:
        lines = [
            f"sparsessm_kernels.integrations.{self.framework}: {len(self.layers)} mixer(s) patched "
            f"(backend={self.backend!r}), masks from {self.masks_source}; "
            f"{len(self.sparse_layers)} sparse layer(s)"
        ]
        lines.extend(f"  layer {i}: {d}" for i, d in self.layers.items())
        if self.projections is not None:
            lines.append("  " + str(self.projections).replace("\n", "\n  "))
        return "\n".join(lines)


def sparsify_projections(model: nn.Module, mixer_names: list[str], path: str = "auto") -> SparsifyReport:
    """Swap the 2:4 ``in_proj`` / ``x_proj`` / ``out_proj`` of the given mixers (others stay)."""
    wanted = {f"{m}.{p}" for m in mixer_names for p in PROJECTIONS}
    report = sparsify_(model, filter_fn=lambda name, _m: name in wanted, path=path)
    report.skipped = {k: v for k, v in report.skipped.items() if k in wanted}
    return report


def densify_names(model: nn.Module, names: list[str]) -> list[str]:
    """Turn the listed :class:`SemiStructuredLinear` modules back into ``nn.Linear``."""
    restored = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, SemiStructuredLinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.to_linear())
            restored.append(name)
    return restored


__all__ = [
    "MASKS_FILE",
    "PROJECTIONS",
    "ApplyReport",
    "LayerSpec",
    "Mamba1MixerPatch",
    "bind",
    "check_pruned_states_arg",
    "densify_names",
    "layer_index",
    "layer_specs",
    "read_sparsity",
    "sparsify_projections",
    "unbind",
]


MODEL_ATTR = "_sparsessm_integration"
"""Attribute in a patched model's ``__dict__`` holding its :class:`ModelPatch`."""


class ModelPatch:
    """What :func:`apply` did to a model, kept on it so :func:`revert` can undo it."""

    def __init__(self, report: ApplyReport, swapped: list[str]) -> None:
        self.report, self.swapped = report, swapped


def is_applied(model: nn.Module) -> bool:
    """Whether an integration's ``apply`` patched ``model`` (and ``revert`` has not undone it)."""
    return MODEL_ATTR in model.__dict__
