"""Tests for sparsessm_kernels.sparsity: StateSparsity, mask builders, mask files."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import save_file

import sparsessm_kernels.sparsity.io as sio
from sparsessm_kernels._version import __version__
from sparsessm_kernels.ops.layout import MAX_D_STATE, StateLayout, as_layout
from sparsessm_kernels.sparsity import (
    MASKS_FORMAT,
    MaskFileError,
    StateSparsity,
    build_sparsity,
    column_mask,
    kept_count,
    load_masks,
    load_sparsities,
    nm_mask,
    parse_pattern,
    save_masks,
    unstructured_mask,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_mask(d: int, n: int, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    return torch.rand(d, n, generator=_gen(seed)) < p


def _nm_valid_mask(d: int, n: int, n_keep: int, m: int, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)
    groups = torch.rand(d, n // m, m, generator=g).argsort(dim=-1)[..., :n_keep]
    mask = torch.zeros(d, n // m, m, dtype=torch.bool)
    mask.scatter_(-1, groups, True)
    return mask.reshape(d, n)


# ------------------------------------------------------------------------------ patterns
class TestParsePattern:
    @pytest.mark.parametrize(
        ("pattern", "expected"),
        [
            (None, (None, None)),
            ("column", ("column", None)),
            ("Unstructured", ("unstructured", None)),
            ("2:4", ("2:4", (2, 4))),
            (" 1 : 8 ", ("1:8", (1, 8))),
            ("4:4", ("4:4", (4, 4))),
        ],
    )
    def test_valid(self, pattern, expected):
        assert parse_pattern(pattern) == expected

    @pytest.mark.parametrize(
        ("pattern", "match"),
        [
            ("blocky", "pattern: expected"),
            ("2:", "pattern: expected"),
            ("2/4", "pattern: expected"),
            ("0:4", "1 <= N <= M"),
            ("5:4", "1 <= N <= M"),
            ("1:0", "1 <= N <= M"),
        ],
    )
    def test_invalid(self, pattern, match):
        with pytest.raises(ValueError, match=match):
            parse_pattern(pattern)

    def test_wrong_type(self):
        with pytest.raises(TypeError, match="pattern"):
            parse_pattern(24)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- StateSparsity
class TestStateSparsityValid:
    def test_column(self):
        mask = torch.tensor([True, False, True, True, False, False, True, False])
        sp = StateSparsity.from_mask(mask, "column")
        assert isinstance(sp, StateLayout)
        assert sp.pattern == "column" and sp.nm is None and sp.kind == "column"
        assert sp.kept_idx.tolist() == [0, 2, 3, 6]
        assert sp.n_kept == 4 and sp.uniform
        assert sp.sparsity == pytest.approx(0.5)

    def test_column_from_identical_rows(self):
        row = torch.tensor([True, False, False, True])
        sp = StateSparsity.from_mask(row[None, :].expand(5, 4), "column")
        assert sp.mask.shape == (4,)
        assert sp.kind == "column" and sp.pattern == "column"
        assert torch.equal(sp.mask, row)

    def test_unstructured(self):
        mask = _random_mask(6, 16, seed=1)
        sp = StateSparsity.from_mask(mask, "unstructured")
        assert sp.pattern == "unstructured" and sp.nm is None and sp.kind == "channel"
        assert torch.equal(sp.kept_count, mask.sum(1).to(torch.int32))
        for c in range(6):
            k = int(sp.kept_count[c])
            assert sp.kept_idx[c, :k].tolist() == torch.nonzero(mask[c]).flatten().tolist()

    def test_channel_with_no_kept_state_is_valid(self):
        mask = _random_mask(4, 8, seed=2)
        mask[1] = False
        sp = StateSparsity.from_mask(mask, "unstructured")
        assert int(sp.kept_count[1]) == 0
        assert not sp.uniform
        all_pruned = StateSparsity.from_mask(torch.zeros(3, 8, dtype=torch.bool))
        assert all_pruned.n_kept == 0 and all_pruned.uniform
        assert StateSparsity.from_mask(torch.zeros(8, dtype=torch.bool), "column").n_kept == 0

    @pytest.mark.parametrize(("n_keep", "m", "n"), [(2, 4, 16), (1, 4, 8), (1, 2, 6), (4, 8, 16), (4, 4, 4)])
    def test_nm(self, n_keep, m, n):
        mask = _nm_valid_mask(5, n, n_keep, m, seed=3)
        sp = StateSparsity.from_mask(mask, f"{n_keep}:{m}")
        assert sp.pattern == f"{n_keep}:{m}" and sp.nm == (n_keep, m)
        assert sp.uniform and sp.n_kept == n // m * n_keep

    def test_pattern_none_infers_kind_only(self):
        assert StateSparsity.from_mask(torch.ones(4, dtype=torch.bool)).pattern == "column"
        nm_like = _nm_valid_mask(3, 8, 2, 4)
        sp = StateSparsity.from_mask(nm_like)
        assert sp.pattern == "unstructured" and sp.nm is None

    def test_max_d_state(self):
        sp = StateSparsity.from_mask(torch.ones(2, MAX_D_STATE, dtype=torch.bool), "unstructured")
        assert sp.d_state == MAX_D_STATE

    def test_from_layout_and_from_sparsity(self):
        mask = _nm_valid_mask(3, 8, 2, 4)
        sp = StateSparsity.from_mask(StateLayout(mask), "2:4")
        assert sp.nm == (2, 4)
        again = StateSparsity.from_mask(sp)
        assert again.pattern == "2:4"

    def test_usable_as_layout(self):
        mask = _nm_valid_mask(3, 8, 2, 4)
        sp = StateSparsity.from_mask(mask, "2:4")
        assert as_layout(sp, 3, 8) is sp
        state = torch.randn(2, 3, 8)
        compact = sp.compact_state(state)
        assert compact.shape == (2, 3, 4)
        assert torch.equal(sp.expand_state(compact), state * mask)
        moved = sp.to("cpu")
        assert isinstance(moved, StateSparsity) and moved.pattern == "2:4"
        assert "2:4" in repr(sp)

    def test_summary(self):
        sp = StateSparsity.from_mask(_nm_valid_mask(3, 8, 2, 4), "2:4")
        s = sp.summary()
        assert s == {"pattern": "2:4", "shape": [3, 8], "sparsity": 0.5, "n_kept": 4, "uniform": True}
        json.dumps(s)


class TestStateSparsityInvalid:
    @pytest.mark.parametrize(
        ("mask", "exc", "parts"),
        [
            ([True, False], TypeError, ["mask", "bool torch.Tensor", "list"]),
            (torch.ones(4, dtype=torch.uint8), TypeError, ["mask", "torch.bool", "torch.uint8"]),
            (torch.ones(4), TypeError, ["mask", "torch.bool", "torch.float32"]),
            (torch.ones(2, 3, 4, dtype=torch.bool), ValueError, ["mask", "(d, n)", "(2, 3, 4)"]),
            (torch.ones((), dtype=torch.bool), ValueError, ["mask", "got shape ()"]),
            (torch.ones(2, MAX_D_STATE + 1, dtype=torch.bool), ValueError, ["mask", "n <= 256", "n=257"]),
            (torch.ones(MAX_D_STATE + 1, dtype=torch.bool), ValueError, ["n <= 256", "n=257"]),
            (torch.ones(3, 0, dtype=torch.bool), ValueError, ["1 <= n", "n=0"]),
        ],
    )
    def test_bad_mask(self, mask, exc, parts):
        with pytest.raises(exc) as info:
            StateSparsity.from_mask(mask)
        for part in parts:
            assert part in str(info.value)

    def test_unknown_pattern(self):
        with pytest.raises(ValueError, match="pattern: expected"):
            StateSparsity.from_mask(torch.ones(2, 4, dtype=torch.bool), "diagonal")

    def test_column_with_differing_rows(self):
        mask = torch.ones(4, 8, dtype=torch.bool)
        mask[2, 5] = False
        with pytest.raises(ValueError) as info:
            StateSparsity.from_mask(mask, "column")
        msg = str(info.value)
        assert "column" in msg and "channel 2" in msg and "state 5" in msg and "(4, 8)" in msg

    def test_column_needs_a_channel(self):
        with pytest.raises(ValueError, match="at least one channel"):
            StateSparsity.from_mask(torch.ones(0, 8, dtype=torch.bool), "column")

    def test_unstructured_needs_2d(self):
        with pytest.raises(ValueError, match=r"'unstructured' needs a \(d, n\).*\(8,\)"):
            StateSparsity.from_mask(torch.ones(8, dtype=torch.bool), "unstructured")

    def test_nm_needs_2d(self):
        with pytest.raises(ValueError, match=r"'2:4' needs a \(d, n\).*\(8,\)"):
            StateSparsity.from_mask(torch.ones(8, dtype=torch.bool), "2:4")

    def test_nm_divisibility(self):
        with pytest.raises(ValueError, match="divisible by M=4, got n=6"):
            StateSparsity.from_mask(torch.ones(2, 6, dtype=torch.bool), "2:4")

    def test_nm_does_not_hold(self):
        mask = _nm_valid_mask(4, 16, 2, 4, seed=5)
        # channel 1, group 2 (states 8..11): keep 3 instead of 2; channel 3 also broken (reported later).
        group = mask[1, 8:12]
        group[torch.nonzero(~group)[0, 0]] = True
        mask[1, 8:12] = group
        mask[3, 0:4] = False
        with pytest.raises(ValueError) as info:
            StateSparsity.from_mask(mask, "2:4")
        msg = str(info.value)
        assert "channel 1, group 2" in msg and "keeps 3" in msg and "states 8..11" in msg
        assert "exactly 2" in msg

    def test_nm_too_few(self):
        mask = _nm_valid_mask(2, 8, 2, 4)
        mask[0, 4:8] = False
        with pytest.raises(ValueError, match=r"channel 0, group 1.*keeps 0"):
            StateSparsity.from_mask(mask, "2:4")


# -------------------------------------------------------------------------------- builders
def _brute_top_k(values: list[float], k: int) -> set[int]:
    """Indices of the k largest values; ties -> lower index (independent of torch.sort)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return set(order[:k])


