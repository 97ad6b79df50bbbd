"""The HTML report: ONE self-contained file built from the results store alone.

Figures are inline base64 PNGs, the style sheet is inline, there is no script, and a Content
Security Policy forbids the page any fetch: it opens the same offline, attached to a mail or in
a sandbox. Every string that comes from the user (titles, data set paths, arm labels) is
HTML-escaped. The same store gives the same bytes: runs, groups and figures are sorted, PNGs
carry no metadata, Monte Carlo samples use a fixed seed, and nothing records the time.

Runs are split into *experiments* (runs sharing data, model and training settings); each gets
its summary, tables, diagnosis and figures. Decision boundaries and the MC-dropout uncertainty
map are drawn for two-feature tabular classification data from the stored final weights,
rebuilt with :func:`dropkit.lab.plan.models.build_model`.

The page speaks each experiment's task: accuracy and cross-entropy for classification; R², MSE,
and the test RMSE and MAE for regression. Each experiment's best group names the split that
chose it (validation when every group has a validation score, else the test set).

When the runs recorded calibration metrics (``TrainSpec.evaluate``), each experiment has a
Calibration section: a table per evaluation mode
(:func:`~dropkit.lab.results.tables.calibration_tables`) and, for classification, the
reliability diagrams of the chosen group and the baseline, their bins pooled over seeds; the
methods section then defines the metrics. A page of runs without them is byte for byte what
it was before they existed.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dropkit.lab.plan.config import DataSpec, RunConfig
from dropkit.lab.results import (
    CONVERGE_TOL,
    ArmSummary,
    Diagnosis,
    Thresholds,
    plots,
)
from dropkit.lab.results.analysis import Analysis, analyze
from dropkit.lab.results.calibration_metrics import MODE_NAMES
from dropkit.lab.results.significance import ALPHA, MIN_SEEDS_FOR_CLAIM
from dropkit.lab.results.summary import (
    BestRate,
    chosen_on,
    score_name,
    seed_curves,
    selection_score,
)
from dropkit.lab.results.tables import (
    after_choice_table,
    calibration_tables,
    interval_text,
    number,
    to_html,
)
from dropkit.lab.store import ResultsStore, StoredRun

__all__ = ["render", "write_report"]

_MAX_CURVE_GROUPS = 12
_GRID = 100  # decision-boundary grid points per axis
_MC_GRID = 50  # uncertainty-map grid points per axis
_MC_SAMPLES = 30
_MC_SEED = 0


# -- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:1.2rem 1.6rem 3rem}
h1{font-size:1.6rem;margin:.6rem 0 .2rem}h2{font-size:1.25rem;margin-top:2.2rem;
border-bottom:2px solid #d5d9e0;padding-bottom:.2rem}h3{font-size:1.05rem;margin-top:1.6rem}
.meta{color:#5b6475;font-size:.9rem}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:.8rem 1rem;margin:.8rem 0}
.best{border-left:5px solid #2f7d32}
table{border-collapse:collapse;font-size:.84rem;background:#fff;width:100%}
th,td{border:1px solid #dde1e8;padding:.28rem .45rem;text-align:right;white-space:nowrap}
th{background:#eef1f5}td.l,th.l{text-align:left;white-space:normal}
.scroll{overflow-x:auto}
ul.findings{list-style:none;padding:0}ul.findings li{margin:.4rem 0;padding:.5rem .7rem;
border-radius:6px;background:#fff;border:1px solid #dde1e8}
li.warning{border-left:5px solid #c77700!important}li.info{border-left:5px solid #2b6cb0!important}
.tag{font-size:.72rem;font-weight:600;text-transform:uppercase;margin-right:.4rem;color:#5b6475}
figure{margin:1rem 0;background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:.5rem}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:.85rem;color:#5b6475;margin-top:.3rem}
.yes{color:#2f7d32;font-weight:600}.no{color:#8a8f98}
.note{color:#5b6475;font-style:italic}
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _image(figure: Any, alt: str, caption: str) -> str:
    data = base64.b64encode(plots.png_bytes(figure)).decode("ascii")
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _task(summaries: Sequence[ArmSummary]) -> str:
    return summaries[0].task if summaries else "classification"


def _summary_table(summaries: Sequence[ArmSummary]) -> str:
    """The per-group table, led by the split that chooses (:func:`chosen_on`): its score and
    interval, then RMSE and MAE for regression, the gap to it and the training facts. When
    validation chooses, the test figures are not here (see :func:`_after_choice`)."""
    regression = _task(summaries) == "regression"
    on = chosen_on(summaries)
    split = "validation" if on == "validation" else "test"
    score, loss = ("R²", "MSE") if regression else ("acc", "loss")
    head = (
        f"<tr><th class=l>group</th><th>seeds</th><th>diverged</th><th>train {score}</th>"
        f"<th>{split} {score}</th><th>95% CI</th>"
        + (
            f"<th>{split} RMSE</th><th>RMSE 95% CI</th><th>{split} MAE</th><th>MAE 95% CI</th>"
            if regression
            else ""
        )
        + (f"<th>best test {score}</th><th>test {loss}</th>" if on == "test" else "")
        + f"<th>gap (train − {split})</th><th>gap 95% CI</th><th>epochs to converge</th>"
        "<th>stop epoch</th></tr>"
    )
    rows = []
    for s in summaries:
        stop = f"{number(s.stop_epoch_mean, '.0f')} ({s.n_stopped})" if s.n_stopped else "–"
        if on == "validation":
            lead = f"<td>{number(s.val_acc_mean)}</td><td>{interval_text(s.val_acc_ci95)}</td>"
            errors = (s.val_rmse_mean, s.val_rmse_ci95, s.val_mae_mean, s.val_mae_ci95)
            gap, gap_ci = s.val_gap_mean, s.val_gap_ci95
            test = ""
        else:
            lead = f"<td>{number(s.test_acc_mean)}</td><td>{interval_text(s.test_acc_ci95)}</td>"
            errors = (s.test_rmse_mean, s.test_rmse_ci95, s.test_mae_mean, s.test_mae_ci95)
            gap, gap_ci = s.gap_mean, s.gap_ci95
            test = f"<td>{number(s.best_test_acc_mean)}</td><td>{number(s.test_loss_mean)}</td>"
        if regression:
            rmse, rmse_ci, mae, mae_ci = errors
            lead += (
                f"<td>{number(rmse, '.4f')}</td><td>{interval_text(rmse_ci, '.4f')}</td>"
                f"<td>{number(mae, '.4f')}</td><td>{interval_text(mae_ci, '.4f')}</td>"
            )
        rows.append(
            f"<tr><td class=l>{_e(s.name)}</td><td>{s.n_seeds}</td><td>{s.n_nan}</td>"
            f"<td>{number(s.train_acc_mean)}</td>{lead}{test}<td>{number(gap)}</td>"
            f"<td>{interval_text(gap_ci)}</td><td>{number(s.converge_epoch_mean, '.0f')}</td>"
            f"<td>{stop}</td></tr>"
        )
    return f"<div class=scroll><table>{head}{''.join(rows)}</table></div>"


def _after_choice(experiment: Analysis) -> str:
    """The test figures of every group when validation chose, labelled as read after it."""
    table = after_choice_table(experiment.summaries, experiment.best)
    if table is None:
        return ""
    return (
        f"<h3>{_e(table.title)}</h3><p class=note>{_e(table.caption)}.</p>"
        f"<div class=scroll>{to_html(table)}</div>"
    )


def _comparison_table(summaries: Sequence[ArmSummary]) -> str:
    compared = [s for s in summaries if s.vs_baseline is not None]
    if not compared:
        return "<p class=note>Only the baseline group: nothing to compare.</p>"
    first = compared[0].vs_baseline
    baseline = _e(first.baseline if first else "")
    where = _e(first.compared_on if first else "test")
    head = (
        f"<tr><th class=l>group vs {baseline} (on {where})</th><th>difference</th><th>test</th>"
        "<th>n</th><th>t</th><th>p</th><th>Holm-adjusted p</th><th>significant (0.05)</th>"
        "<th>detectable at 80% power</th><th>seeds needed</th></tr>"
    )
    rows = []
    notes = []
    for s in compared:
        c = s.vs_baseline
        assert c is not None
        verdict = (
            "<span class=yes>yes</span>"
            if c.significant
            else "<span class=no>no</span>"
            if math.isfinite(c.p_adjusted)
            else "<span class=no>no test</span>"
        )
        power = (
            f"<td>{'±' + number(c.detectable) if math.isfinite(c.detectable) else 'n/a'}</td>"
            f"<td>{c.seeds_needed if c.seeds_needed is not None else '–'}</td>"
        )
        rows.append(
            f"<tr><td class=l>{_e(s.name)}</td><td>{c.difference:+.3f}</td>"
            f"<td>{_e(c.test_name)}</td><td>{c.n}</td><td>{number(c.t_statistic, '.2f')}</td>"
            f"<td>{_p(c.p_value)}</td><td>{_p(c.p_adjusted)}</td><td>{verdict}</td>{power}</tr>"
            if math.isfinite(c.difference)
            else f"<tr><td class=l>{_e(s.name)}</td><td>n/a</td><td>{_e(c.test_name)}</td>"
            f"<td>{c.n}</td><td>n/a</td><td>n/a</td><td>n/a</td><td>{verdict}</td>{power}</tr>"
        )
        if c.note:
            notes.append(f"<li>{_e(s.name)}: {_e(c.note)}</li>")
    extra = f"<ul class=note>{''.join(notes)}</ul>" if notes else ""
    return f"<div class=scroll><table>{head}{''.join(rows)}</table></div>{extra}"


def _best_card(best: BestRate) -> str:
    """The chosen group's evidence, the rule and the groups tied with it."""
    tied = ""
    if len(best.tied) > 1:
        tied = (
            "<br><span class=meta>tied (not significantly below the top, "
            f"{_e(best.top)}): {_e(', '.join(best.tied))}</span>"
        )
    return (
        f"<div class='card best'>{_e(best.evidence)}"
        f"<br><span class=meta>{_e(best.choice)}</span>{tied}</div>"
    )


