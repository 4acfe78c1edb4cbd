"""Pruning settings, their validation, and which modules of a model they select.

:class:`PruneConfig` holds every knob of ``sparsessm prune``. :meth:`PruneConfig.resolve`
validates them and fills the defaults that depend on others (the sparsity implied by an N:M
pattern, ``alpha``); :meth:`PruneConfig.check_model` validates them against a model's shapes
(N:M divisibility, a column sparsity that would remove every state). Both run before any work.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..models import Mamba2LMConfig, MambaLMConfig
from ..sparsity import kept_count, parse_pattern

__all__ = [
    "AGGREGATIONS",
    "FFN_KINDS",
    "MAMBA2_PROJECTION_KINDS",
    "MAMBA2_STAGE_ORDER",
    "METHODS",
    "PROJECTION_KINDS",
    "SCORES",
    "STAGE_ORDER",
    "STRUCTURED_METHODS",
    "STRUCTURED_TARGETS",
    "TARGETS",
    "TIME_WEIGHTS",
    "PruneConfig",
    "PruneConfigError",
    "module_name",
    "select_modules",
]

METHODS = ("sparsessm", "magnitude", "sparsegpt", "wanda", "snip", "flap", "random")
TARGETS = ("ssm", "states", "heads", "headdim", "ffn", "all")
STRUCTURED_TARGETS = ("heads", "headdim")
"""Mamba-2 targets that remove heads / head channels physically (:mod:`.heads`)."""
STRUCTURED_METHODS = ("flap", "magnitude", "random")
SCORES = ("sparsessm", "a_log")
AGGREGATIONS = ("weighted", "vote")
TIME_WEIGHTS = ("power", "uniform", "window", "discount")

PROJECTION_KINDS = ("in_proj", "x_proj", "dt_proj", "out_proj")
"""The linear projections of a Mamba mixer (``--targets ffn``)."""
FFN_KINDS = (*PROJECTION_KINDS, "conv1d")
STAGE_ORDER = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "out_proj")
"""Data-flow order in which the modules of one layer are pruned (each sees the pruned ones before it)."""
MAMBA2_PROJECTION_KINDS = ("in_proj", "out_proj")
"""The linear projections of a Mamba-2 mixer (``--targets ffn``)."""
MAMBA2_STAGE_ORDER = ("in_proj", "conv1d", "A_log", "ssm_state", "heads", "headdim", "out_proj")
"""Mamba-2 data-flow order: ``A_log`` = per-head transitions, ``ssm_state`` = the ``B`` / ``C``
state columns of every group (``--targets states``), ``heads`` / ``headdim`` = whole heads / head
channels removed (``--targets heads`` / ``headdim``)."""
SSM_METHODS_MAMBA2 = ("sparsessm", "magnitude", "random")
"""Methods defined for Mamba-2's ``A_log`` (per head) and ``ssm_state`` (per group) targets."""

DEFAULT_SPARSITY = 0.5
DEFAULT_ALPHA = 0.04


class PruneConfigError(ValueError):
    """Invalid pruning settings (reported before any work starts)."""


def module_name(layer: int, kind: str) -> str:
    """Full name of a prunable module: ``backbone.layers.{layer}.mixer.{kind}``."""
    return f"backbone.layers.{layer}.mixer.{kind}"


