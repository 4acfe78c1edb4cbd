"""Tests of ``sparsessm prune`` / ``sparsessm eval`` and the data helpers behind them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsessm_kernels import cli
from sparsessm_kernels.models import MambaLM, MambaLMConfig
from sparsessm_kernels.prune import (
    DataError,
    calibration_windows,
    evaluate_perplexity,
    load_tokenizer,
    load_tokens,
)
from sparsessm_kernels.prune.data import check_text_source

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT_VALID = ROOT.parent / "shared" / "data" / "wikitext-2" / "valid.txt"


def _model_dir(tmp_path: Path, vocab: int = 260, name: str = "model") -> Path:
    cfg = MambaLMConfig(vocab_size=vocab, d_model=16, n_layer=2, d_state=8, dt_rank=4)
    model = MambaLM.from_config(cfg, seed=0)
    with torch.no_grad():
        model.backbone.embeddings.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    out = tmp_path / name
    model.save_pretrained(out)
    return out


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text((ROOT / "docs" / "semantics.md").read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _prune_args(model_dir: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "prune",
        str(model_dir),
        "--calib",
        str(corpus),
        "--nsamples",
        "4",
        "--seqlen",
        "24",
        "--batch-size",
        "2",
        "--save",
        str(out),
        "--no-progress",
        *extra,
    ]


# ---------------------------------------------------------------------- prune end to end
def test_prune_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    model_dir, corpus = _model_dir(tmp_path), _corpus(tmp_path)
    out, stock = tmp_path / "out", tmp_path / "stock"
    argv = _prune_args(
        model_dir,
        corpus,
        out,
        "--targets",
        "all",
        "--eval",
        str(corpus),
        "--eval-max-windows",
        "3",
        "--export-stock",
        str(stock),
    )
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "A_log" in printed and "in_proj" in printed and "perplexity" in printed
    report = json.loads((out / "prune_report.json").read_text())
    assert report["format"] == "sparsessm-prune-report"
    s = report["settings"]
    assert (s["method"], s["targets"], s["pattern"], s["sparsity"], s["alpha"]) == (
        "sparsessm",
        "all",
        "unstructured",
        0.5,
        0.04,
    )
    assert (s["nsamples"], s["seqlen"], s["tokenizer"]) == (4, 24, "bytes")
    kinds = [m["kind"] for m in report["modules"]]
    assert kinds == ["in_proj", "x_proj", "dt_proj", "A_log", "out_proj"] * 2
    for m in report["modules"]:
        if m["kind"] in ("A_log", "x_proj", "dt_proj"):
            assert m["sparsity"] == 0.5
    assert report["summary"]["total"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert set(report["allocation"]) == {
        f"backbone.layers.{i}.mixer.{k}" for i in range(2) for k in ("in_proj", "out_proj")
    }
    timings = report["timings_s"]
    phases = ["load", "data", "eval_before", "capture", "sensitivity", "statistics", "prune", "forward"]
    phases += ["eval_after", "save", "export", "other"]
    assert [k for k in timings if k not in ("total", "layers")] == phases  # every phase, in run order
    assert all(timings[k] >= 0 for k in phases)
    assert sum(timings[k] for k in phases) == pytest.approx(timings["total"], abs=1e-3)
    time_line = next(line for line in printed.splitlines() if line.startswith("time: "))
    for phase in ("load", "data", "eval_before", "statistics", "forward", "eval_after", "save", "export"):
        assert f" {phase} " in time_line, (phase, time_line)
    assert time_line.rstrip().endswith(f"total {timings['total']:.2f}s")
    ppl = report["perplexity"]
    assert ppl["before"]["tokens"] == ppl["after"]["tokens"] == 3 * 23
    assert ppl["before"]["ppl"] != ppl["after"]["ppl"]

    loaded = MambaLM.from_pretrained(out)
    assert set(loaded.state_masks()) == {f"backbone.layers.{i}.mixer.A_log" for i in range(2)}
    tokens = load_tokens(str(corpus), _bytes_tokenizer())
    assert evaluate_perplexity(loaded, tokens, 24, max_windows=3)["ppl"] == pytest.approx(
        ppl["after"]["ppl"], rel=1e-5
    )
    hf = transformers.MambaForCausalLM.from_pretrained(stock).eval()
    ids = tokens[:30][None]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, loaded(ids), atol=1e-4, rtol=1e-4)


def _bytes_tokenizer():
    from sparsessm_kernels.prune import ByteTokenizer

    return ByteTokenizer()


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        (["--pattern", "2:4", "--method", "sparsegpt", "--targets", "ffn", "--conv1d"], "nm"),
        (["--pattern", "column", "--sparsity", "0.5", "--aggregation", "vote"], "column"),
        (["--method", "wanda", "--include", r"layers\.1\.", "--score", "a_log"], "include"),
    ],
)
def test_prune_cli_variants(tmp_path: Path, extra: list[str], check: str) -> None:
    model_dir, corpus, out = _model_dir(tmp_path), _corpus(tmp_path), tmp_path / "out"
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main([*_prune_args(model_dir, corpus, out), "--json", *extra]) == 0
    report = json.loads((out / "prune_report.json").read_text())
    loaded = MambaLM.from_pretrained(out)
    if check == "nm":
        assert {m["kind"] for m in report["modules"]} == {
            "in_proj",
            "conv1d",
            "x_proj",
            "dt_proj",
            "out_proj",
        }
        assert report["settings"]["alpha"] == 0.0 and all(m["sparsity"] == 0.5 for m in report["modules"])
        w = loaded.mixer(0).in_proj.weight
        assert bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) == 2).all())
    elif check == "column":
        assert report["model"]["d_state_after"] == [4, 4]
        assert [m["d_state"] for m in report["modules"]] == [4, 4]
        assert all(loaded.mixer(i).d_state == 4 and loaded.mixer(i).layout is None for i in range(2))
    else:
        assert [m["name"] for m in report["modules"]] == ["backbone.layers.1.mixer.A_log"]
        assert set(loaded.state_masks()) == {"backbone.layers.1.mixer.A_log"}


def test_prune_cli_booleans_are_real(tmp_path: Path) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["prune", "m", "--save", "o", "--conv1d", "--no-progress", "--no-eval-before"])
    assert args.conv1d is True and args.progress is False and args.eval_before is False
    args = parser.parse_args(["prune", "m", "--save", "o"])
    assert args.conv1d is False and args.progress is True and args.eval_before is True
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "m", "--save", "o", "--conv1d", "False"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "1.0"], "sparsity: expected a fraction in [0, 1)"),
        (["--sparsity", "-0.1"], "sparsity: expected a fraction in [0, 1)"),
        (["--pattern", "2:4", "--sparsity", "0.3"], "prunes exactly 1 - 2/4 = 0.5"),
        (["--pattern", "column", "--sparsity", "0.95"], "would remove every one of the 8 states"),
        (["--pattern", "column", "--targets", "all"], "'column' removes whole SSM states"),
        (["--pattern", "3:5"], "not a multiple of M=5"),
        (["--pattern", "banana"], "pattern"),
        (["--alpha", "-1"], "alpha"),
        (["--include", "("], "invalid regular expression"),
    ],
)
def test_prune_cli_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    model_dir, corpus, out = _model_dir(tmp_path), _corpus(tmp_path), tmp_path / "out"
    assert cli.main([*_prune_args(model_dir, corpus, out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsessm prune: error:") and message in err
    assert not out.exists()


def test_prune_cli_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, corpus, out = _model_dir(tmp_path), _corpus(tmp_path), tmp_path / "out"
    cases = [
        (_prune_args(tmp_path / "missing", corpus, out), "model directory not found"),
        (_prune_args(tmp_path, corpus, out), "config.json not found"),
        (_prune_args(model_dir, tmp_path / "nope.txt", out), "neither an existing text file"),
        (_prune_args(model_dir, corpus, model_dir), "must differ from MODEL_DIR"),
        ([*_prune_args(model_dir, corpus, out), "--eval", str(tmp_path / "nope.txt")], "--eval"),
        ([*_prune_args(model_dir, corpus, out), "--export-stock", str(out)], "export-stock"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*_prune_args(model_dir, corpus, out), "--device", "cuda"], "no CUDA device"))
    try:
        import datasets  # noqa: F401
    except ImportError:
        cases.append((_prune_args(model_dir, "wikitext2", out), "needs the Hugging Face 'datasets' package"))
    for argv, message in cases:
        assert cli.main([str(a) for a in argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert not out.exists()
    small = _model_dir(tmp_path, vocab=100, name="small")
    assert cli.main(_prune_args(small, corpus, out)) == 2
    assert "too small for the UTF-8 byte fallback" in capsys.readouterr().err


# ---------------------------------------------------------------------- output locations
@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a prune run gets as far as loading the model."""

    def loading(*args, **kwargs):
        raise AssertionError("the run started working before rejecting its output location")

    monkeypatch.setattr("sparsessm_kernels.prune.run.MambaLM.from_pretrained", loading)