def _findings(findings: Sequence[Diagnosis]) -> str:
    if not findings:
        return "<p class=note>No rule fired: nothing stands out in these runs.</p>"
    items = "".join(
        f"<li class={_e(f.severity)}><span class=tag>{_e(f.severity)} · {_e(f.rule)}</span>"
        f"{_e(f.message)}</li>"
        for f in findings
    )
    return f"<ul class=findings>{items}</ul>"


def _rate_families(summaries: Sequence[ArmSummary]) -> list[tuple[str, list[ArmSummary]]]:
    """Groups that differ only in ``p``, for families with two or more rates.

    The arm's name follows from ``p`` and the regularizers (``none`` at p = 0 and ``dropout``
    above it are one family), so the family is keyed by everything else. Its label is the name
    of its highest-rate group without the rate.
    """
    families: dict[tuple[Any, ...], list[ArmSummary]] = {}
    for s in summaries:
        families.setdefault((s.input_p, s.max_norm, s.regularizers, s.epochs), []).append(s)
    result = []
    for members in families.values():
        if len({m.p for m in members}) < 2:
            continue
        top = max(members, key=lambda m: m.p)
        label = " ".join(t for t in (top.name or top.arm).split(" ") if not t.startswith("p="))
        result.append((label, members))
    return result


