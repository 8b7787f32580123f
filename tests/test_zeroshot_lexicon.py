"""Class descriptions from WordNet (fashion_core/zeroshot/lexicon.py) on a tiny generated database, and the
calibration's grouped pseudo-unseen folds (zeroshot.fold_by)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.zeroshot.calibration import class_groups, pseudo_unseen_folds
from fashion_core.zeroshot.lexicon import WordNet, class_parts, describe_classes, part_senses, sense_text, wordnet_dir
from tests.helpers.zeroshot import SYNSETS, ConceptEncoder, cfg, make_wordnet


@pytest.fixture(scope="module")
def wn(tmp_path_factory) -> WordNet:
    return WordNet(make_wordnet(tmp_path_factory.mktemp("wordnet")))


def test_reads_senses_and_folds_plurals(wn):
    assert [s.gloss for s in wn.senses("Deodorant")] == [SYNSETS[5][2]]  # the example after the gloss is dropped
    assert wn.senses("Nail Polish")[0].lemmas == ("nail polish", "nail enamel", "nail varnish")
    assert wn.lemmas("Dolls") == ["doll"] and wn.lemmas("dollies") == ["dolly"]  # noun.exc and the rules agree
    assert set(wn.lemmas("booties")) == {"booty", "bootie"}  # both of the detachment rules' readings
    assert [s.lexfile for s in wn.senses("compact")] == [6, 6, 10]
    assert wn.senses("Shoe Laces") == [] and wn.source["sha256"]


def test_only_senses_a_product_can_be(wn):
    phrase, senses = part_senses(wn, "Baby Dolls")  # no "baby dolls" entry: its last word, the toy not the woman
    assert phrase == "Dolls" and [s.gloss for s in senses] == [SYNSETS[4][2]]
    assert part_senses(wn, "Capris") == ("", [])  # only a place
    assert part_senses(wn, "Mens Grooming Kit")[0] == "Kit"
    assert [s.gloss for s in part_senses(wn, "Booties")[1]] == [SYNSETS[9][2]]
    assert class_parts("Kajal and Eyeliner") == ["Kajal", "Eyeliner"]
    assert class_parts("Ties & Cufflinks") == ["Ties", "Cufflinks"]
    assert sense_text(wn.senses("deodorant")[0], "Deodorant") == SYNSETS[5][2] + " (also deodourant)"


def test_the_sense_closest_to_the_taxonomy_is_chosen(wn):
    enc = ConceptEncoder()
    classes = ["Compact", "Lipstick", "Nail Polish", "Deodorant", "Capris"]
    texts, found = describe_classes(classes, wn, enc.encode, template="a {} product")
    assert texts[3].startswith("a Deodorant product: Deodorant, a toiletry")
    assert texts[4] == "a Capris product" and found["Capris"] == "" and found["Compact"].startswith("Compact, a ")
    # the domain decides between the two artifact senses of "compact"
    cosmetics = enc.encode(["cosmetics case mirror woman purse"])[0]
    cars = enc.encode(["small economical car"])[0]
    assert "cosmetics case" in describe_classes(["Compact"], wn, enc.encode, domain=cosmetics)[0][0]
    assert "economical car" in describe_classes(["Compact"], wn, enc.encode, domain=cars)[0][0]


def test_a_missing_database_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_WORDNET_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setattr("fashion_core.zeroshot.lexicon.SEARCH_DIRS", ())
    with pytest.raises(ConfigError, match="wordnet-base.*FASHION_WORDNET_DIR"):
        wordnet_dir()
    monkeypatch.setenv("FASHION_WORDNET_DIR", str(make_wordnet(tmp_path / "wn")))
    assert wordnet_dir() == tmp_path / "wn"


def test_grouped_folds_hold_whole_groups_out():
    groups = {i: ("Bottomwear" if i < 8 else "Bags" if i < 13 else f"small{i % 5}") for i in range(24)}
    for seed in range(4):
        folds = pseudo_unseen_folds(np.arange(24), seed, groups=groups)
        assert len(folds) == 3 and sorted(np.concatenate(folds).tolist()) == list(range(24))
        held = [{groups[int(c)] for c in f} for f in folds]
        assert all(not (a & b) for i, a in enumerate(held) for b in held[i + 1 :])  # no group split between folds
        assert max(map(len, folds)) - min(map(len, folds)) <= 3  # largest groups first keeps them balanced
    assert pseudo_unseen_folds(np.arange(6), 0, groups={i: "one" for i in range(6)}) == []  # a single group
    rows = pd.DataFrame({"subCategory": ["Bags", "Bags", "Belts", "Bags", "Belts"]})
    assert class_groups(rows, np.array([0, 0, 1, 1, 1]), "subCategory") == {0: "Bags", 1: "Belts"}
    assert class_groups(rows, np.array([0, 0, 1, 1, 1]), "class") is None


def test_config_checks_the_new_keys():
    with pytest.raises(ConfigError, match="zeroshot.class_text"):
        cfg(**{"zeroshot.text": "mapped", "zeroshot.class_text": "thesaurus"})
    assert cfg(**{"zeroshot.text": "none"}).zeroshot.class_text == "wordnet"  # the ablation runs; nothing to describe
    with pytest.raises(ConfigError, match="zeroshot.fold_by"):
        cfg(**{"zeroshot.fold_by": "brand"})
    assert cfg(**{"zeroshot.fold_by": "subCategory"}).zeroshot.fold_by == "subCategory"