class TestKeptCount:
    @pytest.mark.parametrize(
        ("total", "sparsity", "kept"),
        [(10, 0.0, 10), (10, 0.5, 5), (10, 0.25, 8), (10, 0.26, 7), (4, 0.9, 0), (16, 0.75, 4), (3, 0.5, 2)],
    )
    def test_rounding(self, total, sparsity, kept):
        assert kept_count(total, sparsity) == kept


class TestBuilders:
    @pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.99])
    def test_unstructured_matches_brute_force(self, sparsity):
        scores = torch.randn(7, 12, generator=_gen(11))
        mask = unstructured_mask(scores, sparsity)
        assert mask.dtype == torch.bool and mask.shape == (7, 12)
        k = math.floor((1 - sparsity) * 84 + 0.5)
        assert int(mask.sum()) == k
        expected = _brute_top_k(scores.flatten().tolist(), k)
        assert set(torch.nonzero(mask.flatten()).flatten().tolist()) == expected

    def test_unstructured_ties_are_deterministic(self):
        scores = torch.zeros(3, 4)
        mask = unstructured_mask(scores, 0.5)
        # 6 kept among 12 equal scores: the first 6 in row-major order.
        assert mask.flatten().tolist() == [True] * 6 + [False] * 6
        scores = torch.tensor([[1.0, 2.0, 2.0, 0.0], [2.0, 0.0, 0.0, 2.0]])
        mask = unstructured_mask(scores, 0.75)  # keep 2 of the four 2.0 entries
        assert torch.nonzero(mask).tolist() == [[0, 1], [0, 2]]
        assert torch.equal(unstructured_mask(scores, 0.75), mask)

    def test_unstructured_can_empty_a_channel(self):
        scores = torch.tensor([[5.0, 6.0], [0.0, 1.0]])
        mask = unstructured_mask(scores, 0.5)
        assert mask.tolist() == [[True, True], [False, False]]
        StateSparsity.from_mask(mask, "unstructured")

    def test_unstructured_with_inf(self):
        scores = torch.tensor([[float("-inf"), 1.0], [float("inf"), 0.0]])
        assert unstructured_mask(scores, 0.5).tolist() == [[False, True], [True, False]]

    @pytest.mark.parametrize(("n_keep", "m"), [(2, 4), (1, 4), (3, 4), (1, 2), (4, 8), (4, 4)])
    def test_nm_matches_brute_force(self, n_keep, m):
        d, n = 5, 16
        scores = torch.randn(d, n, generator=_gen(12))
        mask = nm_mask(scores, n_keep, m)
        assert mask.dtype == torch.bool and mask.shape == (d, n)
        for c, g in itertools.product(range(d), range(n // m)):
            vals = scores[c, g * m : (g + 1) * m].tolist()
            kept = set(torch.nonzero(mask[c, g * m : (g + 1) * m]).flatten().tolist())
            assert kept == _brute_top_k(vals, n_keep)
        sp = StateSparsity.from_mask(mask, f"{n_keep}:{m}")
        assert sp.nm == (n_keep, m)

    def test_nm_ties(self):
        scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 3.0, 3.0, 3.0]])
        assert nm_mask(scores, 2, 4).tolist() == [[True, True, False, False, False, True, True, False]]

    @pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.6, 0.9])
    def test_column_matches_brute_force(self, sparsity):
        scores = torch.rand(6, 16, generator=_gen(13))
        mask = column_mask(scores, sparsity)
        assert mask.dtype == torch.bool and mask.shape == (16,)
        sums = [sum(float(scores[c, j]) for c in range(6)) for j in range(16)]
        k = math.floor((1 - sparsity) * 16 + 0.5)
        assert set(torch.nonzero(mask).flatten().tolist()) == _brute_top_k(sums, k)
        one_d = column_mask(scores.sum(0), sparsity)
        assert torch.equal(one_d, mask)

    def test_column_ties(self):
        assert column_mask(torch.ones(8), 0.5).tolist() == [True] * 4 + [False] * 4

    @pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
    @pytest.mark.parametrize("builder", [unstructured_mask, column_mask])
    def test_sparsity_out_of_range(self, builder, sparsity):
        with pytest.raises(ValueError, match=r"sparsity: expected a float in \[0, 1\)"):
            builder(torch.randn(4, 8), sparsity)

    @pytest.mark.parametrize("sparsity", ["0.5", True, None])
    def test_sparsity_wrong_type(self, sparsity):
        with pytest.raises(TypeError, match="sparsity"):
            unstructured_mask(torch.randn(4, 8), sparsity)

    def test_bad_scores(self):
        with pytest.raises(ValueError, match=r"scores: expected shape \(d, n\), got \(8,\)"):
            unstructured_mask(torch.randn(8), 0.5)
        with pytest.raises(ValueError, match=r"scores: expected shape \(n,\) or \(d, n\), got \(2, 3, 4\)"):
            column_mask(torch.randn(2, 3, 4), 0.5)
        with pytest.raises(TypeError, match=r"scores: expected a floating-point dtype, got torch.int64"):
            nm_mask(torch.ones(2, 8, dtype=torch.long))
        with pytest.raises(TypeError, match=r"scores: expected a floating-point torch.Tensor, got list"):
            nm_mask([[1.0, 2.0]])  # type: ignore[arg-type]
        bad = torch.randn(2, 8)
        bad[1, 3] = float("nan")
        with pytest.raises(ValueError, match="scores: contains NaN"):
            unstructured_mask(bad, 0.5)
        with pytest.raises(ValueError, match="n >= 1"):
            column_mask(torch.randn(0), 0.5)

    def test_nm_bad_arguments(self):
        with pytest.raises(ValueError, match="divisible by m=4, got n=6"):
            nm_mask(torch.randn(2, 6), 2, 4)
        with pytest.raises(ValueError, match="1 <= n_keep <= m, got n_keep=5, m=4"):
            nm_mask(torch.randn(2, 8), 5, 4)
        with pytest.raises(ValueError, match="n_keep=0"):
            nm_mask(torch.randn(2, 8), 0, 4)
        with pytest.raises(TypeError, match="n_keep: expected an int"):
            nm_mask(torch.randn(2, 8), 2.0, 4)  # type: ignore[arg-type]

    def test_build_sparsity(self):
        scores = torch.randn(4, 16, generator=_gen(14))
        sp = build_sparsity(scores, "2:4")
        assert sp.nm == (2, 4) and torch.equal(sp.mask, nm_mask(scores, 2, 4))
        assert build_sparsity(scores, "2:4", 0.5).nm == (2, 4)
        col = build_sparsity(scores, "column", 0.5)
        assert col.pattern == "column" and torch.equal(col.mask, column_mask(scores, 0.5))
        un = build_sparsity(scores, "unstructured", 0.25)
        assert un.pattern == "unstructured" and torch.equal(un.mask, unstructured_mask(scores, 0.25))
        with pytest.raises(ValueError, match=r"implies sparsity 0.5"):
            build_sparsity(scores, "2:4", 0.75)
        with pytest.raises(ValueError, match="sparsity: required for pattern 'column'"):
            build_sparsity(scores, "column")
        with pytest.raises(ValueError, match="pattern"):
            build_sparsity(scores, None)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- mask files