def _curve_groups(
    experiment: Analysis,
) -> tuple[list[tuple[str, plots.Curves]], str]:
    groups = list(experiment.groups)
    note = ""
    if len(groups) > _MAX_CURVE_GROUPS:
        on = chosen_on(experiment.summaries)
        rank = {s.name: selection_score(s, on) for s in experiment.summaries}
        keep = {groups[0][0]} | {
            name
            for name, _ in sorted(
                groups[1:],
                key=lambda g: (-rank[g[0]] if math.isfinite(rank[g[0]]) else math.inf, g[0]),
            )[: _MAX_CURVE_GROUPS - 1]
        }
        groups = [g for g in groups if g[0] in keep]
        split = "validation" if on == "validation" else "test"
        note = (
            f" Showing the baseline and the {_MAX_CURVE_GROUPS - 1} groups with the best mean "
            f"{split} {score_name(_task(experiment.summaries))} of {len(experiment.groups)}."
        )
    result = [
        (label, plots.stack_curves(seed_curves(runs, experiment.curves))) for label, runs in groups
    ]
    return result, note


# -- calibration -------------------------------------------------------------------------------


def _calibration_section(experiment: Analysis) -> str:
    """The calibration tables and, for classification, the reliability diagrams of the chosen
    group and the baseline (empty when the runs recorded no calibration metrics)."""
    calibration = experiment.calibration
    if not calibration:
        return ""
    tables = calibration_tables(calibration)
    modes = sorted({m for g in calibration for m in g.modes}, key=list(MODE_NAMES).index)
    described = " and ".join(MODE_NAMES[m] for m in modes)
    samples = next((g.mc_samples for g in calibration if g.mc_samples), None)
    if samples and "mc" in modes:
        described += f" (the mean of {samples} stochastic passes)"
    regression = calibration[0].task == "regression"
    what = (
        "RMSE, Gaussian NLL and the share of targets inside the central 90% interval"
        if regression
        else "Accuracy, NLL, Brier score and ECE (15 equal-width bins)"
    )
    parts = [
        "<h3>Calibration</h3>",
        f"<p class=note>{_e(what)} on the test set, {_e(described)}: mean over "
        "seeds with the 95% t-interval; each group against the baseline and, with both modes, "
        "MC dropout against the deterministic network, paired over seeds (Holm-adjusted over "
        "the groups). See the methods below for the definitions.</p>",
    ]
    parts += [f"<div class=scroll>{to_html(t)}</div>" for t in tables]
    if regression:
        return "".join(parts)
    by_name = {g.name: g for g in calibration}
    names = [calibration[0].name]
    if experiment.best is not None and experiment.best.summary.name not in names:
        names.insert(0, experiment.best.summary.name)
    panels = [(name, by_name[name].bins) for name in names if by_name[name].bins]
    if panels:
        chosen = "the chosen group and the baseline" if len(panels) > 1 else "this group"
        parts.append(
            _image(
                plots.reliability_figure(panels, title="reliability on the test set"),
                "reliability diagram",
                f"Reliability diagrams of {chosen}, the bins pooled over the seeds: each "
                "confidence bin's share of correct rows (bars) against the diagonal of perfect "
                "calibration, and the share of the rows in each bin below.",
            )
        )
    return "".join(parts)


