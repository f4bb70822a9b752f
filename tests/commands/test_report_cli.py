"""``python -m hf_sparse report DIR``: JSON, PNG, tables, and clear errors."""

from __future__ import annotations

import json

import torch

from hf_sparse.__main__ import main
from hf_sparse.core.masks import nm_mask
from hf_sparse.core.targets import find_targets

from helpers import tiny_bert


def saved_24_model(tmp_path):
    model = tiny_bert()
    with torch.no_grad():
        for t in find_targets(model):
            t.param.mul_(nm_mask(t.param.abs(), 2, 4))
    folder = tmp_path / "model"
    model.save_pretrained(str(folder))  # plain transformers, dense with zeros
    return model, folder


def test_report_json_and_plot(tmp_path, capsys):
    model, folder = saved_24_model(tmp_path)
    png = tmp_path / "figs" / "report.png"
    code = main(["report", str(folder), "--json", "--input-shape", "2x8", "--repeats", "2", "--warmup", "0",
                 "--plot", str(png), "--no-sparse-kernels"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["pattern"] == "2:4"
    numel = sum(t.param.numel() for t in find_targets(model))
    assert data["totals"]["params"] == numel and data["totals"]["nonzeros"] == numel // 2
    # loaded with its saved head (BertForSequenceClassification), not a bare AutoModel
    assert data["model"]["params"] == sum(p.numel() for p in model.parameters())
    assert data["input_shapes"]["input_ids"] == [2, 8]
    assert data["verdict"].startswith("2:4 50%:")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_report_tables(tmp_path, capsys):
    _, folder = saved_24_model(tmp_path)
    assert main(["report", str(folder), "--input-shape", "1x8", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "bert.encoder.layer.0.attention.self.query.weight" in out
    assert "verdict: 2:4 50%: latency not measured" in out


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no config.json" in capsys.readouterr().err
    _, folder = saved_24_model(tmp_path)
    assert main(["report", str(folder), "--input-shape", "1xtwo"]) == 2
    assert "--input-shape" in capsys.readouterr().err
