"""`pda-repro figures` draws from results/ only: synthetic CSVs in, PNGs and a README with the paper's
numbers beside ours out — and nothing is recomputed."""

from __future__ import annotations

import numpy as np
import pytest

from pda_repro.bench import approximation_figures, figure_data, results_readme
from pda_repro.bench import figures as FG
from pda_repro.bench.results import ResultStore, atomic_save_npz

ENV = "cpu-test-2c"


def _meta():
    return {
        "cpu_model": "Test CPU",
        "logical_cores": 2,
        "torch": "2.x",
        "date": "2024-01-01T00:00:00+00:00",
        "git_commit": "abc",
        "load_average_1_5_15": [1.0, 1.0, 1.0],
    }


@pytest.fixture
def results(tmp_path, rng):
    store = ResultStore(tmp_path, ENV)
    for backend, ms in (("caffe", 900.0), ("torch", 700.0)):
        store.write_cell(
            "table1",
            {"model": "alexnet", "backend": backend, "device": "cpu", "batch": 160},
            [
                {
                    "weights": "random (seeded fillers, seed 0)",
                    "input_shape": "3x227x227",
                    "median_ms": ms,
                    "iqr_ms": 10.0,
                    "min_ms": ms - 20,
                    "max_ms": ms + 30,
                    "mean_ms": ms,
                    "std_ms": 5.0,
                    "repeats": 5,
                    "ms_per_image": ms / 160,
                    "rss_before_mib": 500.0,
                    "peak_rss_mib": 1500.0,
                    "cuda_peak_mib": None,
                    "memory_method": "VmHWM after clear_refs",
                    "paper_k80_ms": 342.0,
                }
            ],
            _meta(),
        )
        for method, total in (("pda", 4000.0), ("epda", 400.0)):
            store.write_cell(
                "fig12",
                {
                    "model": "alexnet",
                    "backend": backend,
                    "device": "cpu",
                    "method": method,
                    "profile": "quick",
                    "batch": 160,
                },
                [
                    {
                        "window": 10,
                        "outer": 18,
                        "samples": 10 if method == "pda" else 1,
                        "stride": 1,
                        "weights": "random",
                        "image": "chelsea",
                        "explained_class": 285,
                        "windows_total": 47524,
                        "windows_evaluated": 80 if method == "pda" else 800,
                        "extrapolated": True,
                        "extrapolated_from_windows": 80 if method == "pda" else 800,
                        "total_seconds": total,
                        "sampling_seconds": total * 0.05,
                        "forward_seconds": total * 0.9,
                        "other_seconds": total * 0.05,
                        "measured_seconds": 7.0,
                        "measured_sampling_seconds": 0.3,
                        "measured_forward_seconds": 6.0,
                        "forward_passes_measured": 6,
                        "forward_passes_total": 2971,
                        "images_forwarded_total": 475240,
                        "sampler_setup_seconds": 3.0,
                    }
                ],
                _meta(),
            )
    means = {"ip1__mean": rng.normal(size=500), "ip1__std": rng.uniform(0, 1, 500)}
    atomic_save_npz(store.dir / "fig9_10" / "mnist_torch_cpu.npz", **means)
    store.write_cell(
        "fig9_10",
        {
            "model": "mnist",
            "backend": "torch",
            "device": "cpu",
            "weights": "mnist.caffemodel",
            "profile": "paper",
        },
        [
            {
                "weights": "mnist.caffemodel (sha256 12345678)",
                "layer": "ip1",
                "samples": 160,
                "window": 4,
                "outer": 12,
                "window_row": 0,
                "window_col": 0,
                "image": "mnist-test-0",
                "neurons": 500,
                "median_abs_mean": 0.5,
                "median_std": 0.01,
                "max_std": 0.1,
                "median_abs_mean_over_std": 50.0,
                "fraction_std_below_abs_mean": 0.9,
                "data_file": "fig9_10/mnist_torch_cpu.npz",
            }
        ],
        _meta(),
    )
    store.write_cell(
        "fig11",
        {"model": "mnist", "backend": "torch", "device": "cpu", "weights": "w", "profile": "paper"},
        [
            {
                "weights": "mnist.caffemodel (sha256 12345678)",
                "image_index": i,
                "image": f"d{i}",
                "window": 4,
                "outer": 12,
                "window_row": 12,
                "window_col": 12,
                "am_samples": 500,
                "class": 1,
                "p_image": 0.9,
                "am": 0.8,
                "ngm": 0.8 + d,
                "abs_am_minus_ngm": abs(d),
                "ngm_of_sampled_logits": 0.8,
                "abs_am_minus_ngm_of_sampled_logits": 0.0,
            }
            for i, d in enumerate(rng.normal(0, 0.01, 200))
        ],
        {**_meta(), "images": "the first 200 MNIST test digits"},
    )
    curve = np.abs(rng.normal(0, 0.1, 50)) / np.arange(1, 51)
    store.write_cell(
        "fig16",
        {"model": "mnist", "backend": "torch", "device": "cpu", "weights": "w", "profile": "paper"},
        [
            {
                "weights": "random (seeded fillers, seed 0)",
                "image": "d0",
                "class": 1,
                "window": 4,
                "outer": 12,
                "window_row": 12,
                "window_col": 12,
                "repeats": 3,
                "S": s + 1,
                "p_epda": 0.5,
                "p_pda_run0": 0.5 + curve[s],
                "abs_diff_run0": curve[s],
                "abs_diff_median": curve[s],
                "abs_diff_q1": curve[s] / 2,
                "abs_diff_q3": curve[s] * 2,
            }
            for s in range(50)
        ],
        _meta(),
    )
    return tmp_path


