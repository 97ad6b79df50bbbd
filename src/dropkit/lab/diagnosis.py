"""The diagnosis: what the summaries over seeds say to change, one small function per rule.

Each rule is a function ``rule(summaries, thresholds) -> list[Diagnosis]`` that reads the groups
of :func:`dropkit.lab.summary.summarize` (the baseline first) and returns its findings, each
with the numbers it measured and the threshold it compared them with. :func:`diagnose` runs the
rules of :data:`RULES` in order and concatenates what they find.

The rules (ids), with the thresholds of :class:`Thresholds`:

- ``diverged`` (:func:`check_diverged`): a group has runs with NaN/inf final metrics; they are
  left out of its statistics: lower the learning rate (or the rate).
- ``one_seed`` (:func:`check_seeds`): fewer than two usable seeds: no interval and no test.
- ``capacity`` (:func:`check_capacity`): the baseline's mean final train accuracy is below
  ``fit_train_acc``: the model cannot fit its data, and dropout will not fix that.
- ``large_gap`` (:func:`check_baseline_gap`): the baseline's train–test gap is at least
  ``large_gap``: regularize it.
- ``large_gap`` / ``single_rate`` (:func:`check_rate_gap`): the highest rate tried of a dropout
  family (same arm and settings, other rates) still has a gap of at least ``large_gap``: raise
  the rate. When the family was tried at a single rate, ``single_rate`` instead: one rate
  cannot show in which direction the rate should move (a higher rate may close the gap or stop
  the model fitting; a lower one may fit better or overfit more), so sweep the rate.
- ``no_convergence`` (:func:`check_no_convergence`): a group's train accuracy is more than
  ``underfit_drop`` below a fitting baseline's and its test accuracy is no better: lower the
  rate (or the strength).
- ``more_epochs`` (:func:`check_more_epochs`): the best dropout group takes at least
  ``slower_ratio`` times the baseline's epochs to converge: budget more epochs.
- ``not_converged`` (:func:`check_not_converged`): groups still improving in the last
  ``1 - late_fraction`` of their epochs: train longer.
- ``bn_order`` (:func:`check_bn_order`): dropout after batch norm against dropout before it,
  at the same rate, with Welch's t-test of their test accuracies.

Tasks. For regression (``DataSpec.task = "regression"``) the scores are R² instead of accuracy
and the losses mean squared errors: the same rules and thresholds apply to R² (a baseline with
train R² below ``fit_train_acc`` cannot fit its data, a train–test R² gap of ``large_gap`` is
overfitting), and every message names the score it measured
(:func:`~dropkit.lab.summary.score_name`).
With a validation split or folds, "the best dropout group" is the one chosen on validation, as
in :func:`~dropkit.lab.summary.best_rate`.

The gap rules stay silent when the capacity rule fires (a model that cannot fit its data is not
overfitting, whatever its gap), and a group told to lower its rate (``no_convergence``) is
never also told to raise it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dropkit.lab.significance import welch_from_stats
from dropkit.lab.summary import (
    CONVERGE_TOL,
    ArmSummary,
    chosen_on,
    json_ready,
    selection_score,
)

__all__ = [
    "RULES",
    "Diagnosis",
    "Rule",
    "Thresholds",
    "check_baseline_gap",
    "check_bn_order",
    "check_capacity",
    "check_diverged",
    "check_more_epochs",
    "check_no_convergence",
    "check_not_converged",
    "check_rate_gap",
    "check_seeds",
    "diagnose",
]


@dataclass(frozen=True)
class Thresholds:
    """The numbers the diagnosis rules compare against, in units of the task's score
    (accuracies as fractions; R² for regression).

    Attributes:
        fit_train_acc: a baseline whose mean final train score is below this cannot fit its
            training set (capacity rule).
        large_gap: a mean train–test score gap at or above this is overfitting (gap rule).
        underfit_drop: a regularized group whose train score is this much below a fitting
            baseline's, without a better test score, fails to train (convergence rule).
        slower_ratio: dropout's epochs to converge over the baseline's at or above this is
            reported (more-epochs rule; Srivastava et al. report 2–3×).
        late_fraction: converging after this fraction of the epochs means still improving.
    """

    fit_train_acc: float = 0.90
    large_gap: float = 0.10
    underfit_drop: float = 0.10
    slower_ratio: float = 1.5
    late_fraction: float = 0.9


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


def _gap_name(s: ArmSummary) -> str:
    """``gap`` (classification wording, unchanged) or ``R² gap``."""
    return "R² gap" if _regression(s) else "gap"


def _has_dropout(s: ArmSummary) -> bool:
    return s.p > 0 or s.input_p > 0


def _fits(base: ArmSummary, t: Thresholds) -> bool:
    """The baseline fits its training set (so it can overfit and be regularized)."""
    return math.isfinite(base.train_acc_mean) and base.train_acc_mean >= t.fit_train_acc


def _gap_rules_apply(base: ArmSummary, t: Thresholds) -> bool:
    """The capacity rule is silent (the baseline fits, or its train accuracy is unknown)."""
    return _fits(base, t) or not math.isfinite(base.train_acc_mean)


def _underfit(summaries: Sequence[ArmSummary], t: Thresholds) -> list[ArmSummary]:
    """Groups that train well below a fitting baseline and test no better than it."""
    if not summaries or not _fits(summaries[0], t):
        return []
    base = summaries[0]
    return [
        s
        for s in summaries[1:]
        if base.train_acc_mean - s.train_acc_mean > t.underfit_drop
        and not s.test_acc_mean > base.test_acc_mean
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
    """``one_seed``: one note naming every group with fewer than two usable seeds."""
    few = [s for s in summaries if s.n_valid < 2]
    if not few:
        return []
    names = ", ".join(f"{s.name} ({s.n_valid})" for s in few)
    return [
        Diagnosis(
            "one_seed",
            "info",
            f"fewer than 2 usable seeds in {names}: no confidence interval and no test is "
            "possible there; 10 seeds are the minimum for a claim",
            {"groups": len(few)},
        )
    ]


def check_capacity(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``capacity``: the baseline cannot fit its training set (train score too low)."""
    if not summaries:
        return []
    base = summaries[0]
    if not math.isfinite(base.train_acc_mean) or _fits(base, t):
        return []
    if _regression(base):
        measured = (
            f"reaches only a train R² of {base.train_acc_mean:.3f} (mean final train R² < "
            f"{t.fit_train_acc:.2f}; train MSE {base.train_loss_mean:.3f})"
        )
    else:
        measured = (
            f"fits only {base.train_acc_mean:.3f} of its training set (mean final train "
            f"accuracy < {t.fit_train_acc:.2f}; train loss {base.train_loss_mean:.3f})"
        )
    return [
        Diagnosis(
            "capacity",
            "warning",
            f"the baseline ({base.name}) {measured}: the model cannot fit its data, a capacity "
            "(or optimization) problem that dropout will not fix: widen or deepen the model, "
            "or train longer",
            {
                "train_acc": base.train_acc_mean,
                "train_loss": base.train_loss_mean,
                "threshold": t.fit_train_acc,
            },
            base.name,
        )
    ]