def test_prune_cli_output_checks_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_work: None
) -> None:
    model_dir, corpus = _model_dir(tmp_path), _corpus(tmp_path)
    out, stock = tmp_path / "out", tmp_path / "stock"
    out.mkdir()
    (out / "keep.txt").write_text("a previous model", encoding="utf-8")
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    cases = [
        (
            _prune_args(model_dir, corpus, out),
            f"--save: {out} already exists and is not empty (keep.txt); pass --overwrite to replace it",
        ),
        (_prune_args(model_dir, corpus, afile), f"--save: {afile} exists and is not a directory"),
        (_prune_args(model_dir, corpus, afile / "o"), f"--save: cannot create {afile / 'o'}: "),
        (_prune_args(model_dir, corpus, tmp_path), f"--save: {tmp_path} contains MODEL_DIR"),
        (
            [*_prune_args(model_dir, corpus, stock), "--export-stock", str(out)],
            f"--export-stock: {out} already exists and is not empty",
        ),
        (
            [*_prune_args(model_dir, corpus, stock), "--export-stock", str(stock / "inner")],
            "must be separate directories",
        ),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("sparsessm prune: error: ") and message in err, (message, err)
    assert (out / "keep.txt").read_text(encoding="utf-8") == "a previous model"
    assert not stock.exists() and not (afile.parent / "o").exists()


def test_prune_cli_overwrite_replaces_the_whole_directory(tmp_path: Path) -> None:
    model_dir, corpus = _model_dir(tmp_path), _corpus(tmp_path)
    out, stock = tmp_path / "out", tmp_path / "stock"
    for d in (out, stock):
        d.mkdir()
        (d / "sparsity.safetensors").write_text("stale masks of another model", encoding="utf-8")
    argv = [*_prune_args(model_dir, corpus, out), "--export-stock", str(stock), "--overwrite", "--json"]
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "prune_report.json",
        "sparsity.safetensors",
    ]
    assert sorted(p.name for p in stock.iterdir()) == ["config.json", "model.safetensors"]
    assert set(MambaLM.from_pretrained(out).state_masks()) == {
        f"backbone.layers.{i}.mixer.A_log" for i in range(2)
    }
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_prune_cli_interrupted_leaves_no_partial_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """Interrupted after the model files are staged (writing the report): neither output appears,
    a replaced directory keeps its old contents, and nothing is left behind."""
    model_dir, corpus = _model_dir(tmp_path), _corpus(tmp_path)
    out, stock = tmp_path / "out", tmp_path / "stock"
    if existing:
        for d in (out, stock):
            d.mkdir()
            (d / "old.txt").write_text("old", encoding="utf-8")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("sparsessm_kernels.prune.run.write_report", interrupted)
    argv = [*_prune_args(model_dir, corpus, out), "--export-stock", str(stock), "--overwrite"]
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main(argv) == cli.INTERRUPTED_EXIT_CODE
    assert "interrupted" in capsys.readouterr().err
    for d in (out, stock):
        assert ([p.name for p in d.iterdir()] == ["old.txt"]) if existing else not d.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_prune_cli_subprocess_stderr_is_clean(tmp_path: Path) -> None:
    """As a user sees it with stderr redirected to a file: the tokenizer warning without a source
    line, and progress as a few whole lines instead of one per update."""
    import os
    import subprocess
    import sys

    model_dir, corpus, out = _model_dir(tmp_path), _corpus(tmp_path), tmp_path / "out"
    argv = [a for a in _prune_args(model_dir, corpus, out) if a != "--no-progress"]
    # the evaluation batch is one window: 40 updates of each perplexity bar
    argv += ["--eval", str(corpus), "--eval-seqlen", "8", "--eval-max-windows", "40"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SPARSESSM_PROGRESS_INTERVAL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "sparsessm_kernels", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "sparsessm prune: warning: " in err and "UTF-8 bytes" in err
    assert "load_tokenizer(" not in err and "warnings.warn" not in err  # no source line
    assert "\r" not in err
    lines = err.splitlines()
    assert 2 <= sum(line.startswith("perplexity: ") for line in lines) <= 4, err  # before + after
    assert 1 <= sum(line.startswith("pruning layers: ") for line in lines) <= 2, err


# ---------------------------------------------------------------------- eval
def test_eval_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir, corpus = _model_dir(tmp_path), _corpus(tmp_path)
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        argv = [
            "eval",
            str(model_dir),
            "--data",
            str(corpus),
            "--seqlen",
            "32",
            "--max-windows",
            "3",
            "--json",
        ]
        assert cli.main([*argv, "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    p = result["perplexity"]
    assert (p["tokens"], p["windows"], p["seqlen"], result["tokenizer"]) == (3 * 31, 3, 32, "bytes")
    tokens = load_tokens(str(corpus), _bytes_tokenizer())
    expected = evaluate_perplexity(MambaLM.from_pretrained(model_dir), tokens, 32, max_windows=3)
    assert p["ppl"] == pytest.approx(expected["ppl"], rel=1e-6)
    assert cli.main(["eval", str(tmp_path / "missing"), "--data", str(corpus)]) == 2
    assert "model directory not found" in capsys.readouterr().err
    from sparsessm_kernels.prune.evaluate import lm_eval_available

    if not lm_eval_available():
        assert cli.main(["eval", str(model_dir), "--data", str(corpus), "--tasks", "piqa"]) == 2
        assert "need lm-eval" in capsys.readouterr().err


@pytest.mark.skipif(not WIKITEXT_VALID.is_file(), reason="shared WikiText-2 data not present")
def test_eval_wikitext_valid_byte_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = _model_dir(tmp_path, vocab=256)
    argv = ["eval", str(model_dir), "--data", str(WIKITEXT_VALID), "--seqlen", "128", "--max-windows", "4"]
    with pytest.warns(UserWarning, match="UTF-8 bytes"):
        assert cli.main([*argv, "--json", "--no-progress"]) == 0
    p = json.loads(capsys.readouterr().out)["perplexity"]
    assert (
        p["tokens"] == 4 * 127
        and 1.0 < p["ppl"] < 1e4
        and p["mean_nll"] == pytest.approx(torch.tensor(p["ppl"]).log().item())
    )


# ---------------------------------------------------------------------- data
def test_data_sources_and_windows(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    check_text_source(str(corpus))
    with pytest.raises(DataError, match="neither an existing text file"):
        check_text_source("nothing-like-this")
    with pytest.raises(DataError, match="not a file"):
        check_text_source(str(tmp_path))
    tokens = load_tokens(str(corpus), _bytes_tokenizer())
    assert tokens.dtype == torch.long and int(tokens.max()) < 256
    a = calibration_windows(tokens, 5, 20, seed=3)
    assert a.shape == (5, 20) and torch.equal(a, calibration_windows(tokens, 5, 20, seed=3))
    assert not torch.equal(a, calibration_windows(tokens, 5, 20, seed=4))
    text = corpus.read_text(encoding="utf-8").encode("utf-8")
    for row in a.tolist():  # every window is a contiguous slice of the text
        assert bytes(row) in text
    with pytest.raises(DataError, match="fewer than seqlen"):
        calibration_windows(tokens[:10], 1, 20)


def test_hf_tokenizer_from_model_dir(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<unk>", "the", "state", "scan", "mask", "a", "of"]
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path, vocab_size=20)
    assert loaded.name.startswith("hf:") and loaded.encode("the scan of a mask") == [1, 3, 6, 5, 4]
    with pytest.raises(DataError, match="only 5"):
        load_tokenizer(tmp_path, vocab_size=5)


def test_zero_shot_adapter_with_fake_lm_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lm-eval adapter (run against a stand-in lm_eval module): trailing context spaces move to
    the continuation, an empty context gets a prefix token, results come back per task."""
    import sys
    import types

    from sparsessm_kernels.prune import zero_shot

    seen: dict[str, object] = {}

    class LM:
        pass

    class Req:
        def __init__(self, *args: str) -> None:
            self.args = args

    def simple_evaluate(model, tasks, num_fewshot, limit):
        seen["ll"] = model.loglikelihood([Req("The cat ", "sat"), Req("", "abc")])
        seen["rolling"] = model.loglikelihood_rolling([Req("hello world")])
        return {"results": {t: {"acc,none": 0.5} for t in tasks}}

    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = simple_evaluate  # type: ignore[attr-defined]
    api = types.ModuleType("lm_eval.api")
    api_model = types.ModuleType("lm_eval.api.model")
    api_model.LM = LM  # type: ignore[attr-defined]
    for name, mod in (("lm_eval", fake), ("lm_eval.api", api), ("lm_eval.api.model", api_model)):
        monkeypatch.setitem(sys.modules, name, mod)
    model = MambaLM.from_config(MambaLMConfig(vocab_size=260, d_model=16, n_layer=1, d_state=4), seed=0)
    out = zero_shot(model, _bytes_tokenizer(), ["piqa"], max_length=64)
    assert out == {"piqa": {"acc,none": 0.5}}
    ll = seen["ll"]
    assert len(ll) == 2 and all(isinstance(v, float) and v < 0 and isinstance(g, bool) for v, g in ll)
    from sparsessm_kernels.prune import score_continuations

    expected = score_continuations(model, [(list(b"The cat"), list(b" sat")), ([10], list(b"abc"))])
    assert ll[0][0] == pytest.approx(expected[0][0], abs=1e-5) and ll[1][0] == pytest.approx(
        expected[1][0], abs=1e-5
    )
    assert isinstance(seen["rolling"][0], float)
