"""The unified social credit code check character (GB 32100-2015)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.credit_code import ALPHABET, check_char, is_valid, make_code, problem

# published codes of well-known companies: 华为技术有限公司, 阿里巴巴(中国)网络技术有限公司,
# 小米科技有限责任公司
PUBLISHED = ["914403001922038216", "91330100716105852F", "91110108551385082Q"]


@pytest.mark.parametrize("code", PUBLISHED)
def test_published_codes_are_valid(code):
    assert is_valid(code)
    assert check_char(code[:17]) == code[17]


@pytest.mark.parametrize(
    ("first17", "check"),
    [
        ("91150200MA0N00000", "5"),
        ("91150203MA13Q7BX1", "H"),
        ("12150200011513457", "J"),
    ],
)
def test_constructed_codes_get_their_check_character(first17, check):
    assert check_char(first17) == check
    assert make_code(first17) == first17 + check
    assert is_valid(first17 + check)


def test_a_wrong_check_character_is_refused():
    code = PUBLISHED[0]
    wrong = code[:17] + ("7" if code[17] != "7" else "8")
    assert not is_valid(wrong)
    assert problem(wrong) == f"credit code {wrong} fails its check character"


@pytest.mark.parametrize("letter", ["I", "O", "S", "V", "Z"])
def test_letters_outside_the_alphabet_are_refused(letter):
    code = "91150200MA0N0000" + letter + "X"
    assert not is_valid(code)
    assert letter in (problem(code) or "")
    with pytest.raises(ValueError, match=letter):
        check_char(code[:17])


def test_lowercase_is_not_the_alphabet():
    assert not is_valid(PUBLISHED[1].lower())


@pytest.mark.parametrize("code", ["", "9115020", PUBLISHED[0][:17], PUBLISHED[0] + "0"])
def test_a_code_of_the_wrong_length_is_refused(code):
    assert not is_valid(code)
    assert "characters, not 18" in (problem(code) or "")


def test_check_char_wants_exactly_seventeen_characters():
    with pytest.raises(ValueError, match="17"):
        check_char("9115020")


@given(st.text(alphabet=ALPHABET, min_size=17, max_size=17))
def test_every_made_code_is_valid_and_one_changed_character_is_caught(first17):
    code = make_code(first17)
    assert is_valid(code)
    for position in range(18):
        for other in ALPHABET:
            if other != code[position]:
                assert not is_valid(code[:position] + other + code[position + 1 :])