# -- 2-D pictures: decision boundaries and MC-dropout uncertainty --------------------------------


def _load_data(config: RunConfig) -> tuple[Any, str]:
    from dropkit.lab.plan.data import DataError, load_dataset

    if config.model.kind == "custom":
        return None, (
            "the pictures are drawn for the lab's built-in models; your model's final weights "
            "are in the store (ResultsStore.state_dict) for your own plots"
        )
    try:
        return load_dataset(config.data), ""
    except (DataError, OSError) as error:
        return None, f"the data set cannot be loaded to draw it ({error})"


def _load_model(store: ResultsStore, run: StoredRun, data: Any) -> tuple[Any, str]:
    """The trained network of ``run`` rebuilt from its stored weights, or why not."""
    state_dict = getattr(store, "state_dict", None)
    state = state_dict(run.key) if callable(state_dict) else None
    if state is None:
        return None, "no stored weights for this run"
    try:
        from dropkit.lab.plan.models import build_model

        model = build_model(run.config, data)
        model.load_state_dict(state)
    except Exception as error:  # one picture must not cost the whole report
        return None, f"the stored weights cannot be loaded ({type(error).__name__}: {error})"
    return model.eval(), ""


def _grid(data: Any, size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    points = np.concatenate([data.x_train, data.x_test]).astype(np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    margin = 0.1 * np.maximum(high - low, 1e-6)
    return (
        np.linspace(low[0] - margin[0], high[0] + margin[0], size),
        np.linspace(low[1] - margin[1], high[1] + margin[1], size),
    )


def _grid_inputs(grid: tuple[NDArray[np.float64], NDArray[np.float64]]) -> Any:
    import torch

    xx, yy = np.meshgrid(grid[0], grid[1])
    return torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32))


def _predict_classes(model: Any, grid: tuple[NDArray[np.float64], NDArray[np.float64]]) -> Any:
    import torch

    with torch.no_grad():
        logits = model(_grid_inputs(grid))
    classes = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(dim=1)
    return classes.numpy().reshape(len(grid[1]), len(grid[0])).astype(np.float64)


def _representative(runs: Sequence[StoredRun], seeds: set[int]) -> StoredRun:
    """The run of the lowest seed shared with the other group (else the group's lowest)."""
    shared = [r for r in runs if r.config.seed in seeds]
    return min(shared or runs, key=lambda r: r.config.seed)


