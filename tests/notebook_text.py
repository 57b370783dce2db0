"""What a notebook's prose claims, read from its markdown: the numbers it states.

A number in the prose must be one the notebook's run prints (tests/test_notebook_claims.py),
so that no sentence can drift from what the code measures. Not claims, and so skipped:
section and list numbering, notebook numbers ("notebook 03"), LaTeX, code (inline or fenced), link
targets, years of citations "(2015)" and the References section.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"(?<![\w.\-/])\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?(?=(?:[x×%]|\b)(?![\w]))")
_SKIPPED = [
    re.compile(r"^\s*(```|~~~).*?^\s*\1", re.M | re.S),  # fenced code blocks (exercise solutions)
    re.compile(r"\$\$.*?\$\$|\$[^$\n]+\$", re.S),  # LaTeX
    re.compile(r"`[^`\n]*`"),  # inline code
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"<[^>\n]+>"),  # HTML tags
    re.compile(r"\([^()\n]*\b(?:19|20)\d\d[a-z]?\)"),  # citations: "(2015)", "(NeurIPS 2017)"
    re.compile(r"\b[Nn]otebooks? \d\d(?:(?:,| and| or| to|-|–) ?\d\d)*"),  # "notebook 03", "notebooks 02-04"
    re.compile(r"^\s*#+\s*\d+(?:\.\d+)*\.?\s", re.M),  # "## 3. Heading"
    re.compile(r"^\s*\d+\.\s", re.M),  # "1. item"
    re.compile(r"^#+ \d\d ·", re.M),  # the title "# 02 · ..."
]


def prose(markdown: str) -> str:
    """The markdown without the parts that state no measured claim (the References section on)."""
    text = markdown.split("## References")[0]
    for pattern in _SKIPPED:
        text = pattern.sub(" ", text)
    return text


def stated_numbers(markdown: str) -> list[str]:
    """The numbers a markdown text states in its prose, as written (``"20x"`` gives ``"20"``).

    >>> stated_numbers("## 2. Training\\nThe target has 20x fewer electrons at 0.05 Å/px (see notebook 03).")
    ['20', '0.05']
    >>> stated_numbers("A $\\\\sigma^2$ map, `n=4`, and fp32 or bf16 (Smith et al. (2015)).")
    []
    """
    return _NUMBER.findall(prose(markdown))


def printed_numbers(text: str) -> set[str]:
    """Every number in a run's printed text, in the forms a sentence could quote it.

    >>> sorted(printed_numbers("F1 0.950 at 60x, 1,000 frames"))
    ['0.95', '0.950', '1,000', '1000', '60']
    """
    found = set()
    for number in re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?", text):
        found.add(number)
        plain = number.replace(",", "")
        found.add(plain)
        if "." in plain and "e" not in plain.lower():
            found.add(plain.rstrip("0").rstrip("."))
    return found
