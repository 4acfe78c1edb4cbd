"""Checkpoints pruned by the SparseSSM authors' code (pruned ``A_log`` stored as 0): the
``from_pretrained`` warning and ``sparsessm convert --zero-a-log-pruned``."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sparsessm_kernels import cli
from sparsessm_kernels.models import MambaLM, MambaLMConfig, ZeroedALogWarning, a_log_name
from sparsessm_kernels.models.zeroed_a_log import (
    ZEROED_A_LOG_MIN_FRACTION,
    find_zeroed_a_log_layers,
    zeroed_a_log_layouts,
    zeroed_a_log_mask,
)
from sparsessm_kernels.ops import StateLayout
from sparsessm_kernels.sparsity import load_masks
from tests.authors_checkpoint import (
    TINY,
    authors_logits,
    prune_a_log_like_authors,
    tiny_state,
    write_authors_checkpoint,
)

TOL = {"atol": 1e-4, "rtol": 1e-4}  # float32 logits, different summation order


def _ids(b: int = 2, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (b, length), generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def _no_zeroed_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroedALogWarning)
        yield


@pytest.fixture(scope="module")
def authors_state() -> dict[str, torch.Tensor]:
    return prune_a_log_like_authors(tiny_state(), sparsity=0.5, seed=0, layers=(0, 1, 3))


def test_zeroed_mask_is_the_authors_a_equals_minus_one() -> None:
    a_log = torch.tensor([[0.0, -0.0, 1e-9, -1e-9, 1e-40, 1e-6, 0.69, -2.0]])
    expected = torch.tensor([[True, True, True, True, True, False, False, False]])
    assert torch.equal(zeroed_a_log_mask(a_log), expected)
    assert torch.equal(zeroed_a_log_mask(a_log), -torch.exp(a_log.float()) == -1)
    assert torch.equal(zeroed_a_log_mask(a_log.to(torch.bfloat16)), expected)


def test_loading_warns_once_and_convert_reproduces_the_authors_evaluation(
    tmp_path: Path, authors_state: dict[str, torch.Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_authors_checkpoint(tmp_path / "authors", authors_state)
    ids = _ids()
    reference = authors_logits(authors_state, ids)  # transition zeroed where A == -1

    with pytest.warns(ZeroedALogWarning) as record:
        plain = MambaLM.from_pretrained(src)
    assert len(record) == 1
    message = str(record[0].message)
    for i in (0, 1, 3):
        assert f"{i} ({int((authors_state[a_log_name(i)] == 0).sum())} of 4096)" in message
    assert "2 (" not in message  # layer 2 was not pruned
    assert f"sparsessm convert {src} --out DIR --zero-a-log-pruned" in message
    # loaded as is, the pruned states run with A = -1: the authors' pipeline, not their evaluation
    torch.testing.assert_close(plain(ids), authors_logits(authors_state, ids, zero_pruned=False), **TOL)
    assert (plain(ids) - reference).abs().max() > 100 * TOL["atol"]

    dst = tmp_path / "converted"
    assert cli.main(["convert", str(src), "--out", str(dst), "--zero-a-log-pruned", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in summary["layers"]] == [0, 1, 3]
    assert summary["layers"][0]["zeroed"] == 2048 and summary["layers"][0]["sparsity"] == 0.5
    assert not any(r["state_0_only"] for r in summary["layers"])
    assert summary["dtype"] == "float32"

    masks, meta = load_masks(dst / "sparsity.safetensors")
    assert sorted(masks) == [a_log_name(i) for i in (0, 1, 3)]
    assert set(json.loads(meta["pruned_states"]).values()) == {"zero_transition"}
    for i in (0, 1, 3):
        assert torch.equal(masks[a_log_name(i)], authors_state[a_log_name(i)] != 0)
    assert json.loads((dst / "config.json").read_text())["model_type"] == "mamba"

    with _no_zeroed_warning():  # the zeros are masked now: nothing to warn about
        converted = MambaLM.from_pretrained(dst)
    assert converted.state_layout(0)[1] == "zero_transition" and converted.state_layout(2)[0] is None
    torch.testing.assert_close(converted(ids), reference, **TOL)
    # the decode path (selective_state_update on the masks) agrees with the full sequence
    cache = converted.allocate_cache(ids.shape[0])
    first = converted(ids[:, :10], cache=cache)
    rest = converted(ids[:, 10:], cache=cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), reference, **TOL)


def test_convert_text_output_and_plain_conversion(
    tmp_path: Path, authors_state: dict[str, torch.Tensor], capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_authors_checkpoint(tmp_path / "authors", authors_state)
    dst = tmp_path / "dst"
    assert (
        cli.main(["convert", str(src), "--out", str(dst), "--zero-a-log-pruned", "--dtype", "bfloat16"]) == 0
    )
    out = capsys.readouterr().out
    assert f"converted {src} -> {dst} (bfloat16)" in out
    assert "layer 0: 2048 of 4096 A_log entries are 0 -> pruned (zero_transition)" in out
    assert MambaLM.from_pretrained(dst, dtype="auto").dtype == torch.bfloat16  # "auto": as stored
    assert MambaLM.from_pretrained(dst).dtype == torch.float32
    with pytest.raises(TypeError, match=r"dtype: expected None, 'auto' or a torch\.dtype, got 'fp16'"):
        MambaLM.from_pretrained(dst, dtype="fp16")

    # without the flag: a layout conversion, and the loader's warning says what to do
    plain = tmp_path / "plain"
    with pytest.warns(ZeroedALogWarning, match="--zero-a-log-pruned"):
        assert cli.main(["convert", str(src), "--out", str(plain)]) == 0
    assert not (plain / "sparsity.safetensors").exists()
    ids = _ids(1, 12)
    with pytest.warns(ZeroedALogWarning):
        a, b = MambaLM.from_pretrained(src), MambaLM.from_pretrained(plain)
    torch.testing.assert_close(b(ids), a(ids), atol=0, rtol=0)

    # --overwrite replaces a previous conversion as a whole (no stale masks file survives)
    with pytest.warns(ZeroedALogWarning):
        assert cli.main(["convert", str(src), "--out", str(dst), "--overwrite"]) == 0
    assert not (dst / "sparsity.safetensors").exists()


def test_initial_value_of_state_0_is_not_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = MambaLMConfig(vocab_size=260, d_model=16, n_layer=2, d_state=8)
    model = MambaLM.from_config(cfg, seed=0)  # S4D-real init: A_log[:, 0] = log(1) = 0 exactly
    assert bool((model.mixer(0).A_log[:, 0] == 0).all())
    model.save_pretrained(tmp_path / "init")
    with _no_zeroed_warning():
        MambaLM.from_pretrained(tmp_path / "init")

    # --zero-a-log-pruned still does what it says, and says these zeros may be the initial value
    assert (
        cli.main(["convert", str(tmp_path / "init"), "--out", str(tmp_path / "dst"), "--zero-a-log-pruned"])
        == 0
    )
    out = capsys.readouterr().out
    assert "layer 0: 32 of 256 A_log entries are 0" in out and "state 0 only" in out
    clean = tmp_path / "clean"
    with torch.no_grad():
        for i in range(2):
            model.mixer(i).A_log.add_(0.5)
    model.save_pretrained(clean)
    assert cli.main(["convert", str(clean), "--out", str(tmp_path / "dst2"), "--zero-a-log-pruned"]) == 0
    assert "nothing was marked pruned" in capsys.readouterr().out
    assert not (tmp_path / "dst2" / "sparsity.safetensors").exists()


def test_threshold_counts_states_beyond_the_initial_one() -> None:
    d, n = 64, 8
    a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(d, n).clone()
    assert find_zeroed_a_log_layers({0: a_log}) == {}  # state 0 only: the init pattern
    need = int(torch.tensor(ZEROED_A_LOG_MIN_FRACTION * d * (n - 1)).ceil())
    below = a_log.clone()
    below[: need - 1, 1] = 0.0
    assert find_zeroed_a_log_layers({0: below}) == {}
    at = a_log.clone()
    at[:need, 1] = 0.0
    assert find_zeroed_a_log_layers({0: at}) == {0: (d + need, d * n)}
    # zeros the layer's own mask already prunes are not counted
    keep = torch.ones(d, n, dtype=torch.bool)
    keep[:need, 1] = False
    assert find_zeroed_a_log_layers({0: at}, {0: StateLayout(keep)}) == {}


def test_layouts_combine_with_existing_masks() -> None:
    d, n = 4, 4
    a_log = torch.ones(d, n)
    a_log[0, 1] = 0.0
    old = torch.ones(d, n, dtype=torch.bool)
    old[2, 3] = False
    out = zeroed_a_log_layouts({0: a_log, 1: torch.ones(d, n)}, {0: (StateLayout(old), "zero_transition")})
    assert list(out) == [0]  # layer 1 has no zeros: left alone
    expected = old.clone()
    expected[0, 1] = False
    assert torch.equal(out[0].mask, expected)
    column = torch.tensor([True, True, True, False])
    with pytest.raises(ValueError, match=r"layer 0: .*pruned_states='remove'.*1 exact zero"):
        zeroed_a_log_layouts({0: a_log}, {0: (StateLayout(column), "remove")})
    # zeros inside removed states are fine
    a_log2 = torch.ones(d, n)
    a_log2[:, 3] = 0.0
    assert zeroed_a_log_layouts({0: a_log2}, {0: (StateLayout(column), "remove")}) == {}


def test_convert_bad_input(tmp_path: Path, authors_state, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_authors_checkpoint(tmp_path / "authors", authors_state)
    (tmp_path / "file").write_text("x")
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "keep.txt").write_text("x")
    cases = [
        (["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "model directory not found"),
        (["convert", str(src), "--out", str(src)], "is or contains SRC"),
        (["convert", str(src), "--out", str(tmp_path)], "is or contains SRC"),
        (["convert", str(src), "--out", str(tmp_path / "file")], "--out"),
        (["convert", str(src), "--out", str(tmp_path / "nonempty")], "not empty"),
        (
            ["convert", str(src), "--out", str(tmp_path / "o"), "--revision", "main"],
            "applies to Hugging Face",
        ),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("sparsessm convert: error:") and message in err, (argv, err)
    assert not (tmp_path / "o").exists()
