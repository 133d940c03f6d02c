"""Scaling laws: the fit recovers known exponents, the verdict rule, the size rule, a tiny real ladder."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

import memlab
import memlab.analysis.ladder as ladder
from memlab.analysis.ladder import non_embedding_params, parse_param_count, plan, resolve_size, run_ladder
from memlab.analysis.scaling import PowerLawFit, fit_power_law, verdict
from memlab.cli import main
from memlab.errors import MemlabError

SIZES_N = np.array([1e5, 4e5, 1.6e6, 6.4e6, 2.56e7])


# ------------------------------------------------------------------------ fits


@pytest.mark.parametrize("alpha, a, c", [(0.08, 3.0, 1.2), (0.2, 60.0, 1.7), (0.34, 400.0, 1.5), (0.7, 2e4, 2.0)])
def test_fit_recovers_a_known_power_law(alpha, a, c):
    loss = a * SIZES_N ** (-alpha) + c
    fit = fit_power_law(SIZES_N, loss, n_bootstrap=0)
    assert fit.alpha == pytest.approx(alpha, abs=1e-4)
    assert fit.c == pytest.approx(c, abs=1e-3) and fit.a == pytest.approx(a, rel=1e-2)
    assert fit.rmse < 1e-6 and fit.predict(3e6) == pytest.approx(a * 3e6 ** (-alpha) + c, rel=1e-6)


def test_batch_bootstrap_intervals_cover_the_true_exponent():
    alpha, a, c = 0.34, 400.0, 1.5
    true = a * SIZES_N ** (-alpha) + c
    covered, widths = 0, []
    for seed in range(20):  # 20 noisy ladders: a 95% interval should hold the truth in most of them
        rng = np.random.default_rng(seed)
        batches = [mean + rng.normal(0, 0.02, size=32) for mean in true]
        fit = fit_power_law(SIZES_N, [b.mean() for b in batches], batches, n_bootstrap=200, seed=seed)
        assert fit.ci_method == "batches" and fit.n_bootstrap == 200
        assert abs(fit.alpha - alpha) < 0.01 and fit.alpha_ci[0] <= fit.alpha <= fit.alpha_ci[1]
        covered += fit.alpha_ci[0] < alpha < fit.alpha_ci[1]
        widths.append(fit.alpha_ci[1] - fit.alpha_ci[0])
    assert covered >= 14 and 0 < np.median(widths) < 0.05


def test_batch_bootstrap_resamples_shared_windows_jointly():
    alpha, a, c = 0.3, 50.0, 1.5
    sizes = np.array([1e6, 3e6, 1e7, 3e7, 1e8])
    true = a * sizes ** (-alpha) + c
    for seed in range(3):  # every rung scored on the same 32 windows, whose difficulty varies a lot
        rng = np.random.default_rng(seed)
        batches = true[:, None] + 0.4 * rng.standard_normal(32)[None, :] + 0.01 * rng.standard_normal((5, 32))
        fit = fit_power_law(sizes, batches.mean(1), batches, n_bootstrap=400, seed=seed)
        assert fit.alpha_ci[0] < alpha < fit.alpha_ci[1] and fit.alpha_ci[1] - fit.alpha_ci[0] < 0.1
        assert fit.noise < 0.005  # the windows' shared difficulty is not noise between the points


def test_residual_bootstrap_coverage():
    rng = np.random.default_rng(0)
    sizes, alpha = np.array([1e6, 3e6, 1e7, 3e7, 1e8]), 0.3
    covered = 0
    for seed in range(100):
        fit = fit_power_law(sizes, 50 * sizes ** (-alpha) + 1.5 + 0.01 * rng.standard_normal(5), n_bootstrap=200,
                            seed=seed)
        covered += fit.alpha_ci[0] <= alpha <= fit.alpha_ci[1]
    assert covered >= 75  # residuals inflated for the fitted parameters (without: about 60)


def test_a_fit_at_a_bound_is_flagged_and_never_decisive():
    sizes = np.array([1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7])
    loss = 1 + 2 * (sizes / 1e6) ** -5.0 + 0.001 * np.random.default_rng(0).standard_normal(6)  # steeper than 3
    fit = fit_power_law(sizes, loss, n_bootstrap=300)
    assert fit.alpha == 3.0 and "edge of its range" in fit.at_bound
    v = verdict(fit)
    assert v.decision == "proceed" and not v.decisive and "bound" in v.text
    assert fit_power_law(SIZES_N, 60 * SIZES_N ** (-0.2) + 1.7, n_bootstrap=0).at_bound is None


def test_residual_bootstrap_and_no_interval_with_three_exact_points():
    rng = np.random.default_rng(2)
    loss = 60 * SIZES_N ** (-0.2) + 1.7 + rng.normal(0, 0.003, len(SIZES_N))
    fit = fit_power_law(SIZES_N, loss, n_bootstrap=300)
    assert fit.ci_method == "residuals" and fit.alpha_ci[0] <= fit.alpha <= fit.alpha_ci[1]
    three = fit_power_law(SIZES_N[:3], loss[:3], n_bootstrap=300)
    assert three.alpha_ci is None and three.ci_method == "none" and three.rmse < 1e-6
    assert fit_power_law(SIZES_N, loss, n_bootstrap=0).ci_note == "none was asked for (0 replicates)"
    one_document = fit_power_law(SIZES_N[:3], loss[:3], [[v] for v in loss[:3]], n_bootstrap=300)
    assert one_document.ci_note.endswith("(batches; a ladder's validation documents) leave no residuals to "
                                         "resample; add sizes or validation data")  # (it had said per-batch)


def test_fit_rejects_bad_points():
    with pytest.raises(MemlabError, match=">= 3 distinct sizes"):
        fit_power_law([1e6, 1e6, 2e6], [3.0, 3.0, 2.9])
    with pytest.raises(MemlabError, match="positive"):
        fit_power_law([1e6, 2e6, 4e6], [3.0, float("nan"), 2.9])
    windows = [[3.0, 3.2], [2.9, math.inf], [2.8, 3.0]]  # (a mean of 2.95 given for the second)
    with pytest.raises(MemlabError, match="batch losses must be finite"):
        fit_power_law([1e6, 2e6, 4e6], [3.1, 2.95, 2.9], windows)


def test_the_fit_respects_its_bounds_on_flat_or_rising_losses():
    fit = fit_power_law(SIZES_N, [3.0, 3.1, 3.2, 3.3, 3.4], n_bootstrap=0)  # bigger is worse: no scaling
    assert fit.alpha >= 0 and fit.a >= 0 and 0 <= fit.c <= 3.0
    assert verdict(fit).decision == "will not scale" or fit.a == 0


def test_equal_losses_are_a_flat_curve_whose_exponent_is_undetermined():
    """Not a ~1e-9 term under c's bound that fits any alpha (it had read 0.94, "proceed")."""
    fit = fit_power_law(np.geomspace(1e5, 6.4e6, 7), [3.0] * 7, n_bootstrap=200)
    assert fit.a == 0 and fit.alpha == 0 and fit.c == pytest.approx(3.0)
    assert fit.at_bound.startswith("a = 0") and fit.alpha_ci == (0.0, 0.0)
    assert verdict(fit).decision == "will not scale" and not verdict(fit).decisive


