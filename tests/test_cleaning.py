"""Text cleaning on real-looking AG News rows and on Unicode edge cases."""

from __future__ import annotations

from textmill.data.cleaning import CleaningConf, clean_text

AG = CleaningConf(
    ag_news=True, strip_html_tags=True, unicode_form="NFC", strip_control_chars=True, fold_whitespace=True
)


def test_cleaning_is_off_unless_asked_for():
    text = "Fears for T N pension  #36;10\\$ quot;x\\y"
    assert clean_text(text, CleaningConf()) == text
    assert not CleaningConf().enabled


def test_ag_news_rows_are_unescaped():
    rows = {
        # real AG News descriptions (test.csv), with their escaping
        "SPACE.com - TORONTO, Canada -- A second\\team of rocketeers competing for the  #36;10 million Ansari X Prize": "SPACE.com - TORONTO, Canada -- A second team of rocketeers competing for the $10 million Ansari X Prize",
        "hurt by a \\$232 million charge": "hurt by a $232 million charge",
        "Unions representing workers at Turner   Newall say they are 'disappointed'": "Unions representing workers at Turner Newall say they are 'disappointed'",
        'The British Department for Education and Skills (DfES) recently launched a "Music Manifesto" campaign': 'The British Department for Education and Skills (DfES) recently launched a "Music Manifesto" campaign',
        "Tehran #39;s nuclear plans, quot;a threat quot;": 'Tehran \'s nuclear plans, "a threat "',
        "on a new threat #151;prostate cancer.": "on a new threat \u2014prostate cancer.",
        "Texas Instruments Inc. &lt;TXN.N&gt;, STMicroelectronics": "Texas Instruments Inc. , STMicroelectronics",
        "&lt;p&gt;ADVERTISEMENT&lt;/p&gt;&lt;p&gt;\\&lt;/p&gt; By Andrew Mitchell": "ADVERTISEMENT By Andrew Mitchell",
        "AT&amp;T said": "AT&T said",
        '\\\\"Sven Jaschan, self-confessed author': '"Sven Jaschan, self-confessed author',
    }
    for raw, expected in rows.items():
        assert clean_text(raw, AG) == expected, raw


def test_bare_entities_are_not_taken_from_inside_words():
    # 'forecast;' and 'equot;' are not entities; '#39;' glued to a word still is.
    assert (
        clean_text("the forecast; a prequot; Fed#39;s", CleaningConf(ag_news=True)) == "the forecast; a prequot; Fed's"
    )


def test_unicode_normalization_and_whitespace_folding():
    decomposed = "Cafe\u0301\u00a0\u00a0au\tlait\n\n"
    assert clean_text(decomposed, CleaningConf(unicode_form="NFC", fold_whitespace=True)) == "Caf\u00e9 au lait"
    assert clean_text("\ufb01le \u2460", CleaningConf(unicode_form="NFKC")) == "file 1"


def test_control_characters_are_dropped_but_tabs_and_newlines_kept():
    assert clean_text("a\x00b\x07c\td\ne\x9f", CleaningConf(strip_control_chars=True)) == "abc\td\ne"


def test_none_passes_through():
    assert clean_text(None, AG) is None
