"""Hugging Face Hub ids wherever a model directory is accepted, without network.

A fake hub cache is built under a temporary ``HF_HUB_CACHE`` with ``HF_HUB_OFFLINE=1``, laid out as
``huggingface_hub`` lays out its cache: ``models--{org}--{name}/refs/{branch}`` holds a commit
hash, ``models--{org}--{name}/snapshots/{commit}/`` the files of that commit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsessm_kernels import cli
from sparsessm_kernels.models import HubLookupError, MambaLM, ZeroedALogWarning, a_log_name
from sparsessm_kernels.models.hub import is_hub_id, resolve_local_or_hub
from tests.authors_checkpoint import (
    TINY_DIR,
    authors_logits,
    prune_a_log_like_authors,
    tiny_state,
    write_authors_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
COMMIT_MAIN = "a" * 40
COMMIT_PRUNED = "b" * 40
COMMIT_TOK = "c" * 40


class FakeHub:
    """Writes repositories into a huggingface_hub-style cache directory."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def add(self, repo_id: str, commit: str, source: Path, refs: tuple[str, ...] = ()) -> Path:
        """Copy the files of ``source`` as snapshot ``commit`` of ``repo_id``; point ``refs`` at it."""
        repo = self.cache / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo / "snapshots" / commit
        shutil.copytree(source, snapshot)
        for ref in refs:
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / ref).write_text(commit)  # no trailing newline, as huggingface_hub writes it
        return snapshot