# --------------------------------------------------------------------- verdict


def make_fit(alpha: float, ci: tuple[float, float] | None, rmse: float = 0.005, noise: float = 0.01,
             n_points: int = 4, n_batches: int = 64) -> PowerLawFit:
    return PowerLawFit(a=1.0, alpha=alpha, c=1.0, n_points=n_points, rmse=rmse, noise=noise, alpha_ci=ci,
                       ci_method="batches" if ci else "none", n_bootstrap=100 if ci else 0,
                       n_batches=n_batches if ci else None, ci_note=None if ci else "3 sizes without 2 or more "
                       "losses each to resample leave no residuals to resample; add sizes or validation data")  # fmt: skip


@pytest.mark.parametrize(
    "alpha, ci, decision, decisive",
    [
        (0.45, (0.35, 0.55), "proceed", True),
        (0.35, (0.25, 0.45), "proceed", False),  # the interval reaches below 0.3
        (0.05, (0.01, 0.09), "will not scale", True),
        (0.08, (0.02, 0.15), "will not scale", False),
        (0.2, (0.15, 0.25), "inconclusive", True),
        (0.2, (0.05, 0.4), "inconclusive", False),
        (0.5, None, "proceed", False),  # no interval: never decisive
        (0.3, None, "inconclusive", False),  # "proceed" is alpha > 0.3, "will not scale" alpha < 0.1
        (0.1, None, "inconclusive", False),
    ],
)
def test_verdict_follows_the_go_no_go_rule_and_states_the_interval(alpha, ci, decision, decisive):
    v = verdict(make_fit(alpha, ci))
    assert v.decision == decision and v.decisive == decisive
    assert f"alpha = {alpha:.3f}" in v.text and decision in v.text
    assert (f"[{ci[0]:.3f}, {ci[1]:.3f}]" in v.text) if ci else ("no bootstrap interval" in v.text)


