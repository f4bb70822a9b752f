"""Every data file the repository ships belongs to one set (train, dev or test), and the sets are disjoint.

Why: figures are only trustworthy when no test sentence was seen in training or used for a choice. Each
data folder declares its files' sets in ``splits.json``; sentences are compared by the hash of their
normalized text, so near-copies (case, spacing, punctuation) count as the same sentence.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".conll", ".conllu", ".txt", ".parquet"}
SETS = ("train", "dev", "test")


def normalized_hash(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return hashlib.sha256(" ".join(re.findall(r"\w+", text)).encode("utf-8")).hexdigest()


def read_texts(path: Path, manifest: dict) -> list[str]:
    """The sentences of one data file, in the format its manifest names (csv/tsv columns, jsonl fields, CoNLL)."""
    columns = manifest.get("text_columns", ["sentence"])
    if path.suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
            return [" ".join(str(row[c]) for c in columns) for row in rows]
    if path.suffix == ".jsonl":
        texts = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                texts.append(" ".join(" ".join(v) if isinstance(v, list) else str(v) for v in (record[c] for c in columns)))
        return texts
    if path.suffix in (".conll", ".conllu"):
        column = 1 if path.suffix == ".conllu" else 0
        sentences, tokens = [], []
        for line in path.read_text(encoding="utf-8").splitlines() + [""]:
            if not line.strip():
                if tokens:
                    sentences.append(" ".join(tokens))
                tokens = []
            elif not line.startswith("#"):
                tokens.append(line.split("\t" if "\t" in line else None)[column])
        return sentences
    if path.suffix == ".txt":  # running text (a language-model corpus): its lines of at least min_words words
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line for line in lines if len(re.findall(r"\w+", line)) >= manifest.get("min_words", 1)]
    raise AssertionError(f"{path}: no reader for {path.suffix} files; add one to this test")


def manifests() -> list[Path]:
    return sorted(p for p in ROOT.rglob("splits.json") if ".git" not in p.parts)


def data_folders() -> set[Path]:
    """Folders under examples/ and benchmarks/ holding data files (results and manifests excluded)."""
    found = set()
    for top in ("examples", "benchmarks"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix in DATA_SUFFIXES and path.is_file() and "results" not in path.parts and path.name != "splits.json":
                found.add(path.parent)
    return found


def test_every_data_folder_has_a_manifest_listing_every_file():
    folders = data_folders()
    assert folders, "no shipped data found: the test would check nothing"
    for folder in folders:
        manifest_path = folder / "splits.json"
        assert manifest_path.is_file(), f"{folder} ships data files but no splits.json saying which set each is"
        listed = set(json.loads(manifest_path.read_text())["files"])
        shipped = {p.name for p in folder.iterdir() if p.suffix in DATA_SUFFIXES and p.name != "splits.json"
                   and not p.name.startswith("dense_reference")}
        assert shipped <= listed, f"{folder}: files {sorted(shipped - listed)} are not in splits.json"


@pytest.mark.parametrize("manifest_path", manifests(), ids=lambda p: str(p.parent.relative_to(ROOT)))
def test_sets_are_disjoint_by_normalized_text(manifest_path: Path):
    manifest = json.loads(manifest_path.read_text())
    if "files" not in manifest:  # a corpus read from a package: the manifest lists each set's sentence hashes
        hashes = {name: set(manifest["hashes"][name]) for name in SETS}
        assert all(hashes.values()), f"{manifest_path}: a set is empty"
    else:
        hashes = {name: set() for name in SETS}
    for name, which in manifest.get("files", {}).items():
        assert which in SETS, f"{manifest_path}: {name} is in set {which!r}, expected one of {SETS}"
        texts = read_texts(manifest_path.parent / name, manifest)
        assert texts, f"{name} holds no sentences"
        hashes[which] |= {normalized_hash(t) for t in texts}
    for i, first in enumerate(SETS):
        for second in SETS[i + 1:]:
            shared = hashes[first] & hashes[second]
            assert not shared, f"{manifest_path.parent}: {len(shared)} sentences are in both {first} and {second}"


def test_the_hash_sees_near_copies():
    assert normalized_hash("A  Great, great FILM!") == normalized_hash("a great great film")
    assert normalized_hash("a great film") != normalized_hash("a grate film")