def _two_d_section(store: ResultsStore, experiment: Analysis) -> str:
    first = experiment.runs[0].config
    if first.model.kind != "mlp" or first.data.task != "classification":
        return ""
    data, why = _load_data(first)
    if data is None:
        return f"<h3>Decision boundaries</h3><p class=note>{_e(why)}</p>"
    if data.n_features != 2 or getattr(data, "input_shape", None) is not None:
        return ""
    summaries = {s.name: s for s in experiment.summaries}
    groups = dict(experiment.groups)
    baseline_name = experiment.summaries[0].name
    dropout = [
        s
        for s in experiment.summaries[1:]
        if (s.p > 0 or s.input_p > 0) and math.isfinite(s.test_acc_mean)
    ]
    on = chosen_on(experiment.summaries)
    best_name = max(dropout, key=lambda s: selection_score(s, on)).name if dropout else None
    names = [baseline_name] + ([best_name] if best_name else [])
    seed_sets = [{r.config.seed for r in groups[n]} for n in names]
    common = set.intersection(*seed_sets)
    panels, notes, models = [], [], {}
    for name in names:
        run = _representative(groups[name], common)
        model, why = _load_model(store, run, data)
        label = f"{name} (seed {run.config.seed})"
        if model is None:
            notes.append(f"{label}: {why}")
            continue
        try:
            classes = _predict_classes(model, _grid(data, _GRID))
        except Exception as error:  # one picture must not cost the whole report
            notes.append(f"{label}: cannot predict with it ({type(error).__name__}: {error})")
            continue
        models[name] = (model, label)
        panels.append((f"{label}\nmean test acc {number(summaries[name].test_acc_mean)}", classes))
    parts = ["<h3>Decision boundaries</h3>"]
    if panels:
        parts.append(
            _image(
                plots.boundary_figure(
                    panels, _grid(data, _GRID), data, title=f"{data.name}: predicted regions"
                ),
                "decision boundaries",
                "Predicted class regions of the baseline and of the best dropout group (one "
                "seed each, the lowest seed both share), with the training points (circles) and "
                "the test points (triangles).",
            )
        )
    parts += [f"<p class=note>{_e(n)}</p>" for n in notes]
    parts.append("<h3>MC-dropout uncertainty</h3>")
    if best_name is None:
        parts.append("<p class=note>No group with dropout: no Monte Carlo dropout map.</p>")
    elif best_name not in models:
        parts.append(f"<p class=note>{_e(best_name)}: no stored weights for this run.</p>")
    else:
        try:
            parts.append(_uncertainty(models[best_name], data))
        except Exception as error:  # one picture must not cost the whole report
            parts.append(
                f"<p class=note>{_e(best_name)}: the uncertainty map cannot be computed "
                f"({_e(type(error).__name__)}: {_e(error)}).</p>"
            )
    return "".join(parts)