def test_three_sizes_or_few_windows_are_never_decisive():
    """Three points fit three parameters exactly; a bootstrap over few windows under-covers."""
    exact = verdict(make_fit(0.45, (0.4, 0.5), rmse=0.0, n_points=3))
    assert exact.decision == "proceed" and not exact.decisive and "3 sizes fit the 3 parameters exactly" in exact.text
    on_bound = verdict(replace(make_fit(0.0, None, rmse=0.19, n_points=3), at_bound="alpha = 0"))
    assert "rests on a bound (alpha = 0)" in on_bound.text and "exactly" not in on_bound.text  # it misses them
    few = verdict(make_fit(0.45, (0.4, 0.5), n_batches=4))
    assert not few.decisive and "rests on 4 validation windows" in few.text
    assert verdict(make_fit(0.45, (0.4, 0.5), n_batches=10)).decisive


def test_three_sizes_with_window_losses_are_never_decisive_and_the_fit_records_its_windows():
    rng = np.random.default_rng(0)
    batches = (60 * SIZES_N[:3] ** (-0.5) + 1.7)[:, None] + 0.001 * rng.standard_normal((3, 32))
    fit = fit_power_law(SIZES_N[:3], batches.mean(1), batches, n_bootstrap=200)
    assert fit.ci_method == "batches" and fit.n_batches == 32 and fit.alpha_ci is not None
    assert not verdict(fit).decisive


def test_too_few_replicates_say_so():
    loss = 60 * SIZES_N ** (-0.5) + 1.7
    fit = fit_power_law(SIZES_N, loss, n_bootstrap=10)
    assert fit.alpha_ci is None and fit.ci_note == "10 usable bootstrap replicates of 10, fewer than 20"
    assert "no bootstrap interval: 10 usable bootstrap replicates of 10" in verdict(fit).text


def test_a_curve_that_misses_its_points_is_never_decisive():
    v = verdict(make_fit(0.45, (0.44, 0.46), rmse=0.2, noise=0.01))  # residuals 20x the evaluation noise
    assert v.decision == "proceed" and not v.decisive and "poor fit" in v.text


def shared_window_ladder(curve: np.ndarray, seed: int, sigma: float = 0.02, windows: int = 32) -> np.ndarray:
    """(n, W) window losses: every size scored on the same windows (shared difficulty) plus its own noise."""
    rng = np.random.default_rng(seed)
    shared = 0.3 * rng.standard_normal(windows)[None, :]  # (1, W): a window's difficulty
    return curve[:, None] + shared + sigma * rng.standard_normal((len(curve), windows))


def test_a_chi_square_flags_a_bent_curve_that_rmse_under_3x_noise_passed():
    """The points bend away from any power law by ~2.5x their noise: the old rule (rmse > 3 noise) passed it."""
    alpha, a, c = 0.45, 400.0, 1.5
    bend = 0.009 * np.array([1.0, -1.0, 0.0, -1.0, 1.0])  # alternating: no (a, alpha, c) absorbs it
    batches = shared_window_ladder(a * SIZES_N ** (-alpha) + c + bend, seed=0)
    fit = fit_power_law(SIZES_N, batches.mean(1), batches, n_bootstrap=400)
    assert fit.rmse < 3 * fit.noise  # what the old rule accepted
    assert fit.chi2 == pytest.approx(5 * fit.rmse**2 / fit.noise**2) and fit.chi2 > fit.chi2_limit
    assert fit.poor_fit and fit.to_dict()["poor_fit"] is True
    assert fit.ci_inflation == pytest.approx(math.sqrt(fit.chi2 / 2))  # the reduced chi-square inflation
    narrow = fit_power_law(SIZES_N, batches.mean(1) - bend, batches - bend[:, None], n_bootstrap=400)
    assert not narrow.poor_fit and narrow.ci_inflation == 1.0
    assert fit.alpha_ci[1] - fit.alpha_ci[0] > 1.5 * (narrow.alpha_ci[1] - narrow.alpha_ci[0])
    v = verdict(fit)
    assert not v.decisive and "poor fit (chi-square" in v.text and "widened" in v.text
    assert verdict(narrow).decisive


