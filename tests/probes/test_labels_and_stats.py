"""Probe building blocks: Python depths and roles, token spans, information measures."""

from __future__ import annotations

import numpy as np
import pytest

from memlab.data.tokenizer import build_tokenizer
from memlab.probes.corpus import ProbeText, _add_document, token_spans
from memlab.probes.labels import ROLES, UNKNOWN_DEPTH, char_labels
from memlab.probes.stats import cosine_similarity_matrix, entropy_bits, mi_test, mutual_information_bits

CODE = "class A:\n    def f(self, x):\n        return g(x,\n  [1])\n\nprint('é')\n"


def label_at(text, needle, occurrence=0):
    labels = char_labels(text)
    i = -1
    for _ in range(occurrence + 1):
        i = text.index(needle, i + 1)
    return int(labels.indent[i]), int(labels.bracket[i]), ROLES[labels.role[i]]


def test_python_depths_and_roles():
    assert label_at(CODE, "class") == (0, 0, "def/class")
    assert label_at(CODE, "def") == (1, 0, "def/class")
    assert label_at(CODE, "self") == (1, 1, "self")
    assert label_at(CODE, "return") == (2, 0, "return/if")
    assert label_at(CODE, "(", 1) == (2, 0, "paren")  # a bracket sits at the depth outside it
    assert label_at(CODE, "1") == (2, 2, "number")  # continuation line: indentation kept, two brackets deep
    assert label_at(CODE, "print") == (0, 0, "identifier")
    assert label_at(CODE, ":") == (0, 0, "colon")
    assert label_at(CODE, "'é'") == (0, 1, "string")


def test_comment_lines_take_the_depth_of_the_code_line_after_them():
    """tokenize emits a block's INDENT / DEDENT only before its first code token, after comment lines."""
    code = "def f():\n    # opens the body\n    x = (1,\n         # in brackets\n         2)  # trailing\n# after\ny = 1\n"
    assert label_at(code, "# opens") == (1, 0, "comment")
    assert label_at(code, "# in brackets") == (1, 1, "comment")
    assert label_at(code, "# trailing") == (1, 0, "comment")
    assert label_at(code, "# after") == (0, 0, "comment")
    assert label_at(code, "y =") == (0, 0, "identifier")


@pytest.mark.parametrize("line_end", ["\r\n", "\r"])
def test_crlf_and_cr_line_ends_label_as_lf_ones_do(line_end):
    """Every character keeps the labels it has with LF line ends; a line end's characters are newlines."""
    code = "def f():\n    # c\n    x = (1,\n  [2])\n\n    return x\n"
    text = code.replace("\n", line_end)
    lf, other = char_labels(code), char_labels(text)
    same = np.array([text[i] != "\r" for i in range(len(text))])  # the characters both texts have, in order
    if line_end == "\r":
        same[:] = True
    for name in ("indent", "bracket", "role"):
        np.testing.assert_array_equal(getattr(other, name)[same], getattr(lf, name), err_msg=name)
    assert {ROLES[other.role[i]] for i, c in enumerate(text) if c == "\r"} == {"newline"}
    assert label_at(text, "[") == (1, 1, "operator") and label_at(text, "return") == (1, 0, "return/if")


def test_prose_has_no_depth_and_word_roles():
    text = "The cat sat on 3 mats, didn't it?"
    labels = char_labels(text)
    assert (labels.indent == UNKNOWN_DEPTH).all() and (labels.bracket == UNKNOWN_DEPTH).all()
    role = lambda word: ROLES[labels.role[text.index(word)]]  # noqa: E731
    assert (role("The"), role("cat"), role("3"), role(","), role(" ")) == (
        "function word", "content word", "numeral", "punctuation", "space",
    )  # fmt: skip


def test_token_spans_join_back_and_share_split_characters():
    byte = build_tokenizer("byte")
    ids = byte.encode(CODE)
    spans = token_spans(byte, CODE, ids)
    e = CODE.index("é")
    assert [tuple(s) for s in spans[ids.index(0xC3) : ids.index(0xC3) + 2]] == [(e, e + 1), (e, e + 1)]
    assert spans[-1, 1] == len(CODE)
    bpe = build_tokenizer("bpe", texts=[CODE * 20, "hello world " * 50], vocab_size=300)
    ids = bpe.encode(CODE)
    spans = token_spans(bpe, CODE, ids)
    assert "".join(CODE[a:b] for a, b in spans) == CODE
    assert token_spans(bpe, CODE + "x", ids) is None  # ids that do not decode to the text


