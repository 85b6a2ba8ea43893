"""The portal's languages: Babel catalogues (``translations/<lang>/LC_MESSAGES/messages.po``), chosen by a
switch (``?lang=``, remembered in a cookie) or ``Accept-Language``, and one Jinja2 environment per language.

``scripts/setup.sh`` compiles the catalogues (``pybabel compile``); a catalogue found only as ``.po``
(a checkout that was not set up) is compiled in memory instead, so the pages never fall back to English
silently.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from functools import cache
from pathlib import Path

from babel.dates import format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from jinja2 import Environment, FileSystemLoader, select_autoescape

log = logging.getLogger("bioident.portal")

HERE = Path(__file__).parent
TRANSLATIONS = HERE / "translations"
DEFAULT = "en"
LANGUAGES = {"en": "English", "ru": "Русский", "uk": "Українська", "be": "Беларуская"}


def N_(message: str) -> str:  # noqa: N802 - the conventional name, which pybabel extracts
    """Marks a string for translation where it is defined; it is translated where it is shown."""
    return message


def negotiate(accept_language: str | None) -> str:
    """The best of our languages for an ``Accept-Language`` header (q-values honoured), else English."""
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        language = tag.strip().lower().split("-")[0]
        if language in LANGUAGES and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else DEFAULT


@cache
def translations(language: str) -> NullTranslations:
    if language == DEFAULT:
        return NullTranslations()
    folder = TRANSLATIONS / language / "LC_MESSAGES"
    if (folder / "messages.mo").is_file():
        return Translations.load(str(TRANSLATIONS), [language])
    log.warning("the %s catalogue is not compiled (run scripts/setup.sh); compiling it in memory", language)
    with open(folder / "messages.po", "rb") as po:
        catalog = read_po(po, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled)


@cache
def environment(language: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(language), newstyle=True)
    env.filters["when"] = lambda value: _when(value, language)
    env.globals["languages"] = LANGUAGES
    env.globals["lang"] = language
    return env


def _when(value: dt.datetime | None, language: str) -> str:
    if value is None:
        return ""
    return format_datetime(value, format="medium", tzinfo=dt.UTC, locale=language) + " UTC"


def gettext(language: str, message: str) -> str:
    return translations(language).gettext(message)


def render(language: str, template: str, **values: object) -> str:
    return environment(language).get_template(template).render(**values)