def test_render_all_from_results_only(results, monkeypatch):
    import pda_repro.backends as backends

    def no_recompute(*args, **kwargs):
        raise AssertionError("figures must not run a net")

    monkeypatch.setattr(backends, "load_backend", no_recompute)
    done = FG.render_all(results)
    names = sorted(p.name for p in done.figures)
    assert names == sorted(
        [
            f"table1_{ENV}.png",
            f"fig12_{ENV}.png",
            f"fig12_{ENV}_log.png",
            f"fig9_10_mnist_{ENV}.png",
            f"fig11_mnist_{ENV}.png",
            f"fig16_mnist_{ENV}.png",
        ]
    )
    for p in done.figures:
        assert p.parent == results / "figures" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (results / "README.md").read_text()
    # the paper's numbers with their setting, and ours with theirs
    for text in (
        "342",
        "3301",
        "634",
        "Tesla K80, batch 160",
        "501,760",
        "10×",
        "900.0",
        "700.0",
        "extrapolated from 80 of 47524 windows",
        "10.0x",
        "Test CPU",
        "the first 200 MNIST test digits",
        "mnist.caffemodel (sha256 12345678)",
    ):
        assert text in readme, text


def test_random_weights_are_flagged_on_the_figure(results, monkeypatch):
    titles: list[str] = []
    import matplotlib.figure

    original = matplotlib.figure.Figure.suptitle

    def spy(self, t, *a, **k):
        titles.append(t)
        return original(self, t, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", spy)
    frame = figure_data.read_frame(results / ENV, "fig9_10")
    frame.loc[:, "weights"] = "random (seeded fillers, seed 0)"
    approximation_figures.plot_fig9_10(frame, results / ENV, "mnist", results / "figures")
    assert any("RANDOM WEIGHTS" in t for t in titles)


def test_empty_results_render_nothing(tmp_path):
    done = FG.render_all(tmp_path)
    assert done.figures == [] and (tmp_path / "README.md").is_file()


def test_cli_figures_and_benchmark_errors(results, capsys):
    from pda_repro.cli import main

    assert main(["figures", "--results", str(results)]) == 0
    assert (results / "figures" / f"fig12_{ENV}_log.png").is_file()
    assert (
        main(["benchmark", "run", "--model", "alexnet", "--experiments", "table2", "--results", str(results)])
        == 2
    )
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["benchmark", "run", "--model", "alexnt", "--results", str(results)]) == 2
    assert "alexnet" in capsys.readouterr().err  # suggests the close name
    assert main(["benchmark", "run", "--model", "all", "--weights", __file__, "--results", str(results)]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_paper_profile_rows_are_preferred_over_quick():
    import pandas as pd

    frame = pd.DataFrame(
        [
            {
                "model": "alexnet",
                "backend": "torch",
                "device": "cpu",
                "method": "pda",
                "profile": "quick",
                "batch": 160,
                "t": 1,
            },
            {
                "model": "alexnet",
                "backend": "torch",
                "device": "cpu",
                "method": "pda",
                "profile": "paper",
                "batch": 160,
                "t": 2,
            },
            {
                "model": "alexnet",
                "backend": "torch",
                "device": "cpu",
                "method": "pda",
                "profile": "paper",
                "batch": 80,
                "t": 3,
            },
            {
                "model": "vgg16",
                "backend": "torch",
                "device": "cpu",
                "method": "pda",
                "profile": "quick",
                "batch": 160,
                "t": 4,
            },
        ]
    )
    one = figure_data.one_per_cell(frame, ["model", "backend", "device", "method"])
    assert sorted(one["t"]) == [2, 4]
    many = figure_data.best_profile_rows(frame, ["model", "backend", "device"])
    assert sorted(many["t"]) == [2, 3, 4]


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    import torch

    from pda_repro.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert (
        main(["benchmark", "run", "--device", "cuda", "--model", "alexnet", "--results", str(tmp_path)]) == 2
    )
    assert "cuda" in capsys.readouterr().err


def test_one_figure_per_set_of_weights(results):
    store = ResultStore(results, ENV)
    frame = store.read("fig11")
    rows = frame[frame.columns.drop(["cell", "model", "backend", "device", "profile"])].to_dict("records")
    official = "bvlc_mnist.caffemodel (sha256 abcdef12)"
    key = {"model": "mnist", "backend": "torch", "device": "cpu", "weights": official, "profile": "paper"}
    store.write_cell("fig11", key, [{**r, "weights": official} for r in rows], _meta())
    names = {p.name for p in FG.render_all(results).figures}
    assert f"fig11_mnist_bvlc_mnist_abcdef12_{ENV}.png" in names
    assert f"fig11_mnist_mnist_12345678_{ENV}.png" in names


def test_batch_size_section_reads_the_benchmark_csv(tmp_path, rng):
    """`pda-repro benchmark batch`'s CSV becomes one README row per model/backend, fastest batch named."""
    import json

    import pandas as pd

    env_dir = tmp_path / ENV
    env_dir.mkdir()
    assert results_readme._batch_section(env_dir) == []  # nothing measured: no section
    ms = {1: 30.0 + rng.uniform(0.0, 0.5), 4: 20.0, 16: 21.0, 160: 45.0}
    rows = [
        {"model": "alexnet", "backend": "torch", "batch": b, "ms_per_image_best": v} for b, v in ms.items()
    ]
    rows += [{"model": "mnist", "backend": "torch", "batch": 16, "ms_per_image_best": 0.17}]
    pd.DataFrame(rows).to_csv(env_dir / "batch_size.csv", index=False)
    (env_dir / "batch_size.json").write_text(json.dumps({"settings": {"rounds": 3, "threads": 1}}))
    text = "\n".join(results_readme._batch_section(env_dir))
    assert "| model | backend | batch 1 | batch 4 | batch 16 | batch 160 | fastest |" in text
    assert f"| alexnet | torch | {ms[1]:.3g} | 20 | 21 | 45 | 4 |" in text
    assert "| mnist | torch | — | — | 0.17 | — | 16 |" in text and "best of 3 rounds, 1 thread(s)" in text