def test_a_literal_replacement_character_in_the_text_is_a_character_of_its_own():
    text = 'x = "\ufffd"\nif x:\n    y = "\u00e9"\n'
    bpe = build_tokenizer("bpe", texts=[text * 20], vocab_size=300)
    for tokenizer in (build_tokenizer("byte"), bpe):
        ids = tokenizer.encode(text)
        spans = token_spans(tokenizer, text, ids)
        assert spans is not None, tokenizer
        for i, (a, b) in enumerate(spans):  # a token that decodes whole spans exactly its own text
            piece = tokenizer.decode([ids[i]])
            if "\ufffd" not in piece or text[a:b] == piece:
                assert text[a:b] == piece, (tokenizer, i, text[a:b], piece)
        assert label_at(text, "y") == (1, 0, "identifier")


def test_token_labels_come_from_the_first_non_space_character():
    byte = build_tokenizer("bpe", texts=[CODE * 20], vocab_size=300)
    ids = byte.encode(CODE)
    out = ProbeText()
    _add_document(out, CODE, np.array(ids), token_spans(byte, CODE, ids), seq_len=7)
    assert all(len(w) <= 7 for w in out.windows) and out.tokens == len(ids)
    pieces = [byte.decode([i]) for i in ids]
    ret = next(i for i, p in enumerate(pieces) if p.strip() == "return")
    assert (out.flat("indent")[ret], ROLES[out.flat("role")[ret]]) == (2, "return/if")


def test_mutual_information_extremes():
    assert mutual_information_bits(np.full((3, 4), 5.0)) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information_bits(np.eye(4)) == pytest.approx(2.0)  # = H(label)
    assert entropy_bits(np.ones(16)) == pytest.approx(4.0)


def test_mi_test_finds_planted_dependence_only():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 3000)
    planted = np.eye(8)[labels * 2] * 0.9 + 0.1 / 8  # slot 2d carries depth d
    noise = rng.dirichlet(np.ones(8), 3000)
    found, null = mi_test(labels, planted, 4, permutations=50), mi_test(labels, noise, 4, permutations=50)
    assert found["argmax"]["ratio_corrected"] > 0.95 and found["argmax"]["p_value"] < 0.05
    assert found["soft"]["bits_corrected"] > 0.5 and found["soft"]["p_value"] < 0.05
    assert abs(null["argmax"]["bits_corrected"]) < 0.01 and null["argmax"]["p_value"] > 0.05
    assert null["argmax"]["bits_corrected"] < null["argmax"]["bits"]  # Miller-Madow lowers the plug-in value


def test_a_corrected_mi_above_the_label_entropy_gives_a_ratio_clipped_to_one_and_flagged():
    """Miller-Madow raises the MI of a one-to-one table: the corrected MI exceeds H(label)."""
    labels = np.repeat(np.arange(4), 3)  # 12 tokens, slot = label
    argmax = mi_test(labels, np.eye(4)[labels], 4, permutations=0)["argmax"]
    assert argmax["bits"] == pytest.approx(2.0) and argmax["bits_corrected"] > 2.0
    assert argmax["ratio_corrected"] == 1.0 and argmax["ratio_corrected_clipped"] is True
    rng = np.random.default_rng(0)
    spread = rng.integers(0, 4, 2000)
    argmax = mi_test(spread, rng.dirichlet(np.ones(8), 2000), 4, permutations=0)["argmax"]
    assert argmax["bits_corrected"] < argmax["bits"] and argmax["ratio_corrected_clipped"] is False
    soft = mi_test(labels, np.eye(4)[labels], 4, permutations=5)["soft"]
    assert soft["ratio_corrected"] <= 1 and soft["ratio_corrected_clipped"] is False  # a bool, for JSON


