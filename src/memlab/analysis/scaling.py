"""Scaling-law fits: L(x) = a * x^(-alpha) + c, a bootstrap interval for alpha, the go/no-go verdict.

``x`` is the non-embedding parameter count N (the fit that carries the verdict) or the
training compute C in FLOPs.  The fit is least squares under the bounds ``a >= 0``,
``0 <= alpha <= 3`` and ``0 <= c <= min(loss)`` (the irreducible loss lies below every observed
loss), solved by variable projection: for a given alpha the model is linear in (a, c), whose
box-constrained optimum has a closed form, so alpha alone is searched, on a grid over its
bounds refined four times around the best value (to ~1e-6).  This finds the global optimum
where a local optimiser (``scipy.optimize.curve_fit``) can stop at a poor start, and it is
vectorised over bootstrap replicates (1000 replicates in well under a second).  Sizes are
divided by their geometric mean while fitting; ``a`` is reported in the original units.

The interval for alpha is a bootstrap:

* ``batches``: when each point carries its per-batch validation losses, every replicate
  resamples the batches with replacement and refits (evaluation noise).  Points with as many
  batches are taken to be scored on the same windows (a ladder's rungs are): one draw of
  window indices serves every point, so a window's shared difficulty moves all points
  together, as it does in the data (this is also valid for independent windows).  Points
  with different counts are resampled independently;
* ``residuals``: otherwise, with more points than parameters, every replicate adds
  resampled residuals, inflated by sqrt(n / (n - 3)) for the three fitted parameters, to the
  fitted curve and refits.  This interval under-covers (about 80% for a nominal 95% with five
  sizes and additive noise; with the noise 1% of the loss, as the draws assume one spread at every
  size, 78-83%, 88-89% and 91-94% with 6, 12 and 20 sizes over 1e6..1e9 and alpha 0.27 or 0.5,
  400 fits each): read it as a lower bound on the uncertainty;
* ``none``: with exactly three points and no batches the curve interpolates the points (unless
  the fit rests on a bound) and no interval can be had; the verdict says so.

A fit that rests on a bound of the search (alpha at 0 or 3, c at 0 or at the smallest loss,
or a = 0, where alpha is undetermined) is not a free least-squares optimum; ``at_bound`` says
which, and its verdict is never decisive.

Goodness of fit: when the points' evaluation noise is known (from their batches), the
statistic chi2 = sum(residual^2) / noise^2 is compared with the 95% point of a chi-square
distribution on n - 3 degrees of freedom.  Above it the points do not follow a power law within
their noise (a *poor fit*): the interval, which measures evaluation noise only, is widened about
alpha by sqrt(chi2 / (n - 3)) (the reduced chi-square inflation), and ``ci_inflation`` says by how much.

The verdict is the source experiment's go/no-go rule on the point estimate: alpha > 0.3
proceed to the next scale, alpha < 0.1 will not scale, otherwise inconclusive; it is
*decisive* only when the whole 95% interval lies on the same side of the thresholds and the
curve fits.  A poor fit is never decisive.  Nor is a fit to three sizes (the curve interpolates
them: its fit cannot be checked, and the interval sees no run-to-run variance: in a simulation
with a 2% run-to-run spread, a quarter of such "decisive" verdicts were wrong), a residual
bootstrap over fewer than ``MIN_RESIDUAL_SIZES`` sizes (it under-covers, above), or losses
measured on fewer than ``MIN_BATCHES`` windows or documents per size (a batch bootstrap over them
covered the truth half the time with two windows, three quarters with four; one gives none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from memlab.errors import MemlabError
from memlab.plotting import pyplot, save_figure

PROCEED_ALPHA, NO_SCALE_ALPHA = 0.3, 0.1
FIT_LEVEL = 0.95  # a chi-square above this quantile on n - 3 degrees of freedom is a poor fit
MIN_BATCHES = 10  # validation windows (or documents) per size a decisive verdict needs
MIN_RESIDUAL_SIZES = 6  # sizes a residual bootstrap needs for a decisive verdict
ALPHA_BOUNDS = (0.0, 3.0)
FLAT = 1e-6  # a fitted term this small a share of the smallest loss is none: a = 0


@dataclass
class PowerLawFit:
    """A fitted L(x) = a * x^(-alpha) + c with a bootstrap interval for alpha."""

    a: float
    alpha: float
    c: float
    n_points: int
    rmse: float  # root-mean-square residual of the fit, in loss units
    noise: float | None  # root-mean-square standard error of the points (from their batches), if known
    alpha_ci: tuple[float, float] | None  # 95% bootstrap interval; None when it cannot be had
    ci_method: str  # "batches", "residuals" or "none"
    n_bootstrap: int  # replicates that converged
    at_bound: str | None = None  # the bound of the search the fit rests on, if any
    n_batches: int | None = None  # validation batches per point (the fewest), when per-batch losses are given
    batch_unit: str = "window"  # what a batch is: a validation window, or a document (weighted by its tokens)
    ci_note: str | None = None  # why there is no interval, when there is none
    ci_inflation: float = 1.0  # the factor alpha_ci was widened by for a poor fit

    @property
    def chi2(self) -> float | None:
        """sum(residual^2) / noise^2, or None when the noise is unknown or the fit is exact (3 points)."""
        if self.noise is None or self.n_points <= 3:
            return None
        sse = self.n_points * self.rmse**2
        return sse / self.noise**2 if self.noise > 0 else (np.inf if sse > 0 else 0.0)

    @property
    def chi2_limit(self) -> float | None:
        """The chi-square a good fit stays under: its ``FIT_LEVEL`` quantile on n - 3 degrees of freedom."""
        return float(stats.chi2.ppf(FIT_LEVEL, self.n_points - 3)) if self.n_points > 3 else None

    @property
    def poor_fit(self) -> bool:
        """The points scatter about the curve more than their evaluation noise allows."""
        return self.chi2 is not None and self.chi2 > self.chi2_limit

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        return self.a * np.asarray(x, dtype=float) ** (-self.alpha) + self.c

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the interval as a list)."""
        return {**asdict(self), "alpha_ci": list(self.alpha_ci) if self.alpha_ci else None,
                "chi2": self.chi2, "chi2_limit": self.chi2_limit, "poor_fit": self.poor_fit}