def _uncertainty(entry: tuple[Any, str], data: Any) -> str:
    import torch

    from dropkit import mc_predict

    model, label = entry
    grid = _grid(data, _MC_GRID)
    inputs = _grid_inputs(grid)
    width = max(
        (m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)), default=1
    )
    batch = max(1, min(_MC_SAMPLES, 4_000_000 // (len(inputs) * width)))
    prediction = mc_predict(
        model,
        inputs,
        n_samples=_MC_SAMPLES,
        generator=torch.Generator().manual_seed(_MC_SEED),
        batch_size=batch,
    )
    chosen = prediction.mean.argmax(dim=1, keepdim=True)
    std = prediction.std.gather(1, chosen)[:, 0].double().numpy()
    assert prediction.entropy is not None
    entropy = prediction.entropy.double().numpy()
    shape = (len(grid[1]), len(grid[0]))
    figure = plots.uncertainty_figure(
        std.reshape(shape),
        entropy.reshape(shape),
        grid,
        data,
        title=f"{label}: Monte Carlo dropout, {_MC_SAMPLES} samples",
    )
    return _image(
        figure,
        "MC-dropout uncertainty map",
        f"dropkit.mc_predict with dropout on at inference ({_MC_SAMPLES} samples, seed "
        f"{_MC_SEED}): the standard deviation of the predicted class's probability and the "
        "predictive entropy (nats). High where the sub-networks disagree.",
    )


# -- the page ----------------------------------------------------------------------------------


def _split_text(data: DataSpec) -> str:
    """The task and validation of an experiment's data, for its header (empty for the
    case study's: classification, no validation)."""
    parts = []
    if data.task == "regression":
        parts.append("regression: scores are R², losses mean squared errors")
    if data.folds:
        parts.append(
            f"{data.folds}-fold cross-validation over the training split, each seed's folds "
            "averaged into one observation"
        )
    elif data.validation > 0:
        parts.append(f"validation split: {data.validation:.0%} of the training split")
    return "".join(f"; {_e(p)}" for p in parts)


def _experiment_section(store: ResultsStore, experiment: Analysis, index: int) -> str:
    summaries = experiment.summaries
    seeds = sorted({r.config.seed for r in experiment.runs})
    diverged = sum(s.n_nan for s in summaries)
    regression = _task(summaries) == "regression"
    score = score_name(_task(summaries))
    unit = "seeds" if experiment.runs[0].config.data.folds else "runs"
    parts = [
        f"<h2 id=e{index}>{_e(experiment.title)}</h2>",
        f"<p class=meta>{len(experiment.runs)} runs in {len(summaries)} groups; seeds "
        f"{_e(_seed_text(seeds))}; baseline: {_e(summaries[0].name)}"
        + _split_text(experiment.runs[0].config.data)
        + (f"; {diverged} diverged {unit} left out of the statistics" if diverged else "")
        + "</p>",
    ]
    if experiment.best is not None:
        parts.append(_best_card(experiment.best))
    if all(s.n_valid < 2 for s in summaries):
        parts.append(
            "<p class=note>Every group has fewer than two usable seeds: no confidence interval "
            "and no significance test can be computed. Run more seeds (10 or more).</p>"
        )
    parts += [
        "<h3>Diagnosis</h3>",
        _findings(experiment.findings),
        "<h3>Per-group results (final epoch; mean over seeds, 95% t-interval)</h3>",
        _summary_table(summaries),
        _after_choice(experiment),
        "<h3>Comparisons with the baseline</h3>",
        _comparison_table(summaries),
        _calibration_section(experiment),
    ]
    split = "validation" if chosen_on(summaries) == "validation" else "test"
    if len(summaries) > 1:
        caption = (
            f"Mean final {split} {score} with its 95% CI (dots and bars) and mean final train "
            f"{score} (squares); the dashed line is the baseline's {split} {score}."
        )
        if regression:
            caption += f" Right: the mean final {split} RMSE with its 95% CI (lower is better)."
        parts.append(
            _image(
                plots.arm_figure(summaries, title=f"final {score} by group"),
                "arm comparison chart",
                caption,
            )
        )
    families = _rate_families(summaries)
    if families:
        parts.append(
            _image(
                plots.rate_figure(families, title=f"{score} vs dropout rate"),
                f"rate vs {score}",
                f"Mean final {split} and train {score} against the drop rate p, with 95% CI "
                "error bars.",
            )
        )
    curve_groups, note = _curve_groups(experiment)
    measures = "R² and mean squared error" if regression else "accuracy and loss"
    parts.append(
        _image(
            plots.learning_curves_figure(
                curve_groups,
                title="learning curves: mean over seeds, 95% CI band",
                task=_task(summaries),
            ),
            "learning curves",
            f"Per-epoch train and test {measures} of each group: the mean over its seeds "
            "and the 95% t-interval of that mean (shaded, with two or more seeds)." + note,
        )
    )
    parts.append(_two_d_section(store, experiment))
    parts.append(_notes_section(store, experiment))
    return "".join(parts)


def _notes_section(store: ResultsStore, experiment: Analysis) -> str:
    """The notes stored with the experiment's runs (why runs trained one by one, the task
    inferred, how the data was read), each once; nothing when there are none."""
    notes = store.notes([r.key for r in experiment.runs])
    if not notes:
        return ""
    items = "".join(f"<li>{_e(note)}</li>" for note in notes)
    return f"<h3>Notes</h3><ul>{items}</ul>"


def _seed_text(seeds: Sequence[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _methods(
    thresholds: Thresholds,
    tasks: Sequence[str] = ("classification",),
    folds: bool = False,
    calibration: bool = False,
) -> str:
    """The page's methods section; ``tasks`` are the experiments' tasks (the wording of a page
    of classification experiments alone speaks of accuracy only), ``folds`` whether one of
    them cross-validates, ``calibration`` whether one recorded calibration metrics."""
    t = thresholds
    kinds = set(tasks) or {"classification"}
    group = "A <b>group</b> is a set of runs identical except for their seed" + (
        " and fold. " if folds else ". "
    )
    if kinds == {"classification"}:
        scores = "Accuracies are fractions at the last epoch"
        score = "accuracy"
    else:
        scores = (
            (
                "Scores are R² = 1 − SSE/SST of each split"
                if kinds == {"regression"}
                else "Scores are accuracies (fractions; classification) or R² = 1 − SSE/SST of "
                "each split (regression)"
            )
            + " at the last epoch (R² is 1 for a perfect fit, 0 for predicting the split's "
            "mean), losses are mean squared errors and RMSE and MAE are in the target's units"
        )
        score = "R²" if kinds == {"regression"} else "score"
    return (
        "<h2>How to read this report</h2><div class=card><ul>"
        f"<li>{group}{scores}, as mean over seeds with the 95% t-interval "
        "(mean ± t<sub>n−1</sub>·s/√n)."
        + (
            " With k-fold cross-validation a seed's k fold runs are averaged first: one "
            "observation per seed, and intervals and tests are over seeds."
            if folds
            else ""
        )
        + " Intervals are kept inside the score's range ("
        + {
            "classification": "an accuracy is in [0, 1]",
            "regression": "R² is at most 1",
        }.get(next(iter(kinds)) if len(kinds) == 1 else "", "accuracy in [0, 1], R² at most 1")
        + "); "
        "truncation keeps the t-interval's coverage, which the test suite checks by "
        "simulation. A group whose seeds all scored the same has no interval.</li>"
        "<li>The <b>best group</b> is chosen on the validation score when every group has one "
        "(a validation split or folds of the training split), else on the test score: the test "
        "set then doubles as validation, as in the published tutorial, and the best group's "
        "test score is optimistic. The groups not significantly below the highest mean "
        f"(paired t-test, p ≥ {ALPHA:g}) <b>tie</b>; the simplest of them wins (no "
        "regularization, then the fewest regularizers, then the lowest drop rate), never the "
        "order of a list. When validation chose, the tables lead with it and the test set is "
        "read once, for the chosen group; the other groups' test figures are shown apart, as "
        "read after the choice. Early stopping never sees the choosing rows.</li>"
        "<li>Each group is compared with the <b>baseline</b> (the group without regularization, "
        "else the lowest rate) on the choosing split: a paired t-test when both ran the same "
        "seeds with the same data, model and training (a seed fixes initial weights and data "
        "order, so runs pair by seed), Welch's t-test otherwise; when every per-seed "
        "difference is the same, the exact sign test (p = 2·0.5<sup>n</sup>). p-values are "
        "Holm-adjusted over all comparisons; significant means adjusted p &lt; 0.05. Each "
        "comparison states the smallest difference its seeds detect with 80% power and, when "
        "not significant, about how many seeds per group would detect the difference seen; "
        f"fewer than {MIN_SEEDS_FOR_CLAIM} seeds make any claim provisional.</li>"
        f"<li><b>Epochs to converge</b>: the first epoch at which the moving average of the test "
        f"{score} (window 2% of the epochs) comes within {CONVERGE_TOL} of its maximum.</li>"
        "<li>Runs whose final metrics are NaN or infinite (diverged) are counted and left out "
        "of every statistic.</li>"
        "<li>Diagnosis, on the choosing split's score: a train gap ≥ "
        f"{t.large_gap:g} is overfitting whatever the train score; a baseline below train "
        + (
            f"accuracy {t.fit_train_acc:g}"
            if kinds == {"classification"}
            else f"R² {t.fit_train_r2:g}"
            if kinds == {"regression"}
            else f"accuracy {t.fit_train_acc:g} (R² {t.fit_train_r2:g})"
        )
        + " with a smaller gap, and no regularizer significantly better, cannot fit its data "
        "(capacity); rate advice reads the score over the rates tried (best at the top edge: "
        "extend upward; at rate 0: dropout does not help; inside: found; all within noise: "
        f"no measurable difference); a group {t.underfit_drop:g} below a fitting baseline's "
        f"train {score} without a better score fails to train; dropout's convergence is "
        f"reported from {t.slower_ratio:g}× the baseline's epochs; converging in the last "
        f"{1 - t.late_fraction:.0%} of the epochs means still improving.</li>"
        + (_CALIBRATION_METHODS if calibration else "")
        + "</ul></div>"
    )


_CALIBRATION_METHODS = (
    "<li><b>Calibration</b> (runs trained with <code>evaluate</code> set), on the test rows, "
    "for the network with dropout off (<i>deterministic</i>) and for <i>MC dropout</i> (the "
    "mean of T stochastic passes with dropout on; Gal &amp; Ghahramani 2016). NLL: the mean "
    "of −log p(true class) (regression: the Gaussian NLL of N(μ, s²), s² the noise variance, "
    "the deterministic network's mean squared residual on its fitting rows, plus the MC "
    "variance for MC dropout; Lakshminarayanan et al. 2017). Brier: the mean over rows of "
    "Σ<sub>k</sub>(p<sub>k</sub> − 1[y = k])² (Brier 1950), on binary data (p<sub>1</sub> − "
    "y)² as scikit-learn. ECE: Σ<sub>b</sub> (n<sub>b</sub>/N)·|acc<sub>b</sub> − "
    "conf<sub>b</sub>| over 15 equal-width bins of the top-label confidence (Naeini et al. "
    "2015; Guo et al. 2017); the reliability diagrams pool the bins over the seeds. MI: the "
    "mutual information H[mean p] − mean H[p] over the passes (BALD; Houlsby et al. 2011). "
    "90% coverage: the share of targets inside μ ± 1.645 s. Each group is compared with the "
    "baseline, and MC dropout with the deterministic network, by the paired t-test over seeds "
    "(the sign test when every difference is the same), Holm-adjusted over the groups. The "
    "best group can be chosen on one of them (<code>choose_by</code>), lower being better, "
    "by the same tie rule.</li>"
)


def render(
    store: ResultsStore,
    *,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    thresholds: Thresholds | None = None,
    analyses: Sequence[Analysis] | None = None,
) -> str:
    """The report's HTML text (see :func:`write_report`)."""
    experiments = (
        list(analyses) if analyses is not None else analyze(store, keys, thresholds=thresholds)
    )
    stored = sum(len(e.runs) for e in experiments)
    names = sorted({Path(r.config.data.name).name for e in experiments for r in e.runs})
    page_title = title or (f"dropkit report: {', '.join(names)}" if names else "dropkit report")
    body = [f"<h1>{_e(page_title)}</h1>", f"<p class=meta>results store: {_e(store.path.name)}"]
    if keys is not None:
        requested = len(set(keys))
        body.append(f"; {stored} of {requested} requested runs are finished and stored")
    else:
        body.append(f"; {stored} finished runs")
    body.append("</p>")
    if keys is not None and stored < len(set(keys)):
        body.append(
            f"<div class=card>{len(set(keys)) - stored} requested runs are not in the store "
            "(not finished: the command was interrupted or is still running). This report "
            "shows the finished runs; run the same command again to train the rest.</div>"
        )
    if not experiments:
        body.append(
            "<div class=card><b>No finished runs to report.</b> Train some first, e.g. "
            "<code>dropkit demo</code>, <code>dropkit sweep</code> or "
            "<code>dropkit compare</code>, then run <code>dropkit report</code> on their "
            "store.</div>"
        )
    else:
        if len(experiments) > 1:
            links = "".join(
                f"<li><a href='#e{i}'>{_e(e.title)}</a></li>" for i, e in enumerate(experiments)
            )
            body.append(f"<div class=card>Experiments in this store:<ul>{links}</ul></div>")
        body += [_experiment_section(store, e, i) for i, e in enumerate(experiments)]
        tasks = sorted({e.runs[0].config.data.task for e in experiments})
        folds = any(e.runs[0].config.data.folds for e in experiments)
        calibration = any(e.calibration for e in experiments)
        body.append(_methods(thresholds or Thresholds(), tasks, folds, calibration))
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(page_title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(
    store: ResultsStore,
    out_path: str | Path,
    *,
    keys: Sequence[str] | None = None,
    title: str | None = None,
    analyses: Sequence[Analysis] | None = None,
) -> Path:
    """Write ONE self-contained HTML report of the stored runs (all, or ``keys``).

    ``analyses``: the :func:`dropkit.lab.results.analysis.analyze` result of those runs when the
    caller has it already (an :class:`~dropkit.lab.Experiment` does), so the store's runs and curves
    are not read and summarized a second time.

    Sections per experiment: the best group with its evidence and the split that chose it, the
    diagnosis, the per-group table (mean ± 95% CI of final and best test score, validation
    score when there is one, test RMSE and MAE for regression, loss, train–test gap, epochs to
    converge, stop epoch), comparisons with the baseline (raw and Holm-adjusted p), the arm
    comparison chart, rate vs score with error bars (when several rates), learning curves and,
    for two-feature classification data, decision boundaries and an MC-dropout uncertainty map;
    when the runs recorded calibration metrics, the calibration tables and reliability diagrams.

    Returns:
        ``out_path`` (its folder is created).
    """
    path = Path(out_path)
    text = render(store, keys=keys, title=title, analyses=analyses)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
