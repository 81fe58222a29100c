"""Adding pairs until every line is decided: anytime-valid tests, Holm at the stopping time.

A fixed-sample t test is valid at one sample size chosen in advance. Looking after every new
pair and stopping at the first "winner" turns its 5% into far more (tests/test_sequential.py
shows it). So when `--until-decided` adds pairs, each line is judged by a test that is valid at
whatever pair count the data made the run stop at.

The method: per line, the t-test mixture e-value of Lai (1976) and Rouder et al. (2009) on the
line's per-pair values (log ratios; differences in points for accuracy). With the standardised
effect delta = mu / sigma given a normal mixture N(0, g) and sigma the scale-invariant (right
Haar) prior, the likelihood ratio of the scale-invariant statistics is

    E_n = (1 + n g)^(-1/2) * ((1 + t^2 / nu) / (1 + t^2 / (nu (1 + n g))))^((nu + 1) / 2),

with t the ordinary one-sample t statistic on n pairs and nu = n - 1. Under "no difference" with
normal pairs, E_n is a nonnegative martingale in the filtration of those statistics (Perez-Ortiz,
Lardy, de Heide and Grunwald, 2022), so Ville's inequality bounds the chance that it ever
reaches 1 / a by a, however the run decides to stop. It estimates the variance from the pairs
(nothing is assumed about the machine's noise) and reads only what a t test reads. The
anytime-valid p of a line after n pairs is 1 / max over k <= n of E_k; Holm's correction over
the lines' anytime-valid p at the stopping time keeps the family-wise false-winner rate at 1 -
level, since Holm needs only that each p be valid at that time, under any dependence. The
confidence sequence is the same test inverted, {mu : E_k(mu) < 1 / alpha}, intersected over the
looks: it covers the truth at every look at once with probability 1 - level, so "equivalent"
(the sequence inside the margin) keeps the meaning it has at a fixed size, judged per line as
before. Pairs are not normal here (drift, outlier rounds): the simulations check the whole
procedure under this machine's noise models.

Lines with no anytime-valid test (exact sign tests over failed runs, permutation tests) are
reported but decide nothing when the pair count depends on the data.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Sequence

import numpy as np

from twinbench.experiments.verdicts import LEVEL, Estimate, Line, decide

# The mixture's variance for the standardised effect: a prior sd of 2 for mu / sigma suits pairs
# whose true difference is several times their spread (1.5x at a log-ratio sd of 0.1-0.3), and
# still lets a line reach 0.05 / 4 from 5 pairs. Fixed in advance, never tuned on the data.
MIXTURE_G = 4.0


def first_decisive_pairs(level: float = LEVEL, g: float = MIXTURE_G) -> int:
    """The fewest pairs at which a line can be decided at all. After n pairs the e-value can
    reach at most (1 + n g)^((n - 1) / 2) (as t grows without bound), and the confidence
    sequence has a bound exactly when that maximum passes 1 / alpha: at 3 pairs it is 1 + 3 g =
    13 < 20, so a look there could name no winner and no equivalence; at 4 pairs it is 70."""
    n = 2
    while (1 + n * g) ** ((n - 1) / 2) < 1 / (1 - level):
        n += 1
    return n


# The first look: every pair before it is run unconditionally (tests/test_sequential.py checks
# that no line could be decided one pair earlier).
MIN_LOOK_PAIRS = first_decisive_pairs()
MAX_PAIRS = 20  # where a run stops undecided when no budget stops it first

DECIDED = "decided"
BUDGET = "budget spent"
MAX = "max pairs"
NOTHING = "no line can decide"  # e.g. every job failed: more pairs would only repeat that


def e_values(values: Sequence[float], null: float = 0.0, g: float = MIXTURE_G) -> np.ndarray:
    """The t-mixture e-value after each prefix of the pairs (1 before two pairs)."""
    x = np.asarray(values, float) - null
    n = np.arange(1, len(x) + 1, dtype=float)
    mean = np.cumsum(x) / n
    out = np.ones(len(x))
    if len(x) < 2:
        return out
    # Prefix variances from running sums, stable enough for a few dozen pairs on this scale.
    ss = np.cumsum(x * x) - n * mean * mean
    nu = n - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(nu > 0, np.maximum(ss, 0) / np.maximum(nu, 1), 0.0)
        t2 = np.where(var > 0, n * mean * mean / var, 0.0)
        u = t2 / np.maximum(nu, 1)
        r = 1 + n * g
        log_e = -0.5 * np.log(r) + (nu + 1) / 2 * (np.log1p(u) - np.log1p(u / r))
    ok = (nu > 0) & (var > 0)
    out[ok] = np.exp(np.minimum(log_e[ok], 700))
    return out


def anytime_p(values: Sequence[float], g: float = MIXTURE_G) -> float:
    """The anytime-valid p against no difference after these pairs: 1 / the largest e-value."""
    e = e_values(values, 0.0, g)
    return float(min(1.0, 1 / e.max())) if len(e) else 1.0


def confidence_sequence(
    values: Sequence[float], level: float = LEVEL, g: float = MIXTURE_G
) -> tuple[float, float]:
    """The mean's confidence sequence after these pairs (intersected over every prefix)."""
    x = np.asarray(values, float)
    low, high = -math.inf, math.inf
    alpha = 1 - level
    for k in range(2, len(x) + 1):
        head = x[:k]
        nu, r = k - 1, 1 + k * g
        sd = float(head.std(ddof=1))
        # E_k(mu) < 1 / alpha  <=>  u = t^2 / nu < (A - 1) / (1 - A / r), A = (sqrt(r) / alpha)^(2 / k)
        a = (math.sqrt(r) / alpha) ** (2 / k)
        if a >= r or not sd > 0:
            continue  # no bound yet at this many pairs
        u = (a - 1) / (1 - a / r)
        half = math.sqrt(u * nu) * sd / math.sqrt(k)
        low, high = max(low, float(head.mean()) - half), min(high, float(head.mean()) + half)
    if low > high:  # an empty intersection: the truth was missed; say nothing rather than a point
        return -math.inf, math.inf
    return low, high