def check_baseline_gap(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``large_gap``: the baseline overfits (silent when the capacity rule fires)."""
    if not summaries:
        return []
    base = summaries[0]
    if not (_gap_rules_apply(base, t) and math.isfinite(base.gap_mean)):
        return []
    if base.gap_mean < t.large_gap:
        return []
    return [
        Diagnosis(
            "large_gap",
            "warning",
            f"the baseline ({base.name}) overfits: train–test {_gap_name(base)} "
            f"{base.gap_mean:.3f} (train "
            f"{base.train_acc_mean:.3f}, test {base.test_acc_mean:.3f}; threshold "
            f"{t.large_gap:.2f}): regularize it, e.g. with dropout",
            {
                "gap": base.gap_mean,
                "train_acc": base.train_acc_mean,
                "test_acc": base.test_acc_mean,
                "threshold": t.large_gap,
            },
            base.name,
        )
    ]


def _families(others: Sequence[ArmSummary]) -> list[list[ArmSummary]]:
    """The dropout groups by family (same arm and settings but ``p``), in order of appearance."""
    families: dict[tuple[Any, ...], list[ArmSummary]] = {}
    for s in others:
        if s.p > 0:
            family = (s.arm, s.input_p, s.max_norm, s.regularizers, s.epochs)
            families.setdefault(family, []).append(s)
    return list(families.values())


def _highest_rate(family: Sequence[ArmSummary]) -> ArmSummary:
    """The family's group at the highest ``p`` (the first of them on a tie)."""
    highest = family[0]
    for s in family[1:]:
        if s.p > highest.p:
            highest = s
    return highest


def _raise_the_rate(s: ArmSummary, t: Thresholds) -> Diagnosis:
    return Diagnosis(
        "large_gap",
        "warning",
        f"{s.name}: the {_gap_name(s)} is still {s.gap_mean:.3f} at the highest rate tried "
        f"(p={s.p:g}; train {s.train_acc_mean:.3f}, test {s.test_acc_mean:.3f}; "
        f"threshold {t.large_gap:.2f}): raise the rate",
        {"gap": s.gap_mean, "p": s.p, "threshold": t.large_gap},
        s.name,
    )


def _sweep_the_rate(s: ArmSummary, t: Thresholds) -> Diagnosis:
    return Diagnosis(
        "single_rate",
        "info",
        f"{s.name}: the {_gap_name(s)} is still {s.gap_mean:.3f} at p={s.p:g}, the only rate "
        f"tried (train {s.train_acc_mean:.3f}, test {s.test_acc_mean:.3f}; threshold "
        f"{t.large_gap:.2f}); one rate cannot show which way to move it (a higher rate may "
        "close the gap or stop the model fitting, a lower one may test better or overfit "
        "more): sweep several rates, e.g. 0.1 to 0.7, to see where the test "
        f"{s.score_name} peaks",
        {
            "gap": s.gap_mean,
            "p": s.p,
            "train_acc": s.train_acc_mean,
            "test_acc": s.test_acc_mean,
            "threshold": t.large_gap,
        },
        s.name,
    )


def check_rate_gap(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``large_gap`` (raise the rate) or ``single_rate`` (sweep it) per dropout family.

    A family's highest rate still overfits: with several rates tried, raise it; with a single
    rate, the gap alone cannot say which way to go: sweep. Silent for a family whose highest
    rate fails to train (:func:`check_no_convergence` tells it to lower the rate) and when the
    capacity rule fires.
    """
    if not summaries or not _gap_rules_apply(summaries[0], t):
        return []
    underfit = {s.name for s in _underfit(summaries, t)}
    findings = []
    for family in _families(summaries[1:]):
        s = _highest_rate(family)
        if s.name in underfit or not (math.isfinite(s.gap_mean) and s.gap_mean >= t.large_gap):
            continue
        single = len({member.p for member in family}) == 1
        findings.append(_sweep_the_rate(s, t) if single else _raise_the_rate(s, t))
    return findings


def check_no_convergence(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``no_convergence``: a group trains well below a fitting baseline and tests no better."""
    findings = []
    for s in _underfit(summaries, t):
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
                f"test {score} {s.test_acc_mean:.3f} is no better than the baseline's "
                f"{base.test_acc_mean:.3f}: lower the {knob}",
                {
                    "train_acc": s.train_acc_mean,
                    "baseline_train_acc": base.train_acc_mean,
                    "test_acc": s.test_acc_mean,
                    "baseline_test_acc": base.test_acc_mean,
                    "threshold": t.underfit_drop,
                },
                s.name,
            )
        )
    return findings