def test_a_chi_square_passes_good_fits_at_about_its_level():
    flagged = sum(
        fit_power_law(SIZES_N, b.mean(1), b, n_bootstrap=0).poor_fit
        for b in (shared_window_ladder(400 * SIZES_N ** (-0.45) + 1.5, seed) for seed in range(40))
    )
    assert flagged <= 6  # a 95% test flags 2 of 40 good fits on average


def test_the_evaluation_noise_is_unbiased_after_centring_on_the_windows():
    sigma, windows = 0.05, 4000
    batches = shared_window_ladder(60 * SIZES_N ** (-0.2) + 1.7, seed=1, sigma=sigma, windows=windows)
    fit = fit_power_law(SIZES_N, batches.mean(1), batches, n_bootstrap=0)
    assert fit.noise == pytest.approx(sigma / math.sqrt(windows), rel=0.02)  # without n/(n-1): 11% low


def test_a_residual_bootstrap_below_six_sizes_is_insufficient():
    sizes = np.geomspace(1e5, 1e8, 6)
    loss = 400 * sizes ** (-0.45) + 1.5 + 1e-4 * np.random.default_rng(0).standard_normal(6)
    six = fit_power_law(sizes, loss, n_bootstrap=400)
    assert six.ci_method == "residuals" and verdict(six).decisive
    five = verdict(fit_power_law(sizes[:5], loss[:5], n_bootstrap=400))
    assert five.decision == "proceed" and not five.decisive and "insufficient sizes" in five.text


def test_one_window_per_size_counts_as_few_windows():
    sizes = np.geomspace(1e5, 1e8, 6)
    loss = 400 * sizes ** (-0.45) + 1.5 + 1e-4 * np.random.default_rng(0).standard_normal(6)
    fit = fit_power_law(sizes, loss, [[x] for x in loss], n_bootstrap=400)
    assert fit.ci_method == "residuals" and fit.n_batches == 1
    v = verdict(fit)
    assert not v.decisive and "rests on 1 validation window (under 10" in v.text


# ------------------------------------------------------------------ size rule


def test_parameter_counts_parse():
    assert parse_param_count("10M") == 1e7 and parse_param_count("2.5k") == 2500 and parse_param_count("1.3B") == 1.3e9
    assert parse_param_count("tiny") is None and parse_param_count("d256l4") is None


@pytest.mark.parametrize("variant", ["baseline", "gdn_hybrid"])
@pytest.mark.parametrize("target", ["1M", "10M"])
def test_size_rule_meets_the_target_within_the_aspect_band(variant, target):
    size = resolve_size(variant, target)
    width, depth = (int(x) for x in size[1:].split("l"))
    n = non_embedding_params(variant, size)
    assert abs(math.log(n / parse_param_count(target))) < math.log(1.25)
    assert 16 <= width / depth <= 64 and width % 64 == 0


def test_the_size_rule_counts_the_model_the_recipe_builds():
    """The rule had counted the variant without the recipe's overrides: with values twice as wide
    (``gdn.expand_v: 2``) a 1M rung came out well over 1M parameters."""
    wide = {"gdn.expand_v": 2.0}
    size = resolve_size("gdn", "1M", model=wide)
    assert size != resolve_size("gdn", "1M")
    assert non_embedding_params("gdn", size, wide) > non_embedding_params("gdn", size)
    assert abs(math.log(non_embedding_params("gdn", size, wide) / 1e6)) < math.log(1.25)


def test_presets_and_pairs_pass_through_and_bad_sizes_name_the_choices():
    assert resolve_size("baseline", "50M") == "50M"  # a preset wins over the parameter count
    assert resolve_size("baseline", "d256l4") == "d256l4"
    with pytest.raises(MemlabError, match="valid: a preset .* parameter count like 1M"):
        resolve_size("baseline", "huge")
    with pytest.raises(MemlabError, match="divisible"):
        resolve_size("baseline", "d224l2")  # 3 heads do not divide 224


