"""The diagnosis: what the summaries over seeds say to change, one small function per rule.

Each rule is a function ``rule(summaries, thresholds) -> list[Diagnosis]`` that reads the groups
of :func:`dropkit.lab.results.summary.summarize` (the baseline first) and returns its findings, each
with the numbers it measured and the threshold it compared them with. :func:`diagnose` runs the
rules of :data:`RULES` in order and concatenates what they find.

Which score. Every rule reads the task's own score (accuracy for classification; R² for
regression, with the RMSE beside it in the message) on the split that chooses the best group
(:func:`~dropkit.lab.results.summary.chosen_on`): the validation split when there is one, else the
test set. So the "gap" is train − validation when validation chooses, train − test otherwise.
Thresholds are per task (:class:`Thresholds`).

The rules (ids), in the order they run:

- ``diverged`` (:func:`check_diverged`): a group has runs with NaN/inf final metrics; they are
  left out of its statistics: lower the learning rate (or the rate).
- ``one_seed`` / ``few_seeds`` (:func:`check_seeds`): fewer than two usable seeds (no interval,
  no test), or fewer than :data:`~dropkit.lab.results.significance.MIN_SEEDS_FOR_CLAIM`: a claim
  from these groups is provisional.
- ``large_gap`` (:func:`check_baseline_gap`): the baseline's mean train − validation (or test)
  gap is at least ``large_gap``: it overfits, *whatever its train score* (a model that reaches
  train R² 0.81 and test R² 0.27 is overfitting, not short of capacity): regularize it.
- ``capacity`` (:func:`check_capacity`): the baseline's gap is below ``large_gap`` AND its mean
  train score is below the task's fitting threshold (``fit_train_acc`` for accuracy,
  ``fit_train_r2`` for R²) AND no regularized group scores significantly better: the model
  cannot fit its own training rows, so it has nothing to overfit, and dropout (which makes
  fitting harder) will not help. It runs after the gap rule and only when the gap is small:
  a large gap is evidence of fitting that a low train score cannot outweigh, and a significant
  gain from a regularizer is evidence against "dropout will not help".
- ``rate_curve`` / ``single_rate`` (:func:`check_rate_curve`): for each dropout family (groups
  that differ only in the hidden rate ``p``, the rate-0 group included), the shape of the
  score over the rates tried: every rate within noise of the highest → the rate makes no
  measurable difference; the highest mean at the largest rate → extend the grid upward; at the
  smallest (rate 0: dropout does not help at these rates) → extend it downward or drop
  dropout; inside → the grid has found its optimum; a single positive rate → sweep. Advice comes
  from the curve, never from one group's gap (the gap's change from the lowest rate to the best
  is reported beside it), and no rate at or above the best is told to go higher.
- ``no_convergence`` (:func:`check_no_convergence`): a group's train score is more than
  ``underfit_drop`` below a fitting baseline's and its validation (or test) score is no better:
  lower the rate (or the strength).
- ``more_epochs`` (:func:`check_more_epochs`): the best dropout group takes at least
  ``slower_ratio`` times the baseline's epochs to converge: budget more epochs.
- ``not_converged`` (:func:`check_not_converged`): groups still improving in the last
  ``1 - late_fraction`` of their epochs: train longer.
- ``bn_order`` (:func:`check_bn_order`): dropout after batch norm against dropout before it,
  at the same rate, paired by seed on the choosing split.
- ``mc_calibration`` / ``calibration_vs_baseline`` (:func:`check_calibration`), only when the
  runs recorded calibration metrics (:mod:`dropkit.lab.results.calibration_stats`), on the
  test rows, from the paired tests over seeds (Holm-adjusted over the groups): what Monte Carlo
  dropout changes against the deterministic network in each group (accuracy, NLL, Brier, ECE;
  regression RMSE, Gaussian NLL, 90% coverage), and how each group's NLL, Brier and ECE (RMSE,
  NLL, coverage) compare with the baseline's, per mode. A difference is stated with its two
  means and its test when significant; the others are named as "no measurable difference",
  with their p-values. Nothing is said of a group whose two modes agree on every seed (no
  dropout at test time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dropkit.lab.results.calibration_metrics import COMPARED, MODE_NAMES, calibration_metric
from dropkit.lab.results.calibration_stats import CalibrationSummary, summarize_calibration
from dropkit.lab.results.significance import ALPHA, MIN_SEEDS_FOR_CLAIM, Comparison
from dropkit.lab.results.summary import (
    CONVERGE_TOL,
    ArmSummary,
    chosen_on,
    compare_scores,
    json_ready,
    selection_score,
    tied_with,
)

__all__ = [
    "RULES",
    "Diagnosis",
    "Rule",
    "Thresholds",
    "check_baseline_gap",
    "check_bn_order",
    "check_calibration",
    "check_capacity",
    "check_diverged",
    "check_more_epochs",
    "check_no_convergence",
    "check_not_converged",
    "check_rate_curve",
    "check_seeds",
    "diagnose",
]


@dataclass(frozen=True)
class Thresholds:
    """The numbers the diagnosis rules compare against, in units of the task's score
    (accuracies as fractions; R² for regression).

    Attributes:
        fit_train_acc: classification: a baseline whose mean final train accuracy is below
            this (with a small gap) cannot fit its training set (capacity rule).
        fit_train_r2: regression: the same for the train R² (below 0.5 the model explains
            less than half the variance of its own training targets).
        large_gap: a mean train − validation (or test) gap at or above this is overfitting,
            whatever the train score (gap rule); the same number of accuracy or R² points.
        underfit_drop: a regularized group whose train score is this much below a fitting
            baseline's, without a better validation (or test) score, fails to train.
        slower_ratio: dropout's epochs to converge over the baseline's at or above this is
            reported (more-epochs rule; Srivastava et al. report 2–3×).
        late_fraction: converging after this fraction of the epochs means still improving.
    """

    fit_train_acc: float = 0.90
    large_gap: float = 0.10
    underfit_drop: float = 0.10
    slower_ratio: float = 1.5
    late_fraction: float = 0.9
    fit_train_r2: float = 0.50

    def fit_threshold(self, task: str) -> float:
        """The train score below which a baseline does not fit: per task."""
        return self.fit_train_r2 if task == "regression" else self.fit_train_acc


@dataclass(frozen=True)
class Diagnosis:
    """One finding of the diagnosis.

    Attributes:
        rule: the id of the rule that found it (``large_gap``, ``capacity`` ...).
        severity: ``"warning"`` or ``"info"``.
        message: what was measured, against which threshold, and what to do.
        numbers: the measured numbers and the threshold, by name.
        group: the label of the group concerned; None for a finding about several groups.
    """

    rule: str
    severity: str
    message: str
    numbers: dict[str, float]
    group: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None), with the keys ``rule``, ``severity``, ``message``,
        ``numbers`` and ``group``."""
        result: dict[str, Any] = json_ready(asdict(self))
        return result