def anytime_estimate(e: Estimate, level: float = LEVEL, g: float = MIXTURE_G) -> Estimate | None:
    """The line's estimate judged by the anytime-valid test; None when it has no per-pair values."""
    if e.pairs is None or len(e.pairs) < 2:
        return None
    values = list(e.pairs)
    n = len(values)
    low, high = confidence_sequence(values, level, g)
    method = f"anytime-valid t mixture (g = {g:g}) on {n} pairs, added until decided"
    out = dataclasses.replace(
        e, p_value=anytime_p(values, g), min_p=0.0, detectable=None, detectable_points=None,
        log_se=None, points_se=None, df=None, method=method,
    )  # fmt: skip
    if e.difference_points is not None and e.points_scale:
        diff = float(np.mean(values))
        out.difference_points = (diff, low, high)
        out.low = 1 + low / e.points_scale if math.isfinite(low) else 0.0
        out.high = 1 + high / e.points_scale if math.isfinite(high) else math.inf
    else:
        out.low = math.exp(low) if math.isfinite(low) else 0.0
        out.high = math.exp(high) if math.isfinite(high) else math.inf
    return out


NO_ANYTIME_TEST = "no anytime-valid test: decides nothing when pairs are added until decided"
# A line whose question another line answers better (compare's sequential speed line beside the
# lockstep pairs added until decided): reported for reading, outside Holm's family, and the run
# never waits on it.
SET_ASIDE = "set aside: training speed is decided by the lockstep pairs"


def set_aside(line: Line, reason: str = SET_ASIDE) -> Line:
    """The line kept for reading, unable to decide or to make the other lines pay for it."""
    detail = "; ".join(x for x in (line.detail, reason) if x)
    return dataclasses.replace(line, detail=detail)


def _decides(detail: str) -> bool:
    return NO_ANYTIME_TEST not in detail and SET_ASIDE not in detail


def anytime_lines(lines: Sequence[Line], level: float = LEVEL) -> list[Line]:
    """The lines with anytime-valid estimates; lines without one kept, but unable to decide."""
    out = []
    for line in lines:
        e = anytime_estimate(line.estimate, level)
        if e is not None and SET_ASIDE in line.detail:
            out.append(dataclasses.replace(line, estimate=dataclasses.replace(e, min_p=1.0)))
        elif e is None:
            e = dataclasses.replace(line.estimate, min_p=1.0)  # outside Holm's family
            detail = "; ".join(x for x in (line.detail, NO_ANYTIME_TEST) if x)
            out.append(dataclasses.replace(line, estimate=e, detail=detail))
        else:
            out.append(dataclasses.replace(line, estimate=e))
    return out