def check_more_epochs(summaries: Sequence[ArmSummary], t: Thresholds) -> list[Diagnosis]:
    """``more_epochs``: the best dropout group (by the score :func:`best_rate` chooses on)
    converges much later than the baseline."""
    if not summaries:
        return []
    base = summaries[0]
    dropout = [s for s in summaries[1:] if _has_dropout(s) and math.isfinite(s.test_acc_mean)]
    base_epochs = base.converge_epoch_mean
    if not dropout or not (math.isfinite(base_epochs) and base_epochs > 0):
        return []
    on = chosen_on(summaries)
    best = max(dropout, key=lambda s: selection_score(s, on))
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
    (``dropout_bn`` + p), at each rate and epoch budget both were run at."""
    after = {(s.p, s.epochs): s for s in summaries if s.p > 0 and s.strength("batchnorm")}
    before = {(s.p, s.epochs): s for s in summaries if s.p > 0 and s.strength("dropout_bn")}
    findings = []
    for key in sorted(set(after) & set(before)):
        a, b = after[key], before[key]
        difference = a.test_acc_mean - b.test_acc_mean
        test = welch_from_stats(
            a.test_acc_mean,
            a.test_acc_std,
            a.n_valid,
            b.test_acc_mean,
            b.test_acc_std,
            b.n_valid,
            b.name,
        )
        worse = test.significant and difference > 0
        if worse:
            verdict = (
                "the variance-shift order (dropout feeding BN) is worse here: put dropout after BN"
            )
        elif test.significant:
            verdict = "dropout feeding BN did better here, against the usual variance-shift advice"
        else:
            verdict = "no significant order effect at 0.05"
        p_text = (
            f"{test.test_name} p={test.p_value:.2g}"
            if math.isfinite(test.p_value)
            else "not enough seeds to test it"
        )
        findings.append(
            Diagnosis(
                "bn_order",
                "warning" if worse else "info",
                f"dropout after batch norm ({a.name}) tests {a.test_acc_mean:.3f}, dropout "
                f"before it ({b.name}) {b.test_acc_mean:.3f}: difference {difference:+.3f} "
                f"({p_text}): {verdict}",
                {
                    "after_bn": a.test_acc_mean,
                    "before_bn": b.test_acc_mean,
                    "difference": difference,
                    "p_value": test.p_value,
                },
                a.name,
            )
        )
    return findings


RULES: tuple[Rule, ...] = (
    check_diverged,
    check_seeds,
    check_capacity,
    check_baseline_gap,
    check_rate_gap,
    check_no_convergence,
    check_more_epochs,
    check_not_converged,
    check_bn_order,
)
"""The rules :func:`diagnose` runs, in the order their findings are reported."""


def diagnose(
    summaries: Sequence[ArmSummary], thresholds: Thresholds | None = None
) -> list[Diagnosis]:
    """Apply every rule of :data:`RULES` to :func:`summarize`'s groups (baseline first).

    Rules (ids): ``diverged`` (runs with NaN/inf metrics), ``one_seed`` (no interval),
    ``capacity`` (baseline cannot fit its training set: dropout will not help), ``large_gap``
    (baseline overfits, or the highest of several rates tried still does: raise the rate;
    silent when the capacity rule fires), ``single_rate`` (a single rate tried still overfits:
    sweep the rate, one rate cannot say which way to move it), ``no_convergence`` (a
    regularized group fails to fit what the baseline fits and tests no better: lower it),
    ``more_epochs`` (dropout's epochs to converge over the baseline's), ``not_converged``
    (still improving at the last epochs), ``bn_order`` (dropout after vs before batch norm).
    See the module docstring for each rule's threshold.
    """
    t = thresholds or Thresholds()
    if not summaries:
        return []
    return [finding for rule in RULES for finding in rule(summaries, t)]