Rule = Callable[[Sequence[ArmSummary], Thresholds], list[Diagnosis]]
"""A diagnosis rule: the groups (baseline first) and the thresholds in, its findings out."""


def _regression(s: ArmSummary) -> bool:
    return s.task == "regression"


def _split(summaries: Sequence[ArmSummary]) -> tuple[str, str]:
    """``(on, word)``: the split that chooses (``"validation"``/``"test"``) and its word."""
    on = chosen_on(summaries)
    return on, on


def _gap_name(s: ArmSummary, on: str) -> str:
    """``train–validation gap``, ``train–test R² gap`` ..."""
    return f"train–{on} {'R² gap' if _regression(s) else 'gap'}"


def _rmse_text(s: ArmSummary, on: str) -> str:
    """``"; RMSE train 0.52, validation 0.91"`` for regression, ``""`` otherwise."""
    if not _regression(s):
        return ""
    other = s.val_rmse_mean if on == "validation" else s.test_rmse_mean
    if not (math.isfinite(s.train_rmse_mean) or math.isfinite(other)):
        return ""
    return f"; RMSE train {s.train_rmse_mean:.4g}, {on} {other:.4g}"


def _has_dropout(s: ArmSummary) -> bool:
    return s.p > 0 or s.input_p > 0


def _fits(base: ArmSummary, t: Thresholds) -> bool:
    """The baseline fits its training set (so it can overfit and be regularized)."""
    return math.isfinite(base.train_acc_mean) and base.train_acc_mean >= t.fit_threshold(base.task)