def test_plan_fails_early_on_too_few_sizes_duplicates_and_unknown_variants():
    with pytest.raises(MemlabError, match=">= 3 sizes"):
        plan(["baseline"], ["1M", "2M"])
    with pytest.raises(MemlabError, match="same model"):
        plan(["baseline"], ["d64l1", "d64l1", "d128l1"])
    with pytest.raises(MemlabError, match="unknown variant 'nope'"):
        plan(["nope"], ["d64l1", "d64l2", "d128l1"])
    with pytest.raises(MemlabError, match="unknown variant 'nope'"):  # the name first: another size won't fix it
        plan(["baseline", "nope"], ["1M"])


def test_plan_refuses_a_size_beyond_the_machine_before_training_any(monkeypatch):
    """The smaller rungs had trained, then the largest was killed for memory without a word."""
    monkeypatch.setattr(ladder, "machine_memory_bytes", lambda: 16 * non_embedding_params("baseline", "d128l2"))
    assert plan(["baseline"], ["d64l1", "d64l2", "d128l2"])
    with pytest.raises(MemlabError, match=r"size d128l3 of baseline \(d128l3, .* more than this machine's"):
        plan(["baseline"], ["d64l1", "d64l2", "d128l3"])


# --------------------------------------------------------------- tiny ladder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small word corpus as byte-level shards with a real validation split."""
    from memlab.data.text import prepare_shards

    root = tmp_path_factory.mktemp("ladder")
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and the dog ran to the park while birds sang in tall trees".split()
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(60):
        (corpus / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 8)) + ".\n")  # several per 256 tokens
    prepare_shards(f"files:{corpus}/*.txt", "byte", root / "data", val_fraction=0.2)
    return root


