"""Text cleaning used by ``prepare``: AG News un-escaping, Unicode normalization, whitespace.

Everything is off unless the config asks for it. ``clean_text`` is a pure function so it
can be tested on plain strings; ``prepare`` applies it to whole Arrow batches through a
pandas UDF. The order is fixed, because later steps rely on earlier ones:

1. ``ag_news``: the escaping of the AG News CSVs (see shared/data/SOURCES.md): ``\\$`` is
   a dollar sign, any other run of backslashes stood for a line break, HTML entities lost
   their ``&`` (``#36;``, ``#39;``, ``quot;``, ``lt;``/``gt;``, ``amp;``), runs of spaces;
2. ``strip_html_tags``: drop ``<...>`` tags (AG descriptions carry ``<p>``, ``<FONT ...>``);
3. ``unicode_form``: NFC/NFKC/NFD/NFKD;
4. ``strip_control_chars``: drop C0/C1 control characters other than tab and newline;
5. ``fold_whitespace``: every run of whitespace becomes one space; ends are trimmed.
"""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Literal

from pydantic import Field

from textmill.runtime.config import StrictModel


class CleaningConf(StrictModel):
    ag_news: bool = Field(False, description="undo AG News escaping (backslash, \\$, bare entities, double spaces)")
    strip_html_tags: bool = Field(False, description="remove <...> tags")
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = Field(None, description="Unicode normalization")
    strip_control_chars: bool = Field(False, description="remove control characters except tab and newline")
    fold_whitespace: bool = Field(False, description="collapse whitespace runs to one space and trim")

    @property
    def enabled(self) -> bool:
        return any(
            [self.ag_news, self.strip_html_tags, self.unicode_form, self.strip_control_chars, self.fold_whitespace]
        )


_ESCAPED_DOLLAR = re.compile(r"\\\$")
_BACKSLASH_RUN = re.compile(r"\\+")
# Entities whose '&' was lost: '#36;' or 'quot;'. Real ones ('&quot;') are left for html.unescape.
_BARE_ENTITY = re.compile(r"(?<!&)(#\d{1,7};)|(?<![&A-Za-z])((?:quot|lt|gt|amp|nbsp|hellip|mdash|ndash);)")
_SPACE_RUN = re.compile(r" {2,}")
_HTML_TAG = re.compile(r"<[A-Za-z/!][^<>]*>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WHITESPACE_RUN = re.compile(r"\s+")


def undo_ag_news_escaping(text: str) -> str:
    text = _ESCAPED_DOLLAR.sub("$", text)
    text = _BACKSLASH_RUN.sub("\n", text)
    text = _BARE_ENTITY.sub(lambda m: "&" + m.group(0), text)
    # html.unescape maps '&#151;' through Windows-1252 to an em dash, as browsers do.
    text = html.unescape(text)
    return _SPACE_RUN.sub(" ", text)


def clean_text(text: str | None, conf: CleaningConf) -> str | None:
    """Apply the enabled cleaning steps to one text; None stays None."""
    if text is None:
        return None
    if conf.ag_news:
        text = undo_ag_news_escaping(text)
    if conf.strip_html_tags:
        text = _HTML_TAG.sub(" ", text)
    if conf.unicode_form:
        text = unicodedata.normalize(conf.unicode_form, text)
    if conf.strip_control_chars:
        text = _CONTROL.sub("", text)
    if conf.fold_whitespace:
        text = _WHITESPACE_RUN.sub(" ", text).strip()
    return text


# ---------------------------------------------------------------------------- what "empty" means
# One definition for every job (prepare, train_classifier, classify, the served model): a text
# is blank when it has no character outside Python's str.isspace, i.e. Unicode White_Space
# (tabs, newlines, NBSP, EM SPACE, U+3000, ...) plus the separators U+001C..U+001F. The Java
# regex below matches exactly that set, so Spark and Python agree.
BLANK_REGEX = r"(?U)^[\s\x{1C}-\x{1F}]*$"


def is_blank(text: str | None) -> bool:
    """True for None, "" and whitespace-only text (``str.isspace``)."""
    return text is None or not text or text.isspace()


def blank_column(column):
    """Spark Column: true where ``column`` is "" or whitespace only (null stays null)."""
    from pyspark.sql import functions as F

    return F.regexp_like(column, F.lit(BLANK_REGEX))