def _overfits(base: ArmSummary, t: Thresholds, on: str) -> bool:
    gap = base.gap(on)
    return math.isfinite(gap) and gap >= t.large_gap


def _underfit(summaries: Sequence[ArmSummary], t: Thresholds, on: str) -> list[ArmSummary]:
    """Groups that train well below a fitting baseline and score no better than it on ``on``."""
    if not summaries or not _fits(summaries[0], t):
        return []
    base = summaries[0]
    return [
        s
        for s in summaries[1:]
        if base.train_acc_mean - s.train_acc_mean > t.underfit_drop
        and not selection_score(s, on) > selection_score(base, on)
    ]


def check_diverged(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``diverged``: one warning per group with runs whose final metrics are NaN or inf."""
    findings = []
    for s in summaries:
        if s.n_nan:
            fix = "lower the learning rate" + (" or the rate" if _has_dropout(s) else "")
            what = (
                f"{s.n_nan} of {s.n_seeds} seeds have a fold run that ended with NaN/inf "
                "metrics (diverged)"
                if s.folds
                else f"{s.n_nan} of {s.n_seeds} runs ended with NaN/inf metrics (diverged)"
            )
            findings.append(
                Diagnosis(
                    "diverged",
                    "warning",
                    f"{s.name}: {what}; they are left out of every statistic: {fix}",
                    {"n_nan": s.n_nan, "n_runs": s.n_seeds},
                    s.name,
                )
            )
    return findings


def check_seeds(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``one_seed``: groups with fewer than two usable seeds (no interval, no test);
    ``few_seeds``: groups below :data:`~dropkit.lab.results.significance.MIN_SEEDS_FOR_CLAIM`."""
    findings = []
    one = [s for s in summaries if s.n_valid < 2]
    if one:
        names = ", ".join(f"{s.name} ({s.n_valid})" for s in one)
        findings.append(
            Diagnosis(
                "one_seed",
                "info",
                f"fewer than 2 usable seeds in {names}: no confidence interval and no test is "
                f"possible there; {MIN_SEEDS_FOR_CLAIM} seeds are the minimum for a claim",
                {"groups": len(one), "minimum": MIN_SEEDS_FOR_CLAIM},
            )
        )
    few = [s for s in summaries if 2 <= s.n_valid < MIN_SEEDS_FOR_CLAIM]
    if few:
        fewest = min(s.n_valid for s in few)
        findings.append(
            Diagnosis(
                "few_seeds",
                "warning",
                f"{len(few)} group{'s' if len(few) != 1 else ''} ran on only {fewest}"
                f"{'' if all(s.n_valid == fewest for s in few) else ' or more'} usable seeds, "
                f"below the {MIN_SEEDS_FOR_CLAIM} a claim needs: the intervals and tests are "
                "valid but wide, and the best group is provisional; each comparison states "
                "the smallest difference these seeds can detect and the seeds a difference "
                "would need (lab.seeds_needed answers it before running)",
                {"groups": len(few), "fewest_seeds": fewest, "minimum": MIN_SEEDS_FOR_CLAIM},
            )
        )
    return findings


def check_baseline_gap(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``large_gap``: the baseline overfits: its train − validation (or test) gap is at least
    ``large_gap``, whatever its train score."""
    if not summaries:
        return []
    base = summaries[0]
    on, word = _split(summaries)
    if not _overfits(base, t, on):
        return []
    gap = base.gap(on)
    return [
        Diagnosis(
            "large_gap",
            "warning",
            f"the baseline ({base.name}) overfits: {_gap_name(base, on)} {gap:.3f} (train "
            f"{base.train_acc_mean:.3f}, {word} {selection_score(base, on):.3f}"
            f"{_rmse_text(base, on)}; threshold {t.large_gap:.2f}): regularize it, e.g. "
            "with dropout",
            {
                "gap": gap,
                "train_acc": base.train_acc_mean,
                f"{on}_acc": selection_score(base, on),
                "threshold": t.large_gap,
            },
            base.name,
        )
    ]


def check_capacity(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``capacity``: the baseline cannot fit its training set: a small gap, a train score
    below the task's threshold, and no regularized group significantly better."""
    if not summaries:
        return []
    base = summaries[0]
    on, _ = _split(summaries)
    threshold = t.fit_threshold(base.task)
    if not math.isfinite(base.train_acc_mean) or _fits(base, t) or _overfits(base, t, on):
        return []
    helped = [
        s
        for s in summaries[1:]
        if s.vs_baseline is not None and s.vs_baseline.significant and s.vs_baseline.difference > 0
    ]
    if helped:
        return []
    gap = base.gap(on)
    if _regression(base):
        measured = (
            f"reaches only a train R² of {base.train_acc_mean:.3f} (below {threshold:.2f}: it "
            f"explains little of its own training targets; {_gap_name(base, on)} {gap:.3f} < "
            f"{t.large_gap:.2f}{_rmse_text(base, on)})"
        )
    else:
        measured = (
            f"fits only {base.train_acc_mean:.3f} of its training set (mean final train "
            f"accuracy < {threshold:.2f}; {_gap_name(base, on)} {gap:.3f} < {t.large_gap:.2f}; "
            f"train loss {base.train_loss_mean:.3f})"
        )
    return [
        Diagnosis(
            "capacity",
            "warning",
            f"the baseline ({base.name}) {measured}, and no regularizer scored significantly "
            "better: the model cannot fit its data, a capacity (or optimization) problem that "
            "dropout will not fix: widen or deepen the model, or train longer",
            {
                "train_acc": base.train_acc_mean,
                "gap": gap,
                "train_loss": base.train_loss_mean,
                "threshold": threshold,
                "gap_threshold": t.large_gap,
            },
            base.name,
        )
    ]


def _families(summaries: Sequence[ArmSummary]) -> list[list[ArmSummary]]:
    """Dropout families: groups alike but for the hidden rate ``p`` (rate 0 included), each
    sorted by ``p``, for the families with a positive rate; in order of appearance."""
    families: dict[tuple[Any, ...], list[ArmSummary]] = {}
    for s in summaries:
        family = (s.input_p, s.max_norm, s.regularizers, s.epochs)
        families.setdefault(family, []).append(s)
    return [
        sorted(members, key=lambda s: s.p)
        for members in families.values()
        if any(s.p > 0 for s in members) and len({s.p for s in members}) == len(members)
    ]


def _rates_text(groups: Sequence[ArmSummary]) -> str:
    return ", ".join(f"{s.p:g}" for s in groups)


def _curve_numbers(family: Sequence[ArmSummary], top: ArmSummary, on: str) -> dict[str, float]:
    numbers = {f"p={s.p:g}": selection_score(s, on) for s in family}
    numbers.update({"best_p": top.p, "lowest_p": family[0].p, "highest_p": family[-1].p})
    return numbers


def check_rate_curve(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``rate_curve`` or ``single_rate``: where the score peaks over the rates tried.

    Per dropout family (:func:`_families`), on the choosing split: the *top* is the rate with
    the highest mean score and the rates tied with it are those not significantly below it
    (:func:`~dropkit.lab.results.summary.tied_with`). The top at the largest rate: extend the grid
    upward; at rate 0: no rate tried helps; at the smallest positive rate: extend downward;
    inside: found. One positive rate: sweep. Rates with no finite score are left out.
    """
    if not summaries:
        return []
    on, word = _split(summaries)
    findings = []
    singles: list[ArmSummary] = []
    for family in _families(summaries):
        scored = [s for s in family if math.isfinite(selection_score(s, on))]
        positive = [s for s in scored if s.p > 0]
        if not positive:
            continue
        score = scored[0].score_name
        if len(positive) == 1:
            singles.append(positive[0])
            continue
        top = max(scored, key=lambda s: (selection_score(s, on), -s.p))
        tied = [s for s in tied_with(top, scored, on) if s is not top]
        within = f" (within noise of it: p={_rates_text(tied)})" if tied else ""
        best = f"p={top.p:g} ({word} {score} {selection_score(top, on):.3f})"
        rates = f"rates tried: {_rates_text(scored)}"
        lowest = scored[0]
        gap = ""
        if top is not lowest and all(math.isfinite(x.gap(on)) for x in (lowest, top)):
            gap = (
                f"; the {_gap_name(top, on)} goes from {lowest.gap(on):.3f} at "
                f"p={lowest.p:g} to {top.gap(on):.3f} at p={top.p:g}"
            )
        if len(tied) == len(scored) - 1:
            severity = "info"
            message = (
                f"the {word} {score} does not differ measurably between the rates tried: the "
                f"highest, {best}, is within noise of every other; {rates}: the rate makes no "
                "difference these seeds can detect (the comparisons say how many seeds a "
                f"difference of this size would need){gap}"
            )
        elif top is scored[-1]:
            higher = min(0.9, top.p + 0.2)
            severity = "warning"
            message = (
                f"the {word} {score} is highest at the largest rate tried, {best}{within}; "
                f"{rates}: rates above it may score better: extend the grid upward (e.g. to "
                f"p={higher:g}){gap}"
            )
        elif top is lowest and top.p == 0:
            severity = "info"
            message = (
                f"no dropout rate tried scores above p=0 ({word} {score} "
                f"{selection_score(top, on):.3f}){within}; {rates}: dropout does not help at "
                f"these rates; if the model overfits, try rates below p={scored[1].p:g} or "
                "another regularizer"
            )
        elif top is lowest:
            severity = "info"
            message = (
                f"the {word} {score} is highest at the smallest rate tried, {best}{within}; "
                f"{rates}: extend the grid downward (e.g. to p=0 and p={top.p / 2:g})"
            )
        else:
            severity = "info"
            message = (
                f"the grid has found its optimum: the {word} {score} peaks inside it, at "
                f"{best}{within}; {rates}: a finer grid around it is all that is left to "
                f"try{gap}"
            )
        findings.append(
            Diagnosis("rate_curve", severity, message, _curve_numbers(scored, top, on), top.name)
        )
    if singles:
        findings.append(_single_rates(singles, on, word))
    return findings


def _single_rates(singles: Sequence[ArmSummary], on: str, word: str) -> Diagnosis:
    """``single_rate``: the dropout families tried at one positive rate (one finding)."""
    score = singles[0].score_name
    why = (
        "one rate cannot show which way to move it (a higher rate may close a gap or stop the "
        "model fitting, a lower one may score better or overfit more): sweep several rates, "
        f"e.g. 0.1 to 0.7, to see where the {word} {score} peaks"
    )
    if len(singles) == 1:
        s = singles[0]
        return Diagnosis(
            "single_rate",
            "info",
            f"{s.name}: p={s.p:g} is the only dropout rate tried ({word} {score} "
            f"{selection_score(s, on):.3f}, {_gap_name(s, on)} {s.gap(on):.3f}); {why}",
            {
                "p": s.p,
                f"{on}_acc": selection_score(s, on),
                "gap": s.gap(on),
                "train_acc": s.train_acc_mean,
            },
            s.name,
        )
    rates = sorted({s.p for s in singles})
    names = ", ".join(s.name for s in singles)
    return Diagnosis(
        "single_rate",
        "info",
        f"{names}: each tried at one dropout rate (p={', '.join(f'{p:g}' for p in rates)}); {why}",
        {"groups": len(singles), "highest_p": rates[-1], "lowest_p": rates[0]},
    )


def check_no_convergence(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``no_convergence``: a group trains well below a fitting baseline and scores no better
    on the choosing split."""
    on, word = _split(summaries) if summaries else ("test", "test")
    findings = []
    for s in _underfit(summaries, t, on):
        base = summaries[0]  # _underfit is empty without a baseline
        drop = base.train_acc_mean - s.train_acc_mean
        knob = "rate" if _has_dropout(s) else "strength"
        score = s.score_name
        findings.append(
            Diagnosis(
                "no_convergence",
                "warning",
                f"{s.name}: training does not converge: train {score} "
                f"{s.train_acc_mean:.3f} is {drop:.3f} below the baseline's "
                f"{base.train_acc_mean:.3f} (threshold {t.underfit_drop:.2f}) and its "
                f"{word} {score} {selection_score(s, on):.3f} is no better than the "
                f"baseline's {selection_score(base, on):.3f}: lower the {knob}",
                {
                    "train_acc": s.train_acc_mean,
                    "baseline_train_acc": base.train_acc_mean,
                    f"{on}_acc": selection_score(s, on),
                    f"baseline_{on}_acc": selection_score(base, on),
                    "threshold": t.underfit_drop,
                },
                s.name,
            )
        )
    return findings


def check_more_epochs(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``more_epochs``: the best dropout group (by the choosing split's mean score; the
    lower rate on a tie) converges much later than the baseline."""
    if not summaries:
        return []
    base = summaries[0]
    dropout = [s for s in summaries[1:] if _has_dropout(s) and math.isfinite(s.test_acc_mean)]
    base_epochs = base.converge_epoch_mean
    if not dropout or not (math.isfinite(base_epochs) and base_epochs > 0):
        return []
    on = chosen_on(summaries)
    best = min(  # the highest score; on a tie the simplest (fewest regularizers, lowest rate)
        dropout,
        key=lambda s: (-selection_score(s, on), len(s.arm.split("+")), s.p + s.input_p, s.name),
    )
    ratio = best.converge_epoch_mean / base.converge_epoch_mean
    if not (math.isfinite(ratio) and ratio >= t.slower_ratio):
        return []
    return [
        Diagnosis(
            "more_epochs",
            "info",
            f"{best.name} takes {ratio:.1f}× the baseline's epochs to converge "
            f"({best.converge_epoch_mean:.0f} vs {base.converge_epoch_mean:.0f} epochs to "
            f"come within {CONVERGE_TOL} of the best smoothed test {best.score_name}; reported "
            f"from {t.slower_ratio:g}×, dropout typically needs 2–3×): budget more epochs",
            {
                "ratio": ratio,
                "epochs": best.converge_epoch_mean,
                "baseline_epochs": base.converge_epoch_mean,
                "threshold": t.slower_ratio,
            },
            best.name,
        )
    ]


def check_not_converged(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``not_converged``: one warning naming the groups still improving at their last epochs."""
    late = [
        s for s in summaries if s.epochs > 1 and s.converge_epoch_mean >= t.late_fraction * s.epochs
    ]
    if not late:
        return []
    names = ", ".join(f"{s.name} ({s.converge_epoch_mean:.0f})" for s in late)
    return [
        Diagnosis(
            "not_converged",
            "warning",
            f"still improving in the last {1 - t.late_fraction:.0%} of the "
            f"{late[0].epochs} epochs (mean epoch of convergence): {names}: train longer to "
            "see where they level off",
            {"groups": len(late), "epochs": late[0].epochs, "threshold": t.late_fraction},
        )
    ]


def check_bn_order(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``bn_order``: dropout after batch norm (``batchnorm`` + p) against before it
    (``dropout_bn`` + p), at each rate and epoch budget both were run at, paired by seed on
    the choosing split."""
    after = {(s.p, s.epochs): s for s in summaries if s.p > 0 and s.strength("batchnorm")}
    before = {(s.p, s.epochs): s for s in summaries if s.p > 0 and s.strength("dropout_bn")}
    on, word = _split(summaries) if summaries else ("test", "test")
    findings = []
    for key in sorted(set(after) & set(before)):
        a, b = after[key], before[key]
        test = compare_scores(a, b, on)
        difference = test.difference
        worse = test.significant and difference > 0
        if worse:
            verdict = (
                "the variance-shift order (dropout feeding BN) is worse here: put dropout after BN"
            )
        elif test.significant:
            verdict = "dropout feeding BN did better here, against the usual variance-shift advice"
        else:
            verdict = f"no significant order effect at {ALPHA:g}"
        p_text = (
            f"{test.test_name} p={test.p_value:.2g}"
            if math.isfinite(test.p_value)
            else "not enough seeds to test it"
        )
        findings.append(
            Diagnosis(
                "bn_order",
                "warning" if worse else "info",
                f"dropout after batch norm ({a.name}) scores {selection_score(a, on):.3f} on "
                f"{word}, dropout before it ({b.name}) {selection_score(b, on):.3f}: "
                f"difference {difference:+.3f} ({p_text}): {verdict}",
                {
                    "after_bn": selection_score(a, on),
                    "before_bn": selection_score(b, on),
                    "difference": difference,
                    "p_value": test.p_value,
                },
                a.name,
            )
        )
    return findings


def _p_text(c: Comparison) -> str:
    """``"paired t-test p=0.003, Holm-adjusted p=0.009, 10 seeds"``."""
    text = f"{c.test_name} p={c.p_value:.2g}"
    if math.isfinite(c.p_adjusted) and c.p_adjusted != c.p_value:
        text += f", Holm-adjusted p={c.p_adjusted:.2g}"
    return f"{text}, {c.n} seeds"


def _unmeasured(items: Sequence[str]) -> str:
    return f"no measurable difference in {', '.join(items)}" if items else ""


# What MC dropout changes: accuracy besides the calibration metrics of COMPARED.
_MODE_METRICS = {
    "classification": ("acc", *COMPARED["classification"]),
    "regression": COMPARED["regression"],
}


def _spec(task: str) -> str:
    """How a calibration number reads: 3 decimals, or 4 significant digits for regression's
    (in the target's units)."""
    return ".4g" if task == "regression" else ".3f"


def _mode_statements(group: CalibrationSummary) -> tuple[list[str], dict[str, float]]:
    """MC dropout against the deterministic network in one group: the significant changes,
    then the rest as no measurable difference; nothing when every seed agrees exactly."""
    spec = _spec(group.task)
    tests = {m: group.mc_vs_det[m] for m in _MODE_METRICS[group.task] if m in group.mc_vs_det}
    if not tests or all(c.test == "sign" and c.difference == 0 for c in tests.values()):
        return [], {}
    changed: list[str] = []
    unmeasured: list[str] = []
    numbers: dict[str, float] = {}
    for name, c in tests.items():
        label = calibration_metric(group.task, name).label
        det, mc = group.stats("det", name), group.stats("mc", name)
        assert det is not None  # a comparison needs both modes
        assert mc is not None
        numbers |= {
            f"{group.name}: det_{name}": det.mean,
            f"{group.name}: mc_{name}": mc.mean,
            f"{group.name}: {name} p_adjusted": c.p_adjusted,
        }
        if c.significant:
            verb = "lowers" if mc.mean < det.mean else "raises"
            changed.append(
                f"MC dropout {verb} {label} from {det.mean:{spec}} to {mc.mean:{spec}} "
                f"({_p_text(c)})"
            )
        else:
            unmeasured.append(_no_difference(label, det.mean, mc.mean, c, spec))
    parts = [*changed, *([_unmeasured(unmeasured)] if unmeasured else [])]
    return [f"{group.name}: {', '.join(parts)}"], numbers


def _no_difference(label: str, a: float, b: float, c: Comparison, spec: str) -> str:
    """A metric whose two means ``a`` and ``b`` no test told apart, with its adjusted p (or
    why there is none)."""
    test = f"p={c.p_adjusted:.2g}" if math.isfinite(c.p_value) else "too few seeds to test"
    return f"{label} ({a:{spec}} vs {b:{spec}}, {test})"


def _baseline_statements(
    group: CalibrationSummary, base: CalibrationSummary
) -> tuple[list[str], dict[str, float]]:
    """One group's calibration against the baseline's, per mode: the significant differences,
    then the rest as no measurable difference."""
    spec = _spec(group.task)
    statements: list[str] = []
    numbers: dict[str, float] = {}
    for mode in group.modes:
        changed, unmeasured = [], []
        for name in COMPARED[group.task]:
            ours, theirs = group.stats(mode, name), base.stats(mode, name)
            if ours is None or theirs is None or ours.vs_baseline is None:
                continue
            c = ours.vs_baseline
            label = calibration_metric(group.task, name).label
            numbers |= {
                f"{group.name}: {mode}_{name}": ours.mean,
                f"{base.name}: {mode}_{name}": theirs.mean,
                f"{group.name}: {mode}_{name} p_adjusted": c.p_adjusted,
            }
            if c.significant:
                relation = "lower" if c.difference < 0 else "higher"
                changed.append(
                    f"{label} is {relation} than {base.name}'s: {ours.mean:{spec}} vs "
                    f"{theirs.mean:{spec}} ({_p_text(c)})"
                )
            else:
                unmeasured.append(_no_difference(label, ours.mean, theirs.mean, c, spec))
        parts = [*changed, *([_unmeasured(unmeasured)] if unmeasured else [])]
        if parts:
            statements.append(f"{group.name}, {MODE_NAMES[mode]}: {', '.join(parts)}")
    return statements, numbers


def check_calibration(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``mc_calibration``: what Monte Carlo dropout changes against the deterministic network,
    per group with both modes; ``calibration_vs_baseline``: each group's calibration against
    the baseline's, per mode. On the test rows, paired over seeds, Holm-adjusted over the
    groups (:func:`~dropkit.lab.results.calibration_stats.summarize_calibration`); nothing
    without calibration metrics."""
    groups = summarize_calibration(summaries)
    if not groups:
        return []
    findings = []
    mode_parts: list[str] = []
    mode_numbers: dict[str, float] = {}
    for group in groups:
        statements, numbers = _mode_statements(group)
        mode_parts += statements
        mode_numbers |= numbers
    if mode_parts:
        findings.append(
            Diagnosis(
                "mc_calibration",
                "info",
                "Monte Carlo dropout against the deterministic network (dropout off) on the "
                "test set, paired over seeds, Holm-adjusted over the groups: "
                + "; ".join(mode_parts),
                mode_numbers,
            )
        )
    base = groups[0]
    if base.is_baseline:
        base_parts: list[str] = []
        base_numbers: dict[str, float] = {}
        for group in groups[1:]:
            statements, numbers = _baseline_statements(group, base)
            base_parts += statements
            base_numbers |= numbers
        if base_parts:
            findings.append(
                Diagnosis(
                    "calibration_vs_baseline",
                    "info",
                    f"calibration against the baseline ({base.name}) on the test set, paired "
                    "over seeds, Holm-adjusted over the groups: " + "; ".join(base_parts),
                    base_numbers,
                )
            )
    return findings


RULES: tuple[Rule, ...] = (
    check_diverged,
    check_seeds,
    check_baseline_gap,
    check_capacity,
    check_rate_curve,
    check_no_convergence,
    check_more_epochs,
    check_not_converged,
    check_bn_order,
    check_calibration,
)
"""The rules :func:`diagnose` runs, in the order their findings are reported."""


def diagnose(
    summaries: Sequence[ArmSummary], thresholds: Thresholds | None = None
) -> list[Diagnosis]:
    """Apply every rule of :data:`RULES` to :func:`summarize`'s groups (baseline first).

    Rules (ids): ``diverged``, ``one_seed`` / ``few_seeds``, ``large_gap`` (the baseline
    overfits), ``capacity`` (small gap, low train score, nothing helps), ``rate_curve`` /
    ``single_rate`` (where the score peaks over the rates tried), ``no_convergence``,
    ``more_epochs``, ``not_converged``, ``bn_order``, ``mc_calibration`` /
    ``calibration_vs_baseline``. See the module docstring for each rule's measure, threshold
    and order.
    """
    t = thresholds or Thresholds()
    if not summaries:
        return []
    return [finding for rule in RULES for finding in rule(summaries, t)]