def decided(entries: Sequence[dict], questions: Collection[str] | None = None) -> bool:
    """Every line that can decide has (of `questions` only, when given): a winner or
    "equivalent"."""
    able = [e for e in entries if _decides(e.get("detail", ""))
            and (questions is None or e["question"] in questions)]  # fmt: skip
    return bool(able) and all(e["outcome"] in ("winner", "equivalent") for e in able)


def until_decided(
    add_pair: Callable[[], None],
    lines_now: Callable[[], Sequence[Line]],
    budget_s: float | None = None,
    max_pairs: int = MAX_PAIRS,
    level: float = LEVEL,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[str], None] | None = None,
    questions: Collection[str] | None = None,
) -> dict:
    """Add pairs until every line is decided, the budget is spent or max_pairs are run (or no
    line can decide at all: every job failed). With `questions`, the run waits only on those
    lines; the others (decided by pairs of another kind, already stopped) are looked at with
    them, so that Holm's correction at each look is the report's.

    The first MIN_LOOK_PAIRS pairs always run; after that, one look after every new pair.
    A next pair is not started when the last one's duration would take the run past the budget.
    Returns the stopping record: pairs, why it stopped, and the pair count at which each line
    was first decided (None if never)."""
    start = clock()
    pairs, last = 0, 0.0
    first: dict[str, int | None] = {}
    reason = MAX
    while pairs < max_pairs:
        began = clock()
        add_pair()
        pairs += 1
        last = clock() - began
        if pairs >= MIN_LOOK_PAIRS:
            entries = decide(anytime_lines(lines_now(), level), "", level)
            if progress is not None:
                progress(
                    f"look after {pairs} pairs: "
                    + "; ".join(f"{e['question']}: {e['winner'] or e['outcome']}" for e in entries)
                )
            for entry in entries:
                if first.get(entry["question"]) is None:
                    done = entry["outcome"] in ("winner", "equivalent")
                    first[entry["question"]] = pairs if done else None
            if decided(entries, questions):
                reason = DECIDED
                break
            waited = [e for e in entries if questions is None or e["question"] in questions]
            if not any(_decides(e.get("detail", "")) for e in waited):
                reason = NOTHING
                break
        if budget_s is not None and pairs >= MIN_LOOK_PAIRS and clock() - start + last > budget_s:
            reason = BUDGET
            break
    return {
        "until_decided": True,
        "pairs": pairs,
        "stopped": reason,
        "min_look_pairs": MIN_LOOK_PAIRS,
        "max_pairs": max_pairs,
        "budget_s": budget_s,
        "seconds": clock() - start,
        "decided_at": first,
        "method": f"anytime-valid t mixture (g = {MIXTURE_G:g}), Holm at the stopping time",
    }


def describe_stopping(record: dict) -> str:
    """One line for the console and the report: how many pairs, and why the run stopped."""
    budget = record.get("budget_s")
    spent = f"{record['seconds']:.0f} s" + (f" of a {budget:.0f} s budget" if budget else "")
    return (
        f"added pairs until decided: stopped after {record['pairs']} pairs ({record['stopped']};"
        f" {spent}; first look at {record['min_look_pairs']} pairs, at most"
        f" {record['max_pairs']}; {record['method']})"
    )


def parse_duration(text: str) -> float:
    """'90s', '20m', '1h', '1h30m' or a plain number of seconds -> seconds."""
    s = text.strip().lower()
    total, number, seen = 0.0, "", False
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if s and s.replace(".", "", 1).isdigit():
            total = float(s)
        else:
            for ch in s:
                if ch.isdigit() or ch == ".":
                    number += ch
                elif ch in units and number:
                    total += float(number) * units[ch]
                    number, seen = "", True
                else:
                    raise ValueError
            if number or not seen:
                raise ValueError
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (say e.g. 90s, 20m, 1h or 1h30m)") from None
    if not total > 0:
        raise ValueError(f"a budget must be positive: {text!r}")
    return total