def _sample_masks() -> dict[str, torch.Tensor]:
    return {
        "backbone.layers.0.mixer.A_log": _nm_valid_mask(6, 16, 2, 4, seed=20),
        "backbone.layers.1.mixer.A_log": torch.tensor([True, False] * 8),
        "backbone.layers.2.mixer.A_log": _random_mask(6, 16, seed=21),
    }


class TestMaskFiles:
    def test_round_trip(self, tmp_path):
        masks = _sample_masks()
        masks["backbone.layers.2.mixer.A_log"][3] = False  # an all-pruned channel
        path = tmp_path / "sub" / "masks.safetensors"
        meta = {
            "pattern_note": "mixed",
            "method": "sparsessm",
            "calibration": json.dumps({"samples": 8, "seqlen": 128}),
            "pruned_states": "zero_transition",
        }
        save_masks(path, masks, meta)
        loaded, metadata = load_masks(path)
        assert set(loaded) == set(masks)
        for name, mask in masks.items():
            assert loaded[name].dtype == torch.bool
            assert torch.equal(loaded[name], mask)
        assert metadata["format"] == MASKS_FORMAT == "sparsessm-masks"
        assert metadata["version"] == __version__
        for key, val in meta.items():
            assert metadata[key] == val
        summary = json.loads(metadata["masks"])
        assert summary["backbone.layers.0.mixer.A_log"]["pattern"] == "unstructured"
        assert summary["backbone.layers.1.mixer.A_log"] == {
            "pattern": "column",
            "shape": [16],
            "sparsity": 0.5,
            "n_kept": 8,
            "uniform": True,
        }
        assert not list(tmp_path.glob("sub/.*.tmp"))

    def test_state_sparsity_values_and_load_sparsities(self, tmp_path):
        masks = _sample_masks()
        values = {
            "a": StateSparsity.from_mask(masks["backbone.layers.0.mixer.A_log"], "2:4"),
            "b": StateSparsity.from_mask(masks["backbone.layers.1.mixer.A_log"], "column"),
            "c": StateLayout(masks["backbone.layers.2.mixer.A_log"]),
        }
        path = tmp_path / "m.safetensors"
        save_masks(path, values)
        summary = json.loads(load_masks(path)[1]["masks"])
        assert {k: v["pattern"] for k, v in summary.items()} == {
            "a": "2:4",
            "b": "column",
            "c": "unstructured",
        }
        sps, _ = load_sparsities(path)
        assert sps["a"].nm == (2, 4) and sps["b"].pattern == "column" and sps["c"].pattern == "unstructured"
        assert torch.equal(sps["c"].mask, masks["backbone.layers.2.mixer.A_log"])

    def test_file_level_pattern_is_validated(self, tmp_path):
        nm = _nm_valid_mask(4, 8, 2, 4)
        path = tmp_path / "m.safetensors"
        save_masks(path, {"x": nm}, {"pattern": "2:4", "sparsity": "0.5"})
        assert json.loads(load_masks(path)[1]["masks"])["x"]["pattern"] == "2:4"
        with pytest.raises(ValueError, match=r"masks\['y'\]: mask: pattern '2:4'.*channel 0, group 0"):
            save_masks(path, {"y": torch.ones(4, 8, dtype=torch.bool)}, {"pattern": "2:4"})
        # a column pattern stores identical rows as (n,)
        row = torch.tensor([True, False, True, False])
        save_masks(path, {"z": row[None].expand(3, 4)}, {"pattern": "column"})
        assert load_masks(path)[0]["z"].shape == (4,)

    def test_reserved_metadata_keys_are_replaced(self, tmp_path):
        path = tmp_path / "m.safetensors"
        save_masks(
            path, {"x": torch.ones(4, dtype=torch.bool)}, {"format": "other", "version": "0.0", "masks": "x"}
        )
        _, metadata = load_masks(path)
        assert metadata["format"] == MASKS_FORMAT and metadata["version"] == __version__
        assert "x" in json.loads(metadata["masks"])
        # re-saving loaded metadata works
        save_masks(path, load_masks(path)[0], metadata)

    def test_save_errors(self, tmp_path):
        path = tmp_path / "m.safetensors"
        with pytest.raises(TypeError, match=r"masks\['x'\]: mask: expected dtype torch.bool"):
            save_masks(path, {"x": torch.ones(4)})
        with pytest.raises(ValueError, match=r"masks\['x'\]: .*n <= 256"):
            save_masks(path, {"x": torch.ones(300, dtype=torch.bool)})
        with pytest.raises(TypeError, match="metadata: expected str keys and str values"):
            save_masks(path, {"x": torch.ones(4, dtype=torch.bool)}, {"sparsity": 0.5})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="masks: expected non-empty str keys"):
            save_masks(path, {3: torch.ones(4, dtype=torch.bool)})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="masks: expected a dict"):
            save_masks(path, [torch.ones(4, dtype=torch.bool)])  # type: ignore[arg-type]
        assert not path.exists()
        assert list(tmp_path.iterdir()) == []

    def test_atomic_no_file_on_failure(self, tmp_path, monkeypatch):
        def boom(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("disk full")

        monkeypatch.setattr(sio, "save_file", boom)
        path = tmp_path / "m.safetensors"
        with pytest.raises(RuntimeError, match="disk full"):
            save_masks(path, {"x": torch.ones(4, dtype=torch.bool)})
        assert list(tmp_path.iterdir()) == []

    def test_atomic_old_file_intact_on_failure(self, tmp_path, monkeypatch):
        path = tmp_path / "m.safetensors"
        old = {"x": torch.tensor([True, False, True, True])}
        save_masks(path, old, {"method": "old"})
        before = path.read_bytes()

        real_save = sio.save_file

        def half_then_fail(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            raise KeyboardInterrupt

        monkeypatch.setattr(sio, "save_file", half_then_fail)
        with pytest.raises(KeyboardInterrupt):
            save_masks(path, {"y": torch.zeros(4, dtype=torch.bool)}, {"method": "new"})
        assert path.read_bytes() == before
        masks, metadata = load_masks(path)
        assert metadata["method"] == "old" and torch.equal(masks["x"], old["x"])
        assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]

    def test_load_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"masks file not found.*nope.safetensors"):
            load_masks(tmp_path / "nope.safetensors")

    def test_load_directory(self, tmp_path):
        with pytest.raises(MaskFileError, match="not a file"):
            load_masks(tmp_path)

    @pytest.mark.parametrize("content", [b"", b"garbage bytes that are not safetensors", b"\xff" * 64])
    def test_load_corrupt(self, tmp_path, content):
        path = tmp_path / "bad.safetensors"
        path.write_bytes(content)
        with pytest.raises(MaskFileError, match="not a readable safetensors file"):
            load_masks(path)

    def test_load_truncated(self, tmp_path):
        path = tmp_path / "m.safetensors"
        save_masks(path, _sample_masks())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 20])
        with pytest.raises(MaskFileError, match="not a readable safetensors file"):
            load_masks(path)

    def test_load_not_a_masks_file(self, tmp_path):
        path = tmp_path / "weights.safetensors"
        save_file({"w": torch.ones(2, 2)}, str(path))
        with pytest.raises(MaskFileError, match=r"not a sparsessm masks file.*no 'format' metadata"):
            load_masks(path)
        save_file({"w": torch.ones(2, 2)}, str(path), metadata={"format": "pt"})
        with pytest.raises(MaskFileError, match="found format 'pt'"):
            load_masks(path)

    def test_load_uint8_masks(self, tmp_path):
        path = tmp_path / "m.safetensors"
        save_file(
            {"x": torch.tensor([1, 0, 1, 1], dtype=torch.uint8)}, str(path), metadata={"format": MASKS_FORMAT}
        )
        masks, _ = load_masks(path)
        assert masks["x"].dtype == torch.bool and masks["x"].tolist() == [True, False, True, True]

    def test_load_bad_values(self, tmp_path):
        path = tmp_path / "m.safetensors"
        save_file(
            {"x": torch.tensor([1, 0, 2, 1], dtype=torch.uint8)}, str(path), metadata={"format": MASKS_FORMAT}
        )
        with pytest.raises(MaskFileError, match=r"'x' is uint8 but holds values other than 0/1 \(found 2\)"):
            load_masks(path)
        save_file({"x": torch.ones(4)}, str(path), metadata={"format": MASKS_FORMAT})
        with pytest.raises(MaskFileError, match=r"'x' must have dtype bool.*torch.float32"):
            load_masks(path)
        save_file({"x": torch.ones(2, 2, 2, dtype=torch.bool)}, str(path), metadata={"format": MASKS_FORMAT})
        with pytest.raises(MaskFileError, match=r"'x' is invalid.*\(2, 2, 2\)"):
            load_masks(path)

    def test_load_sparsities_pattern_mismatch(self, tmp_path):
        path = tmp_path / "m.safetensors"
        save_file(
            {"x": torch.ones(2, 8, dtype=torch.bool)},
            str(path),
            metadata={"format": MASKS_FORMAT, "pattern": "2:4"},
        )
        with pytest.raises(MaskFileError, match="does not follow pattern '2:4'"):
            load_sparsities(path)


