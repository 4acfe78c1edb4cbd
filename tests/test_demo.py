"""The embedded tiny Mamba checkpoint and ``sparsessm demo``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsessm_kernels import _threads, _timing, cli
from sparsessm_kernels.demo import DEMO_CASES, MODEL_DIR, heldout_tokens
from sparsessm_kernels.demo.run import axis_limits, format_demo_table, timing_fields
from sparsessm_kernels.models import MambaLM
from sparsessm_kernels.prune import evaluate_perplexity
from sparsessm_kernels.prune.config import METHODS

RESULT_KEYS = {
    "method",
    "pattern",
    "sparsity",
    "ppl",
    "backend",
    "dense_scan_ms",
    "scan_ms",
    "speedup",
    "speedup_range",
    "speedup_significant",
    "dense_scan_spread_ms",
    "scan_spread_ms",
    "max_abs_err_vs_reference",
}


def test_checkpoint_files_are_small_and_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "training_config.json", "loss_curve.json"} <= names
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 10 * 2**20
    training = json.loads((MODEL_DIR / "training_config.json").read_text(encoding="utf-8"))
    assert training["data"]["heldout_files"] and training["data"]["train_files"]
    assert not set(training["data"]["heldout_files"]) & set(training["data"]["train_files"])
    curve = json.loads((MODEL_DIR / "loss_curve.json").read_text(encoding="utf-8"))
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_checkpoint_perplexity_well_below_uniform():
    model = MambaLM.from_pretrained(MODEL_DIR)
    assert model.config.vocab_size == 256
    assert model.config.d_state == 16
    tokens = heldout_tokens()
    result = evaluate_perplexity(model, tokens, 256, batch_size=4, max_windows=8)
    assert result["ppl"] < 16.0  # uniform over bytes would be 256


def test_demo_cases_use_cli_names():
    for method, pattern in DEMO_CASES:
        assert method in METHODS
        assert pattern in ("unstructured", "2:4", "column")


def test_demo_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--out",
        "--device",
        "--seqlen",
        "--nsamples",
        "--quick",
        "--scan-seqlen",
        "--plot",
        "--threads",
    ):
        assert flag in text


def test_demo_quick_writes_valid_report(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    threads_before = torch.get_num_threads()
    code = cli.main(["demo", "--quick", "--device", "cpu", "--threads", "1", "--out", str(out)])
    assert code == 0
    assert torch.get_num_threads() == threads_before  # the demo's choice does not outlive it
    captured = capsys.readouterr()
    printed = captured.out
    assert "sparsessm" in printed and "magnitude" in printed
    assert ", 1 thread)" in printed  # the device line, singular
    assert "torch CPU threads: 1 (as requested" in captured.err
    report = json.loads((out / "demo_report.json").read_text(encoding="utf-8"))
    assert {"model", "device", "dense_ppl", "results", "threads"} <= set(report)
    assert report["threads"] == {"count": 1, "reason": "as requested"}
    assert 1.0 < report["dense_ppl"] < 256.0
    assert [(r["method"], r["pattern"]) for r in report["results"]] == list(DEMO_CASES)
    for row in report["results"]:
        assert set(row) >= RESULT_KEYS
        assert row["sparsity"] == pytest.approx(0.5, abs=1e-6)
        assert 1.0 < row["ppl"] < 256.0
        assert row["max_abs_err_vs_reference"] < 1e-3
        assert row["dense_scan_ms"] > 0 and row["scan_ms"] > 0 and row["speedup"] > 0
        for key in ("dense_scan", "scan"):
            spread = row[f"{key}_spread_ms"]
            assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
            assert spread["median"] == row[f"{key}_ms"] and spread["n"] == 5  # --quick: 5 repeats
        low, high = row["speedup_range"]
        assert low <= row["speedup"] <= high
        assert row["speedup_significant"] == (low > 1 or high < 1)
        shown = "not significant" if not row["speedup_significant"] else f"{row['speedup']:.2f}x"
        assert shown in printed
    assert not list(out.glob(".*.tmp"))  # atomic write left no temp file


def test_demo_rejects_bad_out(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert cli.main(["demo", "--quick", "--out", str(blocker)]) == 2
    assert "demo" in capsys.readouterr().err
    assert cli.main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2  # checked before any work
    assert f"--out: cannot create {blocker / 'sub'}: {blocker} is not a directory" in capsys.readouterr().err


def test_demo_rejects_bad_threads(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--quick", "--threads", "0", "--out", str(tmp_path / "d")])
    assert "--threads" in capsys.readouterr().err
    from sparsessm_kernels.demo import DemoOptions

    with pytest.raises(ValueError, match="threads"):
        DemoOptions.quick(threads=0, out=str(tmp_path / "d")).validate()


# ------------------------------------------------------------------ thread choice
@pytest.mark.parametrize(
    ("cores", "cpus", "busy", "want"),
    [
        (2, 2, 0.05, 2),  # idle 2-core machine
        (2, 2, 1.0, 1),  # one core kept busy by another process
        (2, 2, 0.6, 1),  # a CPU counts as free only when at least 75% idle
        (2, 2, 2.0, 1),  # everything busy: still one thread
        (2, 2, None, 2),  # load unknown
        (16, 16, 0.0, _threads.MAX_AUTO_THREADS),  # capped
        (4, 8, 1.0, 4),  # SMT: one thread per physical core, the busy CPU's sibling still runs
        (1, 1, 0.0, 1),
    ],
)
def test_auto_threads_rule(cores, cpus, busy, want):
    assert _threads.auto_threads(cores, cpus, busy) == want


def _proc_stat(rows: dict[int, tuple[int, int]]) -> str:
    """A ``/proc/stat`` with ``cpuN user nice system idle iowait irq softirq steal guest guest_nice``."""
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    lines += [f"cpu{c} {busy} 0 0 {idle} 0 0 0 0 0 0" for c, (busy, idle) in rows.items()]
    return "\n".join([*lines, "intr 12345", "ctxt 678"]) + "\n"


def test_busy_cpus_reads_proc_stat(tmp_path: Path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text(_proc_stat({0: (100, 900), 1: (500, 500)}))
    after = _proc_stat({0: (200, 900), 1: (510, 590)})  # cpu0 fully busy, cpu1 10% busy
    monkeypatch.setattr(_threads.time, "sleep", lambda seconds: stat.write_text(after))
    assert _threads.busy_cpus([0, 1], 0.2, stat) == pytest.approx(1.1)
    assert _threads.busy_cpus([0, 7], 0.2, stat) is None  # a CPU missing from the file
    assert _threads.busy_cpus([0], 0.2, tmp_path / "missing") is None


def test_physical_cores_counts_smt_siblings_once(tmp_path: Path):
    for cpu, core in [(0, 0), (1, 1), (2, 0), (3, 1)]:  # cpu2/cpu3: siblings of cpu0/cpu1
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{core}\n")
    assert _threads.physical_cores([0, 1, 2, 3], tmp_path) == 2
    assert _threads.physical_cores([0, 2], tmp_path) == 1
    assert _threads.physical_cores([0, 9], tmp_path) == 2  # unreadable topology: one per CPU


def test_choose_threads(monkeypatch):
    assert _threads.choose_threads(3) == _threads.ThreadChoice(3, "as requested")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            _threads.choose_threads(bad)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    kept = _threads.choose_threads()
    assert kept.threads == torch.get_num_threads() and "OMP_NUM_THREADS=1" in kept.reason
    monkeypatch.delenv("OMP_NUM_THREADS")
    auto = _threads.choose_threads(probe_seconds=0.05)
    assert 1 <= auto.threads <= min(_threads.MAX_AUTO_THREADS, len(_threads.allowed_cpus()))
    assert auto.reason.startswith("automatic")
    assert _threads.describe(1) == "1 thread" and _threads.describe(4) == "4 threads"


# ------------------------------------------------------------------ spreads and speedups
def test_spread_quartiles():
    s = _timing.spread([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.min, s.q1, s.median, s.q3, s.max, s.n) == (1.0, 2.0, 3.0, 4.0, 5.0, 5)
    assert s.format() == "3.00 (2.00-4.00)"
    one = _timing.spread([7.0])
    assert one.q1 == one.median == one.q3 == 7.0 and one.n == 1
    with pytest.raises(ValueError):
        _timing.spread([])


@pytest.mark.parametrize(
    ("dense", "sparse", "significant"),
    [
        ([10, 10.5, 11, 11.5, 12], [5, 5.5, 6, 6.5, 7], True),  # clearly faster
        ([5, 5.5, 6, 6.5, 7], [10, 10.5, 11, 11.5, 12], True),  # clearly slower
        ([10, 11, 12, 13, 14], [9, 10, 11, 12, 13], False),  # quartile ranges overlap
        ([10, 12], [5, 6], False),  # too few samples to judge
    ],
)
def test_speedup_significance(dense, sparse, significant):
    speedup = _timing.compare(_timing.spread(dense), _timing.spread(sparse))
    assert speedup is not None and speedup.significant is significant
    assert speedup.low <= speedup.ratio <= speedup.high
    assert speedup.format() == (f"{speedup.ratio:.2f}x" if significant else "not significant")
    row = timing_fields(_timing.spread(dense), _timing.spread(sparse))
    assert row["speedup_significant"] is significant and row["speedup_range"] == [speedup.low, speedup.high]


def test_time_interleaved_alternates_order():
    calls: list[str] = []
    spreads = _timing.time_interleaved([lambda: calls.append("a"), lambda: calls.append("b")], 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a b / b a / a b
    assert [s.n for s in spreads] == [3, 3]
    with pytest.raises(ValueError, match="repeats"):
        _timing.time_interleaved([lambda: None], 0)


def _report(rows: list[tuple[float, list[float], list[float]]]) -> dict:
    """A demo report with one result row per ``(ppl, dense samples, sparse samples)``."""
    results = []
    for (method, pattern), (ppl, dense, sparse) in zip(DEMO_CASES, rows):
        results.append(
            {
                "method": method,
                "pattern": pattern,
                "sparsity": 0.5,
                "ppl": ppl,
                "backend": "torch",
                "max_abs_err_vs_reference": 1e-6,
                **timing_fields(_timing.spread(dense), _timing.spread(sparse)),
            }
        )
    return {
        "model": {"name": "tiny", "params": 1000, "n_layer": 4},
        "device": "cpu (test, 1 thread)",
        "dense_ppl": 4.394,
        "results": results,
        "settings": {"repeats": 5},
        "scan_shape": {"d_inner": 256, "d_state": 16, "seqlen": 2048},
    }


SPREAD_ROWS = [
    (4.391, [10, 11, 12, 13, 14], [9, 10, 11, 12, 13]),
    (4.403, [10, 10.5, 11, 11.5, 12], [5, 5.5, 6, 6.5, 7]),
    (4.400, [10, 11, 12, 13, 14], [11, 12, 13, 14, 15]),
    (4.674, [10, 10.5, 11, 11.5, 12], [10, 10.5, 11, 11.5, 12]),
    (4.558, [5, 5.5, 6, 6.5, 7], [10, 10.5, 11, 11.5, 12]),
]


def test_demo_table_prints_spread_and_significance():
    table = format_demo_table(_report(SPREAD_ROWS))
    lines = {line.split()[0] + " " + line.split()[1]: line for line in table.splitlines()[3:]}
    assert "12.00 (11.00-13.00)" in lines["sparsessm unstructured"]
    assert "not significant" in lines["sparsessm unstructured"]
    assert "1.83x" in lines["sparsessm 2:4"] and "not significant" not in lines["sparsessm 2:4"]
    assert "not significant" in lines["magnitude unstructured"]
    assert "0.55x" in lines["magnitude 2:4"]  # significantly slower is still reported


def test_ppl_axis_limits_do_not_start_at_zero():
    low, high = axis_limits([4.394, 4.391, 4.674])
    assert 4.0 < low < 4.391 and 4.674 < high < 5.0
    assert (4.674 - 4.391) / (high - low) > 0.5  # the differences fill most of the axis
    low, high = axis_limits([2.0, 2.0])
    assert low < 2.0 < high
    assert axis_limits([0.1, 3.0], floor=0.0)[0] == 0.0  # speedups: never below 0


def test_demo_figure_axes_around_the_data():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsessm_kernels.demo.run import demo_figure

    fig = demo_figure(_report(SPREAD_ROWS))
    try:
        ax_ppl, ax_speed = fig.axes
        low, high = ax_ppl.get_ylim()
        assert 4.0 < low < 4.391 and 4.674 < high < 5.0
        texts = {t.get_text() for t in ax_ppl.texts}
        assert {"4.391", "4.403", "4.674"} <= texts
        speed_texts = " ".join(t.get_text() for t in ax_speed.texts)
        assert "1.83x" in speed_texts and "n.s." in speed_texts
        s_low, s_high = ax_speed.get_ylim()
        assert 0 <= s_low < 1.0 < s_high
    finally:
        plt.close(fig)