def _offline_env(cache: Path) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """An offline fake hub with ``org/tiny`` (main: the tiny model, HF layout; branch ``pruned``: an
    authors-pruned copy in mamba_ssm layout with ``pytorch_model.bin`` only) and ``org/tok`` (a
    tokenizer). huggingface_hub reads its settings at import, so its constants are patched too."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf-cache"
    for key, value in _offline_env(cache).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fake = FakeHub(cache)
    fake.add("org/tiny", COMMIT_MAIN, TINY_DIR, refs=("main",))
    pruned = write_authors_checkpoint(tmp_path / "src-pruned", prune_a_log_like_authors(tiny_state()))
    fake.add("org/tiny", COMMIT_PRUNED, pruned, refs=("pruned",))
    return fake


def _tokenizer_dir(directory: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<unk>", "the", "state", "scan", "mask", "a", "of"]
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(directory)
    return directory


def _ids(length: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(0))


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text((ROOT / "docs" / "semantics.md").read_text(encoding="utf-8"), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- resolver
def test_hub_id_syntax() -> None:
    for good in ("state-spaces/mamba-130m-hf", "org/tiny", "A1/b_c.d"):
        assert is_hub_id(good), good
    for bad in (
        "mamba",
        "/abs/path",
        "./org/x",
        "a/b/c",
        "org/",
        "org/..x",
        "org/a--b",
        "org/x.",
        Path("org/x"),
    ):
        assert not is_hub_id(bad), bad


def test_from_pretrained_hub_id_and_revisions(hub: FakeHub) -> None:
    ids = _ids()
    local = MambaLM.from_pretrained(TINY_DIR)
    from_hub = MambaLM.from_pretrained("org/tiny")
    torch.testing.assert_close(from_hub(ids), local(ids), atol=0, rtol=0)
    assert torch.equal(
        MambaLM.from_pretrained("org/tiny", revision="main").mixer(0).A_log, local.mixer(0).A_log
    )

    # another snapshot, by branch and by commit hash: the mamba_ssm-layout, authors-pruned copy
    state = prune_a_log_like_authors(tiny_state())
    for revision in ("pruned", COMMIT_PRUNED):
        with pytest.warns(ZeroedALogWarning, match=f"sparsessm convert org/tiny --revision {revision} "):
            model = MambaLM.from_pretrained("org/tiny", revision=revision)
        assert torch.equal(model.mixer(0).A_log, state[a_log_name(0)])
        torch.testing.assert_close(
            model(ids), authors_logits(state, ids, zero_pruned=False), atol=1e-4, rtol=1e-4
        )


def test_hub_lookup_errors(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HubLookupError, match=r"^org/missing: not a local directory; the hub lookup failed: "):
        MambaLM.from_pretrained("org/missing")
    with pytest.raises(
        HubLookupError, match=r"org/tiny: not a local directory; the hub lookup \(revision 'v9'\)"
    ):
        MambaLM.from_pretrained("org/tiny", revision="v9")
    with pytest.raises(FileNotFoundError):  # HubLookupError is a FileNotFoundError
        MambaLM.from_pretrained("org/missing")
    with pytest.raises(ValueError, match="revision: 'main' applies to Hugging Face Hub ids"):
        MambaLM.from_pretrained(TINY_DIR, revision="main")
    # not spelled like a hub id: the usual local error
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        MambaLM.from_pretrained(tmp_path / "org" / "nope")
    # huggingface_hub missing: say which extra installs it
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(HubLookupError, match=r"org/tiny: not a local directory; .*sparsessm-kernels\[hf\]"):
        MambaLM.from_pretrained("org/tiny")


def test_local_directory_wins(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "org").mkdir(parents=True)
    state = tiny_state()
    state[a_log_name(0)] += 0.25  # differs from the hub's org/tiny
    write_authors_checkpoint(work / "org" / "tiny", state)
    monkeypatch.chdir(work)
    assert resolve_local_or_hub("org/tiny") == Path("org/tiny")
    assert torch.equal(MambaLM.from_pretrained("org/tiny").mixer(0).A_log, state[a_log_name(0)])


def test_load_model_hub_ids_of_both_architectures(hub: FakeHub, tmp_path: Path) -> None:
    from sparsessm_kernels.models import Mamba2LM, Mamba2LMConfig, load_model

    cfg = Mamba2LMConfig(vocab_size=256, d_model=16, n_layer=2, d_state=8, headdim=8, ngroups=2, chunk_size=4)
    model = Mamba2LM.from_config(cfg, seed=0)
    model.set_state_mask(1, torch.rand(2, 8, generator=torch.Generator().manual_seed(0)) < 0.5)
    model.save_pretrained(tmp_path / "m2")
    hub.add("org/tiny2", "d" * 40, tmp_path / "m2", refs=("main",))
    loaded = load_model("org/tiny2")
    assert type(loaded) is Mamba2LM and set(loaded.state_masks()) == set(model.state_masks())
    torch.testing.assert_close(loaded(_ids()), model(_ids()), atol=0, rtol=0)
    assert type(load_model("org/tiny", revision="main")) is MambaLM


# ---------------------------------------------------------------------- CLI
def test_cli_eval_prune_convert_with_hub_ids(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _corpus(tmp_path)
    hub.add("org/tok", COMMIT_TOK, _tokenizer_dir(tmp_path / "tok-src"), refs=("main",))

    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        argv = ["eval", "org/tiny", "--data", str(corpus), "--seqlen", "32", "--max-windows", "2"]
        assert cli.main([*argv, "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_dir"] == "org/tiny" and result["tokenizer"] == "bytes"
    assert result["perplexity"]["windows"] == 2

    # --tokenizer as a hub id
    argv = ["eval", "org/tiny", "--data", str(corpus), "--seqlen", "16", "--max-windows", "1"]
    assert cli.main([*argv, "--tokenizer", "org/tok", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["tokenizer"].startswith("hf:")

    out = tmp_path / "pruned"
    argv = ["prune", "org/tiny", "--calib", str(corpus), "--nsamples", "2", "--seqlen", "16"]
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main([*argv, "--save", str(out), "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model_dir"] == "org/tiny" and report["settings"]["revision"] is None
    assert (out / "sparsity.safetensors").is_file()

    dst = tmp_path / "converted"
    argv = ["convert", "org/tiny", "--revision", "pruned", "--out", str(dst), "--zero-a-log-pruned"]
    assert cli.main(argv) == 0
    assert "org/tiny" in capsys.readouterr().out
    state = prune_a_log_like_authors(tiny_state())
    ids = _ids()
    torch.testing.assert_close(
        MambaLM.from_pretrained(dst)(ids), authors_logits(state, ids), atol=1e-4, rtol=1e-4
    )

    # errors name the id and the failed lookup, exit 2 before any work
    for argv in (
        ["eval", "org/missing", "--data", str(corpus)],
        ["prune", "org/missing", "--calib", str(corpus), "--save", str(tmp_path / "x")],
        ["convert", "org/missing", "--out", str(tmp_path / "x")],
        ["eval", "org/tiny", "--revision", "v9", "--data", str(corpus)],
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not a local directory; the hub lookup" in err and "failed" in err, err
    assert not (tmp_path / "x").exists()


def test_cli_reads_the_hub_environment_variables(hub: FakeHub, tmp_path: Path) -> None:
    """A fresh process configured by HF_HUB_CACHE / HF_HUB_OFFLINE alone."""
    env = {**os.environ, **_offline_env(hub.cache), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "sparsessm_kernels", "convert", "org/tiny", "--out", str(tmp_path / "o")]
    done = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["src"] == "org/tiny"
    torch.testing.assert_close(
        MambaLM.from_pretrained(tmp_path / "o")(_ids()), MambaLM.from_pretrained(TINY_DIR)(_ids())
    )
    missing = subprocess.run(
        [*argv[:4], "org/missing", "--out", str(tmp_path / "p")], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "org/missing: not a local directory" in missing.stderr


# ---------------------------------------------------------------------- integrations
def test_read_sparsity_from_hub_ids(hub: FakeHub, tmp_path: Path) -> None:
    from sparsessm_kernels.integrations._common import read_sparsity

    model = MambaLM.from_pretrained(TINY_DIR)
    mask = torch.rand(256, 16, generator=torch.Generator().manual_seed(0)) < 0.5
    model.set_state_mask(1, mask)
    model.save_pretrained(tmp_path / "masked")
    hub.add("org/masked", COMMIT_MAIN, tmp_path / "masked", refs=("main",))

    for kwargs in (
        {"sparsity": "org/masked", "default_dir": None},
        {"sparsity": None, "default_dir": "org/masked"},
    ):
        masks, modes, source = read_sparsity(what="MambaForCausalLM", **kwargs)
        assert list(masks) == [a_log_name(1)] and torch.equal(masks[a_log_name(1)].mask, mask)
        assert modes == {a_log_name(1): "zero_transition"} and source.endswith("sparsity.safetensors")

    # a hub model without masks: dense; an explicit hub id without masks: an error
    masks, _, source = read_sparsity(None, "org/tiny", "MambaForCausalLM")
    assert masks == {} and "org/tiny has no sparsity.safetensors" in source
    with pytest.raises(FileNotFoundError, match="the Hub repository org/tiny is a directory without"):
        read_sparsity("org/tiny", None, "MambaForCausalLM")
    # a default id that cannot be looked up: dense, with a warning
    with pytest.warns(UserWarning, match="org/missing, whose sparsity.safetensors could not be looked up"):
        masks, _, source = read_sparsity(None, "org/missing", "MambaForCausalLM")
    assert masks == {} and "hub lookup of org/missing failed" in source
    with pytest.raises(HubLookupError):
        read_sparsity("org/missing", None, "MambaForCausalLM")
    with pytest.raises(FileNotFoundError, match=r"out/sparsity\.safetensors does not exist"):
        read_sparsity("out/sparsity.safetensors", None, "MambaForCausalLM")