class TestHeadMasks:
    """Mamba-2 head transition masks in a masks file: bool (nheads,) of any length."""

    def test_round_trip_beside_state_masks(self, tmp_path):
        path = tmp_path / "m.safetensors"
        heads = torch.rand(300, generator=torch.Generator().manual_seed(0)) < 0.5  # > 256 heads
        state = torch.tensor([[True, False, True, True], [False, False, True, True]])
        save_masks(path, {"l.ssm_state": state}, {"pruned_states": "remove"}, head_masks={"l.A_log": heads})
        masks, metadata = load_masks(path)
        assert torch.equal(masks["l.A_log"], heads) and torch.equal(masks["l.ssm_state"], state)
        assert sio.head_mask_names(metadata) == {"l.A_log"}
        summary = json.loads(metadata["masks"])["l.A_log"]
        assert summary == {
            "kind": "head_transition",
            "shape": [300],
            "sparsity": round(1 - int(heads.sum()) / 300, 6),
            "n_kept": int(heads.sum()),
        }
        assert metadata["pruned_states"] == "remove"
        # they are no state masks: load_sparsities refuses the file instead of misreading it
        with pytest.raises(MaskFileError, match=r"head transition masks \['l\.A_log'\].*load_masks"):
            load_sparsities(path)
        save_masks(path, {}, head_masks={"x": torch.ones(3, dtype=torch.bool)})
        assert load_masks(path)[0]["x"].tolist() == [True, True, True]

    def test_errors(self, tmp_path):
        path = tmp_path / "m.safetensors"
        one = torch.ones(4, dtype=torch.bool)
        with pytest.raises(TypeError, match=r"head_masks\['h'\]: expected dtype torch.bool"):
            save_masks(path, {}, head_masks={"h": torch.ones(4)})
        with pytest.raises(ValueError, match=r"head_masks\['h'\]: expected shape \(nheads,\)"):
            save_masks(path, {}, head_masks={"h": torch.ones(2, 2, dtype=torch.bool)})
        with pytest.raises(ValueError, match="also a state mask"):
            save_masks(path, {"h": one}, head_masks={"h": one})
        with pytest.raises(TypeError, match="head_masks: expected a dict"):
            save_masks(path, {}, head_masks=[one])  # type: ignore[arg-type]
        assert not path.exists()
        # a head mask whose stored tensor is not 1-D is reported on loading
        save_file(
            {"h": torch.ones(2, 2, dtype=torch.bool)},
            str(path),
            metadata={"format": MASKS_FORMAT, "masks": json.dumps({"h": {"kind": "head_transition"}})},
        )
        with pytest.raises(MaskFileError, match=r"mask 'h' is invalid.*\(nheads,\)"):
            load_masks(path)
        save_file({"h": one}, str(path), metadata={"format": MASKS_FORMAT, "masks": "[1, 2]"})
        with pytest.raises(MaskFileError, match="metadata 'masks' is not a valid JSON object"):
            load_masks(path)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path) -> None:
    import os
    import stat

    from sparsessm_kernels._io import _UMASK, write_text_atomic

    path = tmp_path / "x.json"
    write_text_atomic(path, "{}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_UMASK
