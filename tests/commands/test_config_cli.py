"""``python -m hf_sparse config``: the config with complete method_args, --explain, --methods, --readme."""

from __future__ import annotations

import json

from hf_sparse import SparsityConfig
from hf_sparse.__main__ import main
from hf_sparse.methods.settings import TABLE_BEGIN, TABLE_END


def test_config_prints_every_method_option(capsys, tmp_path):
    assert main(["config", "--method", "rigl"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "rigl"
    assert data["method_args"] == {"drop_fraction": 0.3, "drop_fraction_decay": "cosine", "init": "random"}
    SparsityConfig.from_dict(data)  # the printout is a valid config
    path = tmp_path / "c.json"
    SparsityConfig(method="cyclic", method_args={"cycles": 1}, recipe="none").to_json_file(path)
    assert main(["config", str(path)]) == 0
    args = json.loads(capsys.readouterr().out)["method_args"]
    assert args["cycles"] == 1 and args["ratio"] == 3.0  # given + defaults


def test_explain_and_methods_table(capsys, tmp_path):
    assert main(["config", "--method", "acdc", "--explain"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("acdc: ") and "warmup (int | float, default 0.1)" in out
    assert out.rstrip().endswith("recipe='auto' chose nothing")  # no measured recipe for acdc
    assert main(["config", "--method", "gmp", "--explain"]) == 0
    assert "recipe='auto' chose: allocation='global', schedule_scale=3.0" in capsys.readouterr().out
    assert main(["config", "--method", "gmp"]) == 0  # the JSON is the config as the run will use it
    assert json.loads(capsys.readouterr().out)["allocation"] == "global"
    assert main(["config", "--methods"]) == 0
    assert "| `set` |" in capsys.readouterr().out
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{TABLE_BEGIN}\nstale\n{TABLE_END}\nrest\n")
    assert main(["config", "--methods", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale" not in text and "| `rigl` |" in text and text.endswith("rest\n")


def test_bad_method_args_in_a_file_name_the_field(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"method": "rigl", "method_args": {"drop_fraction": "x"}}))
    assert main(["config", str(path)]) != 0
    assert "method 'rigl': method_args.drop_fraction must be of type float" in capsys.readouterr().err