def test_token_identity_null_separates_routing_by_token_from_routing_by_depth():
    """Depth correlates with the token; routing by token looks significant against plain shuffles
    but has no excess over the within-token null, while routing by depth itself does."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 20, 4000)
    depth = np.where(rng.random(4000) < 0.7, tokens % 4, rng.integers(0, 4, 4000))  # mostly set by the token
    by_token = np.eye(20)[tokens]
    by_depth = np.eye(20)[depth * 5]
    token_routed = mi_test(depth, by_token, 4, permutations=40, tokens=tokens)["argmax"]
    depth_routed = mi_test(depth, by_depth, 4, permutations=40, tokens=tokens)["argmax"]
    assert token_routed["p_value"] < 0.05 and token_routed["bits"] > 0.5  # plain shuffles are fooled
    assert abs(token_routed["excess_over_token_identity_bits"]) < 0.02 and token_routed["p_value_within_token"] > 0.05
    assert depth_routed["excess_over_token_identity_bits"] > 0.3 and depth_routed["p_value_within_token"] < 0.05


@pytest.mark.parametrize("seed", range(5))
def test_soft_routing_by_token_alone_ties_the_within_token_null(seed):
    """Soft routing set by the token alone: every within-token shuffle leaves the joint unchanged in
    exact arithmetic, so p = 1 (float summation order had made p uniform, and 'significant' at times)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 30, 3000)
    routing = rng.dirichlet(np.ones(16), 30).astype(np.float32)[tokens]  # a distribution per token id
    labels = np.where(rng.random(3000) < 0.5, tokens % 5, rng.integers(0, 5, 3000))
    result = mi_test(labels, routing, 5, permutations=50, seed=seed, tokens=tokens)
    for kind in ("soft", "argmax"):
        assert result[kind]["p_value_within_token"] == 1.0, kind
        assert abs(result[kind]["excess_over_token_identity_bits"]) < 1e-9


def test_without_permutations_only_measured_numbers_are_reported():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    result = mi_test(labels, rng.dirichlet(np.ones(8), 500), 4, permutations=0, tokens=rng.integers(0, 9, 500))
    soft, argmax = result["soft"], result["argmax"]
    assert soft["bits"] > 0 and argmax["bits_corrected"] < argmax["bits"]  # Miller-Madow needs no shuffles
    for record in (soft, argmax):
        assert record["p_value"] is record["shuffled_mean_bits"] is record["p_value_within_token"] is None
        assert record["within_token_mean_bits"] is record["excess_over_token_identity_bits"] is None
    assert soft["bits_corrected"] is soft["ratio_corrected"] is None  # had been the raw MI, "corrected" by 0


def test_within_token_shuffle_keeps_each_tokens_labels():
    from memlab.probes.stats import within_token_shuffle

    rng = np.random.default_rng(3)
    tokens, labels = rng.integers(0, 5, 300), rng.integers(0, 4, 300)
    shuffled = within_token_shuffle(labels, tokens, rng)
    for t in range(5):
        assert sorted(shuffled[tokens == t]) == sorted(labels[tokens == t])
    assert (shuffled != labels).any()


def test_soft_mi_equals_argmax_mi_for_one_hot_routing():
    rng = np.random.default_rng(1)
    labels, slots = rng.integers(0, 3, 500), rng.integers(0, 5, 500)
    out = mi_test(labels, np.eye(5)[slots], 3, permutations=0)
    assert out["soft"]["bits"] == pytest.approx(out["argmax"]["bits"])


def test_cosine_similarity():
    sim = cosine_similarity_matrix(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(sim, [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-12)


def test_miller_madow_adds_half_the_bins_over_n_in_bits():
    """A one-to-one table of 4 labels x 3 tokens: plug-in MI 2 bits, corrected by
    ((4 - 1) + (4 - 1) - (4 - 1)) / (2 N ln 2) = 3 / (24 ln 2) bits."""
    labels = np.repeat(np.arange(4), 3)
    r = mi_test(labels, np.eye(4)[labels], 4, permutations=0)["argmax"]
    assert r["bits"] == pytest.approx(2.0) and r["bits_corrected"] == pytest.approx(2 + 3 / (24 * np.log(2)))


def test_the_soft_mi_is_corrected_by_its_shuffles():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    routing = rng.dirichlet(np.ones(4), 300) * 0.5 + np.eye(4)[labels] * 0.5
    r = mi_test(labels, routing, 3, permutations=50)["soft"]
    assert r["bits_corrected"] == pytest.approx(r["bits"] - r["shuffled_mean_bits"]) and r["shuffled_mean_bits"] > 0


def test_the_mean_routing_of_many_tokens_is_summed_in_float64():
    """float32 sums of 3000 equal rows had drifted to 1.0000228 (an entropy 1.3e-5 bits off)."""
    from memlab.probes.routing import slot_usage

    routing = np.full((3000, 16), 0.05, np.float32)
    routing[:, 3] = 0.25
    mean = np.array(slot_usage(routing)["slot_mean_routing"])
    np.testing.assert_allclose(mean, routing[0].astype(np.float64), rtol=0, atol=1e-12)
