"""Exact match and F1 (the official SQuAD definitions) on cases computed by hand."""

import pytest

from fairseq_longformer.squad_metrics import evaluate, exact_match, f1, gold_answers, normalize_answer


@pytest.mark.parametrize("text, normalized", [
    ("The Cat's  hat!", "cats hat"),              # lower case, punctuation dropped, article dropped, spaces
    ("An apple a day", "apple day"),
    ("theater anthem", "theater anthem"),         # articles only as whole words
    ("  a\tb\nc  ", "b c"),                        # 'a' is an article; tabs / newlines are white space
    ("Zürich «Paris»", "zürich «paris»"),          # only ASCII punctuation is removed (string.punctuation)
    ("U.S.-based", "usbased"),                     # punctuation is deleted, not replaced by a space
    ("the", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_compares_normalized_text():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0


def test_f1_by_hand():
    # prediction {cat, sat}, gold {cat, sat, down}: P = 2/2, R = 2/3 -> F1 = 2 * 1 * 2/3 / (5/3) = 0.8
    assert f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    # multiset overlap: x y y vs y y z -> 2 common, P = R = 2/3
    assert f1("x y y", "y y z") == pytest.approx(2 / 3)
    # repeated predicted token counts once per gold copy: y y y vs y z -> 1 common, P = 1/3, R = 1/2 -> 0.4
    assert f1("y y y", "y z") == pytest.approx(0.4)
    assert f1("paris", "london") == 0.0
    assert f1("Paris!", "paris") == 1.0


def test_no_answer_questions_score_only_an_empty_prediction():
    assert gold_answers([]) == [""]
    assert gold_answers(["the", "."]) == [""]          # nothing left after normalisation: a no-answer gold
    assert gold_answers(["the", "Paris"]) == ["Paris"]
    assert (exact_match("", ""), f1("", "")) == (1.0, 1.0)
    assert (exact_match("Paris", ""), f1("Paris", "")) == (0.0, 0.0)
    assert (exact_match("", "Paris"), f1("", "Paris")) == (0.0, 0.0)


def test_evaluate_takes_the_best_gold_and_averages_times_100():
    answers = {
        "q1": ["Denver Broncos", "The Broncos"],  # pred "Broncos": EM 0 / 0; F1 2/3 vs 1 -> best 1.0 (EM 1 too)
        "q2": ["Santa Clara, California"],        # pred "Santa Clara": P = 1, R = 2/3 -> F1 0.8, EM 0
        "q3": [],                                 # no answer, pred "" -> 1 / 1
        "q4": ["Levi's Stadium"],                 # no prediction -> 0 / 0
    }
    predictions = {"q1": "Broncos", "q2": "Santa Clara", "q3": ""}
    result = evaluate(predictions, answers)
    assert result["questions"] == 4
    assert result["exact_match"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 0) / 4)
