"""How well two or more raters agree, from their finished reviews of the current masks.

- Per detection: Cohen's kappa between two raters over the detections both decided (accept, reject,
  unsure), per case and pooled over the cases. Added microbleeds are not in it (they are not paired
  between raters); they count in the counts.
- Count agreement: each rater's final count per case (accepted + added, decisions.rater_values), and
  over the cases both finished the ICC(2,1) of those counts (Shrout & Fleiss 1979: two-way random
  effects, absolute agreement, single rater; McGraw & Wong's ICC(A,1)).
Every pair of raters is reported on its own, so a rater who did part of the cohort still counts.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from . import layout
from .decisions import DECISIONS, RATER_COLUMNS, ReviewError, detections, rater_values, read_reviews
from .files import atomic_output


def cohen_kappa(first: list[str], second: list[str], categories: tuple[str, ...] = DECISIONS) -> float | None:
    """Cohen's kappa of two raters' labels of the same items; None when there are none, or when
    chance agreement is certain (both gave every item one and the same label)."""
    if len(first) != len(second):
        raise ValueError("the two raters must label the same items")
    if not first:
        return None
    a, b = np.asarray(first), np.asarray(second)
    observed = float(np.mean(a == b))
    expected = sum(float(np.mean(a == c)) * float(np.mean(b == c)) for c in categories)
    return None if expected == 1 else (observed - expected) / (1 - expected)


def icc_agreement(counts) -> float | None:
    """ICC(2,1) of a cases x raters table; None with fewer than two cases or raters, or no variance."""
    table = np.asarray(counts, float)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        return None
    n, k = table.shape
    grand = table.mean()
    between_cases = k * ((table.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    between_raters = n * ((table.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + grand
    error = (residual ** 2).sum() / ((n - 1) * (k - 1))
    denominator = between_cases + (k - 1) * error + k * (between_raters - error) / n
    return None if denominator == 0 else float((between_cases - error) / denominator)


def _finished(output_dir: Path, record: dict) -> tuple[dict[str, dict], dict[str, int]]:
    """The raters' done reviews of the case's current mask, and each one's final count."""
    try:
        reviews = read_reviews(output_dir, record)
        done = {rater: review for rater, review in reviews.current.items() if review["done"]}
        table = detections(output_dir, record) if done else None
    except (OSError, ReviewError):
        return {}, {}
    return done, {rater: rater_values(table, review)["reviewed_count"] for rater, review in done.items()}


def paired(first: dict, second: dict) -> tuple[list[str], list[str]]:
    """Two reviews' decisions on the detections both decided, in lesion order."""
    both = sorted(set(first["detections"]) & set(second["detections"]), key=int)
    return [first["detections"][i]["decision"] for i in both], [second["detections"][i]["decision"] for i in both]


def agreement(output_dir: Path, records: list[dict]) -> dict:
    """{"cases": per case reviewed by two or more raters: its raters' counts and, per pair, kappa
    and the detections it is over; "pairs": per pair of raters over the cases both finished: kappa
    pooled over their detections, the counts' ICC(2,1), and how many cases and detections}."""
    cases, pooled = [], {}
    for record in records:
        done, counts = _finished(output_dir, record)
        if len(done) < 2:
            continue
        pairs = []
        for first, second in combinations(sorted(done), 2):
            labels = paired(done[first], done[second])
            pairs.append({"raters": [first, second], "detections": len(labels[0]), "kappa": cohen_kappa(*labels)})
            pair = pooled.setdefault((first, second), {"first": [], "second": [], "counts": []})
            pair["first"] += labels[0]
            pair["second"] += labels[1]
            pair["counts"].append([counts[first], counts[second]])
        cases.append({"case_id": record["case_id"], "counts": counts, "pairs": pairs})
    return {"cases": cases,
            "pairs": [{"raters": list(raters), "cases": len(pair["counts"]), "detections": len(pair["first"]),
                       "kappa": cohen_kappa(pair["first"], pair["second"]), "count_icc": icc_agreement(pair["counts"])}
                      for raters, pair in sorted(pooled.items())]}


RATER_TABLE_COLUMNS = ["case", "rater", "status", "done", *RATER_COLUMNS]


def rater_rows(output_dir: Path, records: list[dict]) -> list[dict]:
    """One row per case and rater with a review of the case's current mask (done or in progress)."""
    rows = []
    for record in records:
        if not (Path(output_dir) / layout.review_dir(record["case_id"])).is_dir():
            continue
        try:
            reviews = read_reviews(output_dir, record)
            table = detections(output_dir, record) if reviews.current else None
        except (OSError, ReviewError):
            continue  # reported in the summary's review_problems
        rows += [{"case": record["case_id"], "rater": rater, "status": reviews.status(rater), "done": review["done"],
                  **rater_values(table, review)} for rater, review in sorted(reviews.current.items())]
    return rows


def write_review_tables(output_dir: Path, records: list[dict]) -> None:
    """reviews/raters.tsv and reviews/agreement.json, when any case has been reviewed."""
    if not (Path(output_dir) / layout.REVIEWS_DIR).is_dir():
        return
    with atomic_output(Path(output_dir) / layout.REVIEW_RATERS_TSV) as temporary:
        pd.DataFrame(rater_rows(output_dir, records), columns=RATER_TABLE_COLUMNS).to_csv(
            temporary, sep="\t", index=False, na_rep="n/a")
    with atomic_output(Path(output_dir) / layout.REVIEW_AGREEMENT_JSON) as temporary:
        temporary.write_text(json.dumps(agreement(output_dir, records), indent=2) + "\n")