@dataclass(frozen=True)
class PruneConfig:
    """Settings of one pruning run (defaults = the paper's setup where it has one).

    Attributes:
        method: ``sparsessm`` (SparseSSM scores for ``A_log``, the SSD output saliency for Mamba-2
            states, SparseGPT with sensitivity-aware allocation for projections), ``magnitude``,
            ``sparsegpt``, ``wanda``, ``snip`` (projections: ``|w * dL/dw|``) or ``random``.
        targets: ``ssm`` (``A_log``; per head on Mamba-2), ``states`` (Mamba-2 only: the ``d_state``
            columns of ``B`` / ``C`` of every group), ``ffn`` (``in_proj``, ``x_proj``, ``dt_proj``,
            ``out_proj`` -- ``in_proj``, ``out_proj`` on Mamba-2 -- plus ``conv1d`` when ``conv1d``),
            ``all`` (``ssm`` and ``ffn``), ``heads`` / ``headdim`` (Mamba-2 only: whole heads / the
            same number of channels of every head removed physically; methods ``flap``,
            ``magnitude``, ``random``).
        pattern: ``unstructured``, ``N:M`` (e.g. ``2:4``; along the state axis for ``A_log``, along
            the heads for Mamba-2 ``A_log``, along the states of a group for ``states``, along the
            inputs for projections) or ``column`` (``A_log`` only: whole states removed; for
            ``states``: each group keeps its own ``round((1 - s) n)`` states).
        sparsity: fraction pruned in ``[0, 1)``; ``None`` = 0.5, or ``1 - N/M`` for N:M patterns.
        alpha: half-width of the sensitivity-aware allocation for ``in_proj`` / ``out_proj``;
            ``None`` = 0.04 for ``method="sparsessm"`` with unstructured projections, else 0.
        seed: calibration windows and the ``random`` method.
        score: ``sparsessm`` (``exp(delta A)^2 h^2``) or ``a_log`` (``A_log^2 h^2``).
        aggregation: ``weighted`` (``sum_t w_t score_t``) or ``vote``.
        time_weights: ``power`` (``(t+1)^-power``), ``uniform``, ``window`` (first ``window``
            fraction of steps), ``discount`` (``gamma^t``).
        include, exclude: regular expressions on module names (``re.search``); with ``include``
            only matching modules are pruned, ``exclude`` drops matching ones.
        conv1d: also prune the depthwise ``conv1d`` (per channel) under ``ffn`` / ``all``.
        blocksize, percdamp: SparseGPT block size and dampening (fraction of the mean Hessian
            diagonal).
        batch_size: calibration samples per forward.
        backend: backend of the calibration statistics (``state_saliency``).
    """

    method: str = "sparsessm"
    targets: str = "ssm"
    pattern: str = "unstructured"
    sparsity: float | None = None
    alpha: float | None = None
    seed: int = 0
    score: str = "sparsessm"
    aggregation: str = "weighted"
    time_weights: str = "power"
    power: float = 1.0
    gamma: float = 0.9
    window: float = 0.25
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    conv1d: bool = False
    blocksize: int = 128
    percdamp: float = 0.01
    batch_size: int = 8
    backend: str = "auto"

    # ------------------------------------------------------------------ derived
    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of an N:M pattern, else ``None``."""
        return parse_pattern(self.pattern)[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings."""
        out = asdict(self)
        out["include"], out["exclude"] = list(self.include), list(self.exclude)
        return out

    # ------------------------------------------------------------------ validation
    def resolve(self) -> PruneConfig:
        """Validate the settings and fill the dependent defaults; returns a new config.

        Raises:
            PruneConfigError: naming the setting, what was expected and what came.
        """

        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise PruneConfigError(f"{name}: expected one of {options}, got {value!r}")

        for name, options in (
            ("method", METHODS),
            ("targets", TARGETS),
            ("score", SCORES),
            ("aggregation", AGGREGATIONS),
            ("time_weights", TIME_WEIGHTS),
        ):
            choice(name, options)
        if self.backend not in ("auto", "torch", "triton", "cuda"):
            raise PruneConfigError(f"backend: expected auto, torch, triton or cuda, got {self.backend!r}")
        try:
            canonical, nm = parse_pattern(self.pattern)
        except (TypeError, ValueError) as exc:
            raise PruneConfigError(f"pattern: {exc}") from exc
        if canonical is None:
            raise PruneConfigError("pattern: expected 'unstructured', 'column' or 'N:M', got None")
        sparsity = self.sparsity
        if sparsity is not None:
            if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
                raise PruneConfigError(f"sparsity: expected a number in [0, 1), got {sparsity!r}")
            if not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
                raise PruneConfigError(f"sparsity: expected a fraction in [0, 1), got {sparsity!r}")
        if nm is not None:
            implied = 1.0 - nm[0] / nm[1]
            if sparsity is not None and abs(sparsity - implied) > 1e-9:
                raise PruneConfigError(
                    f"sparsity: pattern {canonical} prunes exactly 1 - {nm[0]}/{nm[1]} = {implied:g} of "
                    f"every group, got --sparsity {sparsity:g} (omit --sparsity or pass {implied:g})"
                )
            if nm[0] == nm[1]:
                raise PruneConfigError(f"pattern: {canonical} keeps every state (N must be < M)")
            sparsity = implied
        elif sparsity is None:
            sparsity = DEFAULT_SPARSITY
        if canonical == "column" and self.targets not in ("ssm", "states"):
            raise PruneConfigError(
                f"pattern: 'column' removes whole SSM states (A_log / states only); use --targets ssm "
                f"or states, or 'unstructured' / 'N:M' for --targets {self.targets}"
            )
        if self.targets == "states" and canonical == "unstructured":
            raise PruneConfigError(
                "pattern: --targets states prunes whole state columns of every group: expected 'column' "
                "or 'N:M', got 'unstructured'"
            )
        structured = self.targets in STRUCTURED_TARGETS
        if structured and self.method not in STRUCTURED_METHODS:
            raise PruneConfigError(
                f"method: --targets {self.targets} removes whole heads / head channels; expected one of "
                f"{STRUCTURED_METHODS}, got {self.method!r}"
            )
        if self.method == "flap" and not structured:
            raise PruneConfigError(
                f"method: flap scores heads / head channels; use --targets heads or headdim, got "
                f"--targets {self.targets}"
            )
        if structured and nm is not None:
            raise PruneConfigError(
                f"pattern: --targets {self.targets} removes whole heads / channels (uniform per group / "
                f"head); expected 'unstructured' or 'column', got {canonical}"
            )
        projections = self.targets in ("ffn", "all")  # alpha only applies to projections
        if self.method == "snip" and self.targets != "ffn":
            raise PruneConfigError(
                f"method: snip scores projection weights (|w * dL/dw|); use --targets ffn, got "
                f"--targets {self.targets}"
            )
        alpha = self.alpha
        if alpha is None:
            uses_alloc = self.method == "sparsessm" and projections and nm is None
            alpha = DEFAULT_ALPHA if uses_alloc else 0.0
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise PruneConfigError(f"alpha: expected a number >= 0, got {alpha!r}")
        if alpha < 0:
            raise PruneConfigError(f"alpha: expected >= 0, got {alpha!r}")
        if projections and alpha > 0 and nm is not None:
            raise PruneConfigError(
                f"alpha: pattern {canonical} fixes the sparsity of every group, so sensitivity-aware "
                f"allocation (--alpha {alpha:g}) cannot apply; pass --alpha 0"
            )
        if projections and alpha > 0 and (sparsity - alpha < 0 or sparsity + alpha >= 1):
            raise PruneConfigError(
                f"alpha: the allocation range [sparsity - alpha, sparsity + alpha] = "
                f"[{sparsity - alpha:g}, {sparsity + alpha:g}] must lie in [0, 1)"
            )
        for name, value, ok, what in (
            ("power", self.power, self.power > 0, "> 0"),
            ("gamma", self.gamma, 0 < self.gamma <= 1, "in (0, 1]"),
            ("window", self.window, 0 < self.window <= 1, "in (0, 1]"),
            ("percdamp", self.percdamp, self.percdamp > 0, "> 0"),
        ):
            if not ok:
                raise PruneConfigError(f"{name}: expected {what}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise PruneConfigError(f"seed: expected an integer >= 0, got {self.seed!r}")
        for name in ("blocksize", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PruneConfigError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("include", "exclude"):
            for pat in getattr(self, name):
                try:
                    re.compile(pat)
                except re.error as exc:
                    raise PruneConfigError(f"{name}: invalid regular expression {pat!r} ({exc})") from exc
        return replace(
            self,
            pattern=canonical,
            sparsity=float(sparsity),
            alpha=float(alpha),
            include=tuple(self.include),
            exclude=tuple(self.exclude),
        )

    def check_model(self, config: MambaLMConfig | Mamba2LMConfig) -> dict[int, list[str]]:
        """Validate a resolved config against a model; returns :func:`select_modules`' plan.

        Raises:
            PruneConfigError: no module selected; N:M groups that do not divide a module's input /
                state / head dimension; a column sparsity that would remove every state of a layer
                (of a group, on Mamba-2); a target or method the architecture does not have.
        """
        mamba2 = isinstance(config, Mamba2LMConfig)
        if self.targets == "states" and not mamba2:
            raise PruneConfigError(
                "targets: 'states' prunes the B / C state columns of Mamba-2 groups; this is a Mamba-1 "
                "model: use --targets ssm (A_log, with --pattern column to remove states)"
            )
        if self.targets in STRUCTURED_TARGETS and not mamba2:
            raise PruneConfigError(
                f"targets: {self.targets!r} removes Mamba-2 heads / head channels; this is a Mamba-1 model"
            )
        plan = select_modules(self, config.n_layer, mamba2=mamba2)
        if not any(plan.values()):
            raise PruneConfigError(
                f"no module selected: --targets {self.targets} with include={list(self.include)} "
                f"exclude={list(self.exclude)} matches nothing"
            )
        nm = self.nm
        if self.targets in STRUCTURED_TARGETS:
            assert isinstance(config, Mamba2LMConfig) and self.sparsity is not None
            missing = [layer for layer, kinds in plan.items() if not kinds]
            if missing:
                raise PruneConfigError(
                    f"include / exclude: --targets {self.targets} must remove the same count from every "
                    f"layer (one config.json), but layers {missing} are not selected"
                )
            per, what = (
                (config.nheads // config.ngroups, "heads of a group")
                if self.targets == "heads"
                else (config.headdim, "channels of a head")
            )
            if kept_count(per, self.sparsity) == 0:
                raise PruneConfigError(
                    f"sparsity: {self.sparsity:g} would remove all {per} {what} (keeps round((1 - s) * "
                    f"{per}) = 0); use a lower sparsity"
                )
        if mamba2:
            assert isinstance(config, Mamba2LMConfig)
            if self.targets in ("ssm", "states", "all") and self.method not in SSM_METHODS_MAMBA2:
                what = "ssm_state" if self.targets == "states" else "A_log"
                raise PruneConfigError(
                    f"method: {self.method!r} is not defined for Mamba-2 {what} (one A_log per head, "
                    f"state columns shared by the heads of a group); expected one of {SSM_METHODS_MAMBA2}"
                )
            if self.targets in ("ssm", "all") and self.pattern == "column":
                raise PruneConfigError(
                    "pattern: Mamba-2 has one A_log per head, so 'column' has no meaning for --targets "
                    f"{self.targets}; use 'unstructured' or 'N:M' over the heads, or --targets states "
                    "--pattern column to remove state columns"
                )
            sizes = {
                "in_proj": ("inputs", config.d_model),
                "out_proj": ("inputs", config.d_inner),
                "conv1d": ("taps", config.d_conv),
                "A_log": ("heads", config.nheads),
                "ssm_state": ("states per group", config.d_state),
            }
        else:
            sizes = {
                "in_proj": ("inputs", config.d_model),
                "x_proj": ("inputs", config.d_inner),
                "dt_proj": ("inputs", int(config.dt_rank)),
                "out_proj": ("inputs", config.d_inner),
                "conv1d": ("inputs", config.d_conv),
            }
        for layer, kinds in plan.items():
            n_state = config.d_state if mamba2 else config.layer_d_state(layer)
            for kind in kinds:
                name = module_name(layer, kind)
                if nm is not None:
                    axis, dim = ("states", n_state) if kind == "A_log" and not mamba2 else sizes[kind]
                    if dim % nm[1]:
                        raise PruneConfigError(
                            f"pattern {self.pattern}: {name} has {dim} {axis}, not a multiple of M={nm[1]}; "
                            "exclude it (--exclude) or use another pattern"
                        )
                if kind in ("A_log", "ssm_state") and self.pattern == "column":
                    assert self.sparsity is not None
                    if kept_count(n_state, self.sparsity) == 0:
                        where = f"every group of layer {layer}" if mamba2 else f"layer {layer}"
                        raise PruneConfigError(
                            f"sparsity: column sparsity {self.sparsity:g} would remove every one of the "
                            f"{n_state} states of {where} (keeps round((1 - s) * n) = 0); "
                            "use a lower sparsity"
                        )
        return plan


def select_modules(cfg: PruneConfig, n_layer: int, *, mamba2: bool = False) -> dict[int, list[str]]:
    """``{layer: [kinds in STAGE_ORDER]}`` (:data:`MAMBA2_STAGE_ORDER` with ``mamba2``) of the modules
    ``cfg`` prunes."""
    kinds: list[str] = []
    if cfg.targets in ("ssm", "all"):
        kinds.append("A_log")
    if cfg.targets == "states":
        kinds.append("ssm_state")
    if cfg.targets in STRUCTURED_TARGETS:
        kinds.append(cfg.targets)
    if cfg.targets in ("ffn", "all"):
        kinds.extend(MAMBA2_PROJECTION_KINDS if mamba2 else PROJECTION_KINDS)
        if cfg.conv1d:
            kinds.append("conv1d")
    inc = [re.compile(p) for p in cfg.include]
    exc = [re.compile(p) for p in cfg.exclude]
    plan: dict[int, list[str]] = {}
    for layer in range(n_layer):
        chosen = []
        for kind in MAMBA2_STAGE_ORDER if mamba2 else STAGE_ORDER:
            if kind not in kinds:
                continue
            name = module_name(layer, kind)
            if inc and not any(p.search(name) for p in inc):
                continue
            if any(p.search(name) for p in exc):
                continue
            chosen.append(kind)
        plan[layer] = chosen
    return plan