def _profile(xn: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each alpha, the least-squares ``a >= 0`` and ``0 <= c <= min(y)`` in closed form.

    xn: (n,) normalised sizes; y: (R, n) loss vectors; alphas: (1 or R, G).  Returns sse, a, c: (R, G).
    The optimum of the box-constrained 2-parameter problem is interior or on one of its edges
    (c = 0, c = c_max, a = 0); each candidate's squared error is computed from sums.
    """
    n = xn.shape[0]
    z = xn ** -alphas[..., None]  # (1 or R, G, n)
    Sz, Szz = z.sum(-1), (z * z).sum(-1)  # (1 or R, G)
    Sy, Syy = y.sum(-1)[:, None], (y * y).sum(-1)[:, None]  # (R, 1)
    Szy = (z * y[:, None, :]).sum(-1)  # (R, G)
    c_max = y.min(-1, keepdims=True) * (1 - 1e-9)  # (R, 1)
    var_z = Szz - Sz**2 / n
    ok = var_z > 1e-12 * Szz  # alpha = 0 makes a and c collinear
    a_in = (Szy - Sz * Sy / n) / np.where(ok, var_z, 1.0)
    c_in = (Sy - a_in * Sz) / n
    shape = Szy.shape
    candidates = [
        (a_in, c_in, ok & (a_in >= 0) & (c_in >= 0) & (c_in <= c_max)),
        (np.maximum(Szy / Szz, 0.0), np.zeros(shape), True),
        (np.maximum((Szy - c_max * Sz) / Szz, 0.0), np.broadcast_to(c_max, shape), True),
        (np.zeros(shape), np.broadcast_to(np.clip(Sy / n, 0.0, c_max), shape), True),
    ]
    best_sse, best_a, best_c = np.full(shape, np.inf), np.zeros(shape), np.zeros(shape)
    for a, c, feasible in candidates:
        sse = Syy - 2 * a * Szy - 2 * c * Sy + a * a * Szz + 2 * a * c * Sz + n * c * c
        better = feasible & (sse < best_sse)
        best_sse = np.where(better, sse, best_sse)
        best_a, best_c = np.where(better, a, best_a), np.where(better, c, best_c)
    return best_sse, best_a, best_c


def _fit_many(xn: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares fits of (R, n) loss vectors -> (R, 3) rows of (a, alpha, c) for normalised sizes.

    alpha is found on a grid over its bounds, then on finer grids around each best value
    (the profile in alpha is smooth; a and c are exact given alpha), so no start can be bad.
    """
    lo, hi = ALPHA_BOUNDS
    alphas, step = np.linspace(lo, hi, 301)[None, :], (hi - lo) / 300  # (1, G)
    rows = np.arange(len(y))
    for _ in range(4):  # grid steps 0.01, 5e-4, 2.5e-5, 1.25e-6
        sse, a, c = _profile(xn, y, alphas)
        best = sse.argmin(-1)  # (R,)
        centre = np.broadcast_to(alphas, sse.shape)[rows, best]
        fit = np.stack([a[rows, best], centre, c[rows, best]], axis=-1)
        alphas = np.clip(centre[:, None] + np.linspace(-step, step, 41)[None, :], lo, hi)  # (R, 41)
        step /= 20
    # a power-law term below FLAT of the smallest loss everywhere on the data is a flat curve: alpha is
    # undetermined there (c's bound just under the smallest loss had left a ~1e-9 term fitting any alpha)
    flat = fit[:, 0] * xn.min() ** -fit[:, 1] <= FLAT * y.min(-1)
    c_flat = np.clip(y.mean(-1), 0.0, y.min(-1) * (1 - 1e-9))  # the least-squares c for a = 0
    fit[flat] = np.stack([np.zeros_like(c_flat), np.full_like(c_flat, lo), c_flat], axis=-1)[flat]
    return fit


def fit_power_law(
    x: Sequence[float],
    loss: Sequence[float],
    batch_losses: Sequence[Sequence[float]] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_tokens: Sequence[float] | None = None,
) -> PowerLawFit:
    """Fit L(x) = a * x^(-alpha) + c to >= 3 points, with a 95% bootstrap interval for alpha.

    ``batch_losses[i]`` (optional) are point i's per-batch validation losses, whose mean is
    ``loss[i]``; when given for every point they drive the bootstrap.  ``batch_tokens`` (optional,
    the same batches for every point) makes them documents: the mean is weighted by their tokens
    and whole documents are resampled (a document's windows are correlated; windows are not).
    """
    x_arr, y = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    if x_arr.shape != y.shape or x_arr.ndim != 1:
        raise MemlabError(f"need matching 1-D sizes and losses, got {x_arr.shape} and {y.shape}")
    if len(np.unique(x_arr)) < 3:
        raise MemlabError(f"a power law with an offset needs >= 3 distinct sizes, got {len(np.unique(x_arr))}")
    if not (np.all(np.isfinite(y)) and np.all(x_arr > 0) and np.all(y > 0)):
        raise MemlabError("sizes and losses must be positive and finite")
    if batch_losses is not None and not all(np.isfinite(b).all() for b in batch_losses):
        raise MemlabError("batch losses must be finite")
    if batch_tokens is not None and (batch_losses is None or {len(b) for b in batch_losses} != {len(batch_tokens)}):
        raise MemlabError("batch_tokens weighs the same batches at every point; give each point that many losses")
    x_ref = float(np.exp(np.mean(np.log(x_arr))))  # fit on x / x_ref: numbers near 1
    xn = x_arr / x_ref
    a, alpha, c = _fit_many(xn, y[None])[0]
    fitted = a * xn ** (-alpha) + c
    residuals = y - fitted
    n = len(y)
    method, replicates, noise = _replicates(fitted, residuals, batch_losses, batch_tokens, n_bootstrap, seed)
    replicates = replicates[(replicates > 0).all(-1)]  # (a residual draw can reach 0: such replicates are out)
    alphas = _fit_many(xn, replicates)[:, 1] if len(replicates) else np.empty(0)
    ci = (float(np.percentile(alphas, 2.5)), float(np.percentile(alphas, 97.5))) if len(alphas) >= 20 else None
    if ci is not None:
        note = None
    elif n_bootstrap == 0:
        note = "none was asked for (0 replicates)"
    elif method == "none":
        note = ("3 sizes without 2 or more losses each to resample (batches; a ladder's validation documents) "
                "leave no residuals to resample; add sizes or validation data")
    else:
        note = f"{len(alphas)} usable bootstrap replicates of {n_bootstrap}, fewer than 20"
    fit = PowerLawFit(
        a=float(a * x_ref**alpha),
        alpha=float(alpha),
        c=float(c),
        n_points=n,
        rmse=float(np.sqrt(np.mean(residuals**2))),
        noise=noise,
        alpha_ci=ci,
        ci_method=method if ci is not None else "none",
        n_bootstrap=len(alphas),
        at_bound=_at_bound(a, alpha, c, float(y.min())),
        n_batches=min(len(b) for b in batch_losses) if batch_losses is not None else None,
        batch_unit="window" if batch_tokens is None else "document",
        ci_note=note,
    )
    if fit.poor_fit and ci is not None:  # widen the interval about alpha by the reduced chi-square
        fit.ci_inflation = float(np.sqrt(fit.chi2 / (n - 3)))
        lo, hi = (float(np.clip(alpha + (end - alpha) * fit.ci_inflation, *ALPHA_BOUNDS)) for end in ci)
        fit.alpha_ci = (lo, hi)
    return fit


def _replicates(
    fitted: np.ndarray,
    residuals: np.ndarray,
    batch_losses: Sequence[Sequence[float]] | None,
    batch_tokens: Sequence[float] | None,
    n_bootstrap: int,
    seed: int,
) -> tuple[str, np.ndarray, float | None]:
    """(method, (R, n) bootstrap replicates of the n losses, the noise of one loss or None): the
    batches resampled where every point has >= 2, else the fit's residuals where n > 3, else none."""
    rng = np.random.default_rng(seed)
    n = len(fitted)
    if batch_losses is not None and all(len(b) >= 2 for b in batch_losses):
        if len({len(b) for b in batch_losses}) == 1:  # the same batches: resample their indices jointly
            b = np.asarray(batch_losses, dtype=float)  # (n, W)
            W = b.shape[1]
            tokens = np.ones(W) if batch_tokens is None else np.asarray(batch_tokens, dtype=float)  # (W,)
            drawn = rng.multinomial(W, np.full(W, 1 / W), size=n_bootstrap) * tokens  # (R, W) tokens resampled
            replicates = (drawn @ b.T) / drawn.sum(1, keepdims=True)  # (R, n)
            # the noise a fit can show: each batch's losses relative to their mean over the points
            # (a batch's shared difficulty moves every point alike), the variance of their weighted
            # mean (W / (W - 1): about its own mean); the centring removes a share 1/n of each point's
            # own variance, which n / (n - 1) restores
            share = tokens / tokens.sum()  # (W,)
            d = b - b.mean(0)  # (n, W)
            spread = ((d - (d * share).sum(1, keepdims=True)) ** 2 * share**2).sum(1) * W / (W - 1)  # (n,)
            return "batches", replicates, float(np.sqrt(np.mean(spread) * n / (n - 1)))
        noise = float(np.sqrt(np.mean([np.var(b, ddof=1) / len(b) for b in batch_losses])))
        replicates = np.stack(  # (R, n): each point's batches resampled with replacement
            [np.asarray(b, dtype=float)[rng.integers(0, len(b), (n_bootstrap, len(b)))].mean(-1)
             for b in batch_losses],
            axis=-1,
        )
        return "batches", replicates, noise
    if n > 3:
        inflated = residuals * np.sqrt(n / (n - 3))  # least-squares residuals are too small
        return "residuals", fitted + inflated[rng.integers(0, n, (n_bootstrap, n))], None
    return "none", np.empty((0, n)), None


def _at_bound(a: float, alpha: float, c: float, min_loss: float) -> str | None:
    """Which bound of the search a fit rests on, or None for a free optimum."""
    lo, hi = ALPHA_BOUNDS
    if a <= 0:
        return "a = 0: a flat curve, alpha undetermined"
    if alpha <= lo + 1e-5 or alpha >= hi - 1e-5:
        return f"alpha = {alpha:g}, the edge of its range [{lo:g}, {hi:g}]"
    if c <= 1e-6 * min_loss:
        return "c = 0"
    if c >= (1 - 1e-6) * min_loss:
        return "c = the smallest loss"
    return None


@dataclass
class Verdict:
    """The go/no-go decision on a parameter-scaling exponent."""

    decision: str  # "proceed", "will not scale" or "inconclusive"
    decisive: bool  # the whole interval supports the decision
    text: str


def verdict(fit: PowerLawFit) -> Verdict:
    """The source's go/no-go rule (alpha > 0.3 proceed, < 0.1 will not scale), stated with the interval."""
    alpha, decision = fit.alpha, _region(fit.alpha)
    interval = (
        f"95% CI [{fit.alpha_ci[0]:.3f}, {fit.alpha_ci[1]:.3f}], {fit.ci_method} bootstrap"
        if fit.alpha_ci
        else f"no bootstrap interval: {fit.ci_note}"
    )
    exact = fit.n_points <= 3 and fit.at_bound is None  # the curve passes through them all (off a bound)
    few_sizes = fit.ci_method == "residuals" and fit.n_points < MIN_RESIDUAL_SIZES
    few_batches = fit.n_batches is not None and fit.n_batches < MIN_BATCHES
    decisive = (
        fit.alpha_ci is not None and not fit.poor_fit and not exact and not few_sizes and not few_batches
        and fit.at_bound is None and _region(fit.alpha_ci[0]) == _region(fit.alpha_ci[1]) == decision
    )
    if decisive:
        support = "the whole interval agrees"
    elif exact:
        support = ("tentative: 3 sizes fit the 3 parameters exactly, so neither the power law nor the "
                   "run-to-run variance is checked; add sizes")
    elif few_batches:
        batches = f"{fit.n_batches} validation {fit.batch_unit}{'s' * (fit.n_batches != 1)}"
        support = (f"tentative: each size's loss rests on {batches} (under {MIN_BATCHES} the interval "
                   "under-covers); evaluate more tokens")
    elif few_sizes:
        support = (f"tentative: insufficient sizes, a residual bootstrap over {fit.n_points} sizes under-covers "
                   f"(a decisive verdict needs {MIN_RESIDUAL_SIZES}); add sizes")
    elif fit.poor_fit:
        support = (f"tentative: a poor fit (chi-square {fit.chi2:.3g} on {fit.n_points - 3} degrees of freedom, "
                   f"above its {FIT_LEVEL:.0%} point {fit.chi2_limit:.3g}: the points do not follow the curve "
                   f"within their evaluation noise" + (f"; the interval is widened {fit.ci_inflation:.3g}x for it)"
                   if fit.ci_inflation > 1 else ")"))
    elif fit.at_bound is not None:
        support = f"tentative: the fit rests on a bound ({fit.at_bound})"
    elif fit.alpha_ci is None:
        support = "tentative"
    else:
        support = "tentative: the interval crosses a threshold (0.1 / 0.3)"
    text = f"alpha = {alpha:.3f} ({interval}; {fit.n_points} sizes): {decision} — {support}"
    return Verdict(decision, decisive, text)


def _region(alpha: float) -> str:
    if alpha > PROCEED_ALPHA:
        return "proceed"
    if alpha < NO_SCALE_ALPHA:
        return "will not scale"
    return "inconclusive"


def plot_ladder(report: dict[str, Any], path: str | Path) -> Path:
    """Log-log loss against N (non-embedding parameters) and against C (FLOPs), with each variant's fit."""
    from matplotlib import ticker

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for (variant, v), color in zip(report["variants"].items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 9):
        rungs = v["rungs"]
        losses = np.array([r["loss"] for r in rungs])
        bounds = np.array([r["loss_ci95"] for r in rungs], dtype=float).T  # (2, n); nan where a split had no interval
        errors = np.nan_to_num(np.abs(bounds - losses))  # below/above; no bar without an interval
        for ax, key, fit_key in ((axes[0], "non_embedding_params", "fit_params"), (axes[1], "flops", "fit_compute")):
            x = np.array([r[key] for r in rungs], dtype=float)
            fit = v[fit_key]
            ci = f" [{fit['alpha_ci'][0]:.2f}, {fit['alpha_ci'][1]:.2f}]" if fit["alpha_ci"] else ""
            ax.errorbar(x, losses, yerr=errors, fmt="o", color=color, capsize=3)
            spans = ((x.min(), x.max(), "-"), (x.min() / 1.5, x.min(), ":"), (x.max(), x.max() * 1.5, ":"))
            for lo, hi, style in spans:  # solid over the data; dotted: extrapolated
                grid = np.geomspace(lo, hi, 50)
                ax.plot(grid, fit["a"] * grid ** (-fit["alpha"]) + fit["c"], style, color=color,
                        label=f"{variant}: exponent {fit['alpha']:.3f}{ci}" if style == "-" else None)
    for ax, xlabel in zip(axes, ("N (non-embedding parameters)", "C (training FLOPs)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("L(N) = a N^-alpha + c (dotted: beyond the data)")
    axes[1].set_title("L(C) = a C^-beta + c (dotted: beyond the data)")
    return save_figure(fig, Path(path))
