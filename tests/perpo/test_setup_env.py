"""WordNet set-up: the lexnames file nltk needs, and a corpus METEOR can load."""

from __future__ import annotations

from perpo.setup_env import check_wordnet, find_wordnet, lexnames_from_manpage

MANPAGE_EXCERPT = "\n".join(
    [".TS", "l l l.", "_"]
    + [f"{i:02d}\tnoun.x{i}\tnouns" for i in range(3)]
    + [f"{i:02d}\tverb.y{i}\tverbs" for i in range(3, 44)]
    + ["44\tadj.ppl\tparticipial adjectives", ".TE"]
)


def test_lexnames_are_rebuilt_with_syntactic_categories():
    lines = lexnames_from_manpage(MANPAGE_EXCERPT).splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tnoun.x0\t1" and lines[5] == "05\tverb.y5\t2" and lines[44] == "44\tadj.ppl\t3"


def test_the_environment_has_a_complete_wordnet():
    # `make` runs `perpo setup`; METEOR's synonym stage needs this corpus.
    assert find_wordnet() is not None
    assert "WordNet 3.0" in check_wordnet()