def test_a_tiny_ladder_trains_fits_plots_and_resumes(prepared, tmp_path, monkeypatch, capsys):
    from memlab.analysis.ladder import default_recipe

    recipe = default_recipe()
    recipe.__dict__.update(data_dir=str(prepared / "data"), seq_len=32, batch_size=4, eval_interval=0,
                           eval_tokens=256, save_interval=0, warmup=2, lr=3e-3, progress=False)
    sizes = ["d64l1", "d64l2", "d128l2"]
    out = tmp_path / "ladder"
    report = run_ladder(["baseline"], sizes, recipe, out, tokens=1024, n_bootstrap=200)
    assert {p.name for p in out.iterdir()} >= {"scaling.json", "scaling.md", "scaling.png", "baseline"}
    v = report["variants"]["baseline"]
    rungs = v["rungs"]
    assert [r["label"] for r in rungs] == sizes and all(r["tokens"] == 1024 for r in rungs)
    counts = [r["non_embedding_params"] for r in rungs]
    assert counts == sorted(counts) and counts == [non_embedding_params("baseline", s) for s in sizes]
    for r in rungs:
        summary = json.loads((out / "baseline" / r["label"] / "summary.json").read_text())
        assert r["loss"] == pytest.approx(summary["final"]["val_loss"], abs=1e-4)  # the trainer's own windows
        assert sum(r["document_tokens"]) == 256 and r["flops"] == pytest.approx(r["flops_per_token"] * 1024)
        assert r["document_tokens"] == rungs[0]["document_tokens"] and len(r["document_tokens"]) >= 5
    assert v["fit_params"]["ci_method"] == "batches" and v["fit_params"]["alpha_ci"] is not None
    assert v["verdict"]["decision"] in ("proceed", "will not scale", "inconclusive")
    assert v["verdict"]["text"] in (out / "scaling.md").read_text()

    # finished rungs are not retrained: the CLI refits from them (and a training call would fail)
    import memlab.train.trainer as trainer

    monkeypatch.setattr(trainer, "train", lambda cfg: pytest.fail(f"retrained {cfg.output_dir}"))
    main(["scale", "--variant", "baseline", "--sizes", ",".join(sizes), "--tokens", "1024", "--out-dir", str(out),
          "--data-dir", str(prepared / "data"), "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "256",
          "--lr", "3e-3", "--bootstrap", "200", "--config", str(write_recipe(tmp_path))])
    printed = capsys.readouterr().out
    assert v["verdict"]["text"] in printed and "| d128l2 | d128l2 |" in printed
    again = json.loads((out / "scaling.json").read_text())["variants"]["baseline"]
    assert again["fit_params"] == v["fit_params"]

    # another budget in the same directory: one line that says what to do (not the trainer's --resume)
    with pytest.raises(SystemExit) as exit_info:
        main(["scale", "--variant", "baseline", "--sizes", ",".join(sizes), "--tokens", "2048", "--out-dir", str(out),
              "--data-dir", str(prepared / "data"), "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "256",
              "--lr", "3e-3", "--bootstrap", "200", "--config", str(write_recipe(tmp_path))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "was trained otherwise (total_tokens: 1024 -> 2048); use another --out-dir, or delete" in err


@pytest.mark.parametrize("budget", [{"tokens": 5000}, {"tokens_per_param": 20}])
def test_every_variant_of_a_ladder_trains_on_its_own_budget(budget, tmp_path, monkeypatch):
    """The first variant's fit had overwritten the budget with its documents' token counts, so the
    second variant's rungs were asked to train on a list (a traceback)."""
    trained = []

    def fake_rung(recipe, variant, label, size, tokens, out_dir):
        trained.append((variant, size, tokens))
        n = non_embedding_params(variant, size, recipe.model)
        return ladder.Rung(variant, label, size, "run", n, n, tokens, 6.0 * n, loss=2 + 10 * n**-0.3,
                           document_losses=[2 + 10 * n**-0.3] * 6, document_tokens=[40] * 6)

    monkeypatch.setattr(ladder, "train_rung", fake_rung)
    monkeypatch.setattr(ladder, "with_prepared_data", lambda recipe, out_dir: recipe)  # rungs faked: no data
    monkeypatch.setattr("memlab.analysis.scaling.plot_ladder", lambda report, path: None)
    recipe = ladder.default_recipe()
    recipe.corpus = "stdlib-docs"
    recipe.model = {"gdn.expand_v": 2.0}  # the budget per parameter counts the model the recipe builds
    sizes = ["d64l1", "d64l2", "d128l2"]
    report = run_ladder(["baseline", "gdn"], sizes, recipe, tmp_path / "ladder", n_bootstrap=0, **budget)
    expected = [(v, s, budget.get("tokens") or round(20 * non_embedding_params(v, s, recipe.model)))
                for v in ("baseline", "gdn") for s in sizes]
    assert "tokens" in budget or expected[-1][2] > round(20 * non_embedding_params("gdn", sizes[-1]))
    assert trained == expected
    assert report["tokens"] == budget.get("tokens")  # the report keeps the budget asked for
    written = json.loads((tmp_path / "ladder" / "scaling.json").read_text())
    assert written["metadata"]["seed"] == 0 and written["metadata"]["memlab_version"] == memlab.__version__
    assert set(report["variants"]) == {"baseline", "gdn"}


def test_a_ladder_without_a_validation_window_is_refused_before_any_rung_trains(tmp_path, monkeypatch):
    """The first rung had trained, then its loss could not be measured ("has 0 tokens for rank 0")."""
    monkeypatch.setattr(ladder, "train_rung", lambda *args: pytest.fail("a rung trained"))
    (tmp_path / "text").mkdir()
    for i in range(4):
        (tmp_path / "text" / f"doc{i}.txt").write_text(f"Document {i} says a few words. " * 40)
    recipe = ladder.default_recipe()
    recipe.corpus, recipe.tokenizer, recipe.val_fraction = f"files:{tmp_path}/text/*.txt", "byte", 0.0
    recipe.seq_len, recipe.eval_tokens = 32, 256
    with pytest.raises(MemlabError, match=r"ladder/data holds no window of --seq-len 32 tokens, and a ladder is "
                                          r"fitted to validation loss; raise val_fraction in the --config recipe"):
        run_ladder(["baseline"], ["d64l1", "d64l2", "d128l2"], recipe, tmp_path / "ladder", tokens=1000, n_bootstrap=0)


def test_a_recipe_yaml_leaves_the_rest_language_modelling_only(tmp_path):
    """A YAML setting lr alone had brought memlab train's 200k tokens of algorithmic tasks into every rung."""
    from memlab.analysis.ladder import default_recipe
    from memlab.train.config import TrainConfig

    path = tmp_path / "lr.yaml"
    path.write_text("lr: 0.001\n")
    recipe = TrainConfig.from_yaml(path, base=default_recipe())
    assert recipe.lr == 0.001 and recipe.alg_tokens == 0 and recipe.alg_tasks == []
    assert TrainConfig.from_yaml(path).alg_tokens == TrainConfig().alg_tokens > 0  # memlab train's own defaults


def write_recipe(tmp_path):
    """The recipe the test ladder used, as a `memlab train` YAML (the CLI's flags set the rest)."""
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"alg_tokens": 0, "alg_tasks": [], "eval_interval": 0, "save_interval": 0,
                                    "warmup": 2, "progress": False}))
    return path


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--sizes", "1M,2M", "--tokens", "100"], ">= 3 sizes"),
        (["--variant", "nope", "--sizes", "d64l1,d64l2,d128l1", "--tokens", "100"], "unknown variant 'nope'"),
        (["--sizes", "d64l1,d64l2,d128l1"], "exactly one of --tokens"),
        (["--sizes", "d64l1,huge,d128l1", "--tokens", "100"], "unknown size 'huge'"),
        (["--sizes", "1M,-2M", "--tokens", "100"], "unknown size '-2M'"),  # had been "needs >= 3 sizes, got 2"
        # these two had been tracebacks (a division by zero, numpy's negative dimensions)
        (["--sizes", "1M,2M,3M", "--tokens", "100", "--aspect", "0"], "--aspect (the width/depth ratio"),
        (["--sizes", "d64l1,d64l2,d128l1", "--tokens", "100", "--bootstrap", "-1"], "--bootstrap must be 0"),
        (["--sizes", "d64l1,d64l2,d128l1", "--tokens", "100", "--bootstrap", "10"], "or >= 200"),
        (["--variant", ",", "--sizes", "d64l1,d64l2,d128l1", "--tokens", "100"], "--variant is empty"),
        # non-finite budgets had been tracebacks from round()
        (["--sizes", "d64l1,d64l2,d128l1", "--tokens-per-param", "nan"], "must be positive (and finite)"),
        (["--sizes", "d64l1,d64l2,d128l1", "--tokens-per-param", "inf"], "must be positive (and finite)"),
        # had been found after the first rung was trained
        (["--sizes", "d64l1,d64l2,d128l1", "--tokens", "100", "--seq-len", "32", "--eval-tokens", "16"],
         "--eval-tokens 16 is less than one window of --seq-len 32"),
        # its sizes had been "the same model; drop one", which no choice of sizes mends
        (["--variant", "cdm_code", "--sizes", "d32l1,d64l1,d96l1", "--tokens", "100"],
         "cdm_code has a fixed shape (d384 x 8 layers, whatever the size): it cannot be scaled"),
    ],
)
def test_scale_user_errors_are_one_line_exit_2(args, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["scale", "--out-dir", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and fragment in err


@pytest.mark.parametrize("yaml_text, fragment", [
    # every rung had trained the one model it sets, and the fit was refused after the training
    ("model:\n  n_layers: 1\n", "the recipe's model sets n_layers, which each rung's size sets; remove it"),
    ("variant: cdm_code\n", "cdm_code has a fixed shape"),  # the recipe's variant is scaled (it had been baseline)
])
def test_scale_takes_the_recipes_variant_and_refuses_its_size(yaml_text, fragment, tmp_path, capsys):
    (tmp_path / "recipe.yaml").write_text(yaml_text)
    with pytest.raises(SystemExit) as exit_info:
        main(["scale", "--config", str(tmp_path / "recipe.yaml"), "--sizes", "d32l1,d32l2,d32l3", "--tokens", "100",
              "--out-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and fragment in err
    assert not (tmp_path / "s").exists()


def test_scale_out_dir_that_is_a_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["scale", "--out-dir", str(tmp_path / "taken"), "--sizes", "d64l1,d64l2,d128l1", "--tokens", "100"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "is a file, not a directory" in err


def test_a_second_ladder_in_the_same_directory_is_refused(tmp_path, capsys, monkeypatch):
    """Two ladders in one --out-dir had each written scaling.json over the other's, and prepared its data."""
    from filelock import FileLock

    monkeypatch.setattr(ladder, "with_prepared_data", lambda *args: pytest.fail("data prepared"))
    with FileLock(tmp_path / ".ladder.lock"):  # what a running ladder holds
        with pytest.raises(SystemExit) as exit_info:
            main(["scale", "--out-dir", str(tmp_path / "ladder"), "--sizes", "d64l1,d64l2,d128l1", "--tokens", "100"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "another memlab scaling ladder is running in" in err and ".ladder.lock" in err


def test_document_batches_are_weighted_by_their_tokens_and_resampled_whole():
    """A ladder's batches are documents of unequal length (their windows are correlated): the loss is
    their token-weighted mean, and equal weights give exactly the window bootstrap."""
    rng = np.random.default_rng(3)
    sizes = np.geomspace(1e5, 1e8, 6)
    curve = 400 * sizes ** (-0.45) + 1.5
    docs = curve[:, None] + rng.normal(0, 0.05, 12)[None, :] + rng.normal(0, 0.002, (6, 12))  # (sizes, documents)
    tokens = rng.integers(10, 500, 12)
    weighted = fit_power_law(sizes, (docs * tokens).sum(1) / tokens.sum(), docs, 400, 0, tokens)
    assert weighted.ci_method == "batches" and weighted.n_batches == 12 and weighted.batch_unit == "document"
    assert weighted.alpha_ci[0] < 0.45 < weighted.alpha_ci[1]
    equal = fit_power_law(sizes, docs.mean(1), docs, 400, 0, np.ones(12))
    windows = fit_power_law(sizes, docs.mean(1), docs, 400, 0)
    assert [*equal.alpha_ci, equal.noise] == pytest.approx([*windows.alpha_ci, windows.noise])
    few = verdict(fit_power_law(sizes, docs[:, :4].mean(1), docs[:, :4], 400, 0, np.ones(4)))
    assert "rests on 4 validation documents (under 10" in few.text
    with pytest.raises(MemlabError, match="batch_tokens weighs the same batches at every point"):
        fit_power_law(sizes, curve, [[1.0, 2.0]] * 5 + [[1.0]], 400, 0, [1, 1])


def test_a_long_document_weighs_in_the_resamples_by_its_tokens():
    """One document of 1000 tokens that follows alpha = 0.6 beside eleven of 10 tokens that follow 0.45:
    the token-weighted loss follows ~0.55, and so must the resampled fits (unweighted resamples
    would follow ~0.46 and leave the fitted alpha outside its own interval)."""
    rng = np.random.default_rng(0)
    sizes = np.geomspace(1e5, 1e8, 6)
    docs = np.stack([400 * sizes ** (-0.6) + 1.5] + [400 * sizes ** (-0.45) + 1.5] * 11, axis=1)  # (sizes, docs)
    docs = docs + rng.normal(0, 0.002, docs.shape)
    tokens = np.array([1000] + [10] * 11)
    fit = fit_power_law(sizes, (docs * tokens).sum(1) / tokens.sum(), docs, 400, 0, tokens)
    assert fit.alpha > 0.5 and fit.alpha_ci[0] <= fit.alpha <= fit.alpha_ci[1]


def test_the_chi_square_limit_has_n_minus_3_degrees_of_freedom():
    """Three parameters are fitted: five points leave two degrees of freedom (95% point 5.991)."""
    assert make_fit(0.45, (0.4, 0.5), n_points=5).chi2_limit == pytest.approx(5.991465)
    assert make_fit(0.45, (0.4, 0.5), n_points=6).chi2_limit == pytest.approx(7.814728)


def test_a_ladder_whose_splits_give_no_interval_still_plots(tmp_path, monkeypatch):
    """Rungs scored on 2 documents have loss_ci95 [None, None]; the plot had ended in a traceback."""
    def fake_rung(recipe, variant, label, size, tokens, out_dir):
        n = non_embedding_params(variant, size)
        return ladder.Rung(variant, label, size, "run", n, n, tokens, 6.0 * n, loss=2 + 10 * n**-0.3,
                           document_losses=[2 + 10 * n**-0.3] * 2, document_tokens=[40] * 2)

    monkeypatch.setattr(ladder, "train_rung", fake_rung)
    monkeypatch.setattr(ladder, "with_prepared_data", lambda recipe, out_dir: recipe)  # rungs faked: no data
    recipe = ladder.default_recipe()
    recipe.corpus = "stdlib-docs"
    report = run_ladder(["baseline"], ["d64l1", "d64l2", "d128l2"], recipe, tmp_path, n_bootstrap=0, tokens=5000)
    assert all(r["loss_ci95"] == [None, None] for r in report["variants"]["baseline"]["rungs"])
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"
