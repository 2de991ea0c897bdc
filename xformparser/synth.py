"""Synthetic multilingual forms (InDFormSFT-style) with XFUND ground truth.

``render_form(seed, lang)`` draws one form page and returns a :class:`SyntheticForm`: the page image (PIL,
RGB) and its XFUND document (entities with id, text, box, label, words and key -> value ``linking``),
readable by :func:`xformparser.formats.read_xfund`. ``generate_dataset(out_dir, n, langs, seed)`` writes
``n`` forms per language: ``images/<lang>_<i>.jpg`` plus one ``<lang>.json`` XFUND file per language.

What a page holds (a random mix per seed):
- a title and section titles (``header``), a company line, a form number and a page number (``other``);
- field blocks: inline ``Key: value``; boxed grid cells with the key above its value; "caption" fields
  where the value is written on a line ABOVE its key, or sits LEFT of its key (common on non-English
  forms); keys with several values; checkbox groups (checked options are the key's values, unchecked
  ones are ``other``); tables with a header row (each cell is linked to its column header) and a total;
  free-text paragraphs (``other``); signature and place/date lines; a rubber stamp (``other``).
- field names are translated per language; values come from ``faker`` in the language's locale (names,
  addresses, dates, amounts, IDs, phone numbers, e-mails), so they are in the language's script.
- scan-like noise: paper tint, uneven lighting, sensor noise, blur, a slight rotation (every box is
  rotated with the page and re-fitted), JPEG artefacts; plus layout jitter.

Determinism: the same (seed, lang) gives the same image bytes and JSON on the same installation (faker,
Pillow and the fonts fixed): every random choice comes from generators seeded from ``f"{seed}:{lang}"``.

Fonts are real TrueType fonts found on the system: Latin from Debian's ``fonts-dejavu-core`` and
``fonts-liberation2`` (falling back to the DejaVu copy that matplotlib ships), CJK from Debian's
``fonts-wqy-microhei`` or ``fonts-noto-cjk``. ``make setup`` installs the Debian packages when apt is
available. ``XFORMPARSER_FONT_DIR`` adds a folder to search; a missing CJK font is a clear
:class:`FontNotFoundError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "zh", "ja")
CJK_LANGUAGES = ("zh", "ja")
FAKER_LOCALES = {"en": "en_US", "de": "de_DE", "fr": "fr_FR", "es": "es_ES", "it": "it_IT", "pt": "pt_PT",
                 "zh": "zh_CN", "ja": "ja_JP"}
PAGE_WIDTH, PAGE_HEIGHT = 850, 1100
MARGIN = 48

# --------------------------------------------------------------------------------------------- fonts
FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts/opentype", "/usr/share/fonts")
# (family file names searched under FONT_DIRS, in order of preference); Debian package in the comment.
LATIN_FONTS = {
    "sans": ["DejaVuSans.ttf", "LiberationSans-Regular.ttf"],            # fonts-dejavu-core, fonts-liberation2
    "sans_bold": ["DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf"],
    "serif": ["LiberationSerif-Regular.ttf", "DejaVuSerif.ttf"],
    "serif_bold": ["LiberationSerif-Bold.ttf", "DejaVuSerif-Bold.ttf"],
    "mono": ["LiberationMono-Regular.ttf", "DejaVuSansMono.ttf"],
    "condensed": ["DejaVuSansCondensed.ttf", "LiberationSans-Regular.ttf"],
    "italic": ["LiberationSerif-Italic.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSans-Oblique.ttf"],
}
CJK_FONT_FILES = ["wqy-microhei.ttc", "NotoSansCJK-Regular.ttc", "wqy-zenhei.ttc", "NotoSerifCJK-Regular.ttc"]
CJK_BOLD_FONT_FILES = ["NotoSansCJK-Bold.ttc"] + CJK_FONT_FILES


class FontNotFoundError(RuntimeError):
    """No usable font for a language's script; the message says which package to install."""


@lru_cache(maxsize=None)
def _font_index() -> dict[str, str]:
    """File name -> path for every font under the search folders (first found wins)."""
    folders = [os.environ["XFORMPARSER_FONT_DIR"]] if os.environ.get("XFORMPARSER_FONT_DIR") else []
    folders += list(FONT_DIRS)
    try:  # matplotlib ships DejaVu: a Latin fallback on machines without Debian's font packages
        import matplotlib

        folders.append(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf"))
    except ImportError:
        pass
    index: dict[str, str] = {}
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for root, _dirs, files in sorted(os.walk(folder)):
            for name in sorted(files):
                if name.lower().endswith((".ttf", ".ttc", ".otf")):
                    index.setdefault(name, os.path.join(root, name))
    return index


def find_font(role: str, lang: str) -> str:
    """Path of the font file for a role (sans, serif, mono, ..., bold variants) and a language."""
    index = _font_index()
    if lang in CJK_LANGUAGES:
        candidates = CJK_BOLD_FONT_FILES if role.endswith("bold") else CJK_FONT_FILES
        for name in candidates:
            if name in index:
                return index[name]
        raise FontNotFoundError(
            f"no CJK font for language {lang!r}: install Debian's fonts-wqy-microhei or fonts-noto-cjk "
            "('make setup' does), or set XFORMPARSER_FONT_DIR to a folder holding wqy-microhei.ttc")
    for name in LATIN_FONTS[role]:
        if name in index:
            return index[name]
    raise FontNotFoundError(
        f"no Latin font for role {role!r}: install Debian's fonts-dejavu-core and fonts-liberation2, "
        "or set XFORMPARSER_FONT_DIR")


@lru_cache(maxsize=256)
def _load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def font_for(role: str, lang: str, size: int) -> ImageFont.FreeTypeFont:
    return _load_font(find_font(role, lang), int(size))


def fonts_used(langs=LANGUAGES) -> dict[str, str]:
    """The font files the generator uses for these languages (for dataset cards)."""
    found = {}
    for lang in langs:
        roles = ("sans", "sans_bold") if lang in CJK_LANGUAGES else tuple(LATIN_FONTS)
        for role in roles:
            found[os.path.basename(find_font(role, lang))] = find_font(role, lang)
    return found


# ------------------------------------------------------------------------------------ vocabularies
# Field names per language: concept -> (en, de, fr, es, it, pt, zh, ja)
_KEYS = {
    "name": ("Name", "Name", "Nom", "Nombre", "Nome", "Nome", "姓名", "氏名"),
    "address": ("Address", "Anschrift", "Adresse", "Dirección", "Indirizzo", "Morada", "地址", "住所"),
    "city": ("City", "Ort", "Ville", "Ciudad", "Città", "Localidade", "城市", "市区町村"),
    "postcode": ("ZIP code", "PLZ", "Code postal", "Código postal", "CAP", "Código postal", "邮政编码", "郵便番号"),
    "phone": ("Phone", "Telefon", "Téléphone", "Teléfono", "Telefono", "Telefone", "电话", "電話番号"),
    "email": ("E-mail", "E-Mail", "Courriel", "Correo electrónico", "E-mail", "Correio eletrónico", "电子邮箱",
              "メールアドレス"),
    "date": ("Date", "Datum", "Date", "Fecha", "Data", "Data", "日期", "日付"),
    "birth_date": ("Date of birth", "Geburtsdatum", "Date de naissance", "Fecha de nacimiento", "Data di nascita",
                   "Data de nascimento", "出生日期", "生年月日"),
    "amount": ("Amount", "Betrag", "Montant", "Importe", "Importo", "Montante", "金额", "金額"),
    "invoice_no": ("Invoice no.", "Rechnungsnummer", "N° de facture", "N.º de factura", "N. fattura",
                   "N.º da fatura", "发票号码", "請求書番号"),
    "customer_no": ("Customer no.", "Kundennummer", "N° client", "N.º de cliente", "Codice cliente",
                    "N.º de cliente", "客户编号", "顧客番号"),
    "company": ("Company", "Firma", "Société", "Empresa", "Azienda", "Empresa", "公司名称", "会社名"),
    "job": ("Occupation", "Beruf", "Profession", "Profesión", "Professione", "Profissão", "职业", "職業"),
    "id_number": ("ID number", "Ausweisnummer", "N° d'identité", "N.º de documento", "N. documento",
                  "N.º de identificação", "身份证号", "身分証番号"),
    "signature": ("Signature", "Unterschrift", "Signature", "Firma", "Firma", "Assinatura", "签名", "署名"),
    "place_date": ("Place, date", "Ort, Datum", "Lieu, date", "Lugar y fecha", "Luogo e data", "Local e data",
                   "地点和日期", "場所・日付"),
    "description": ("Description", "Beschreibung", "Désignation", "Descripción", "Descrizione", "Descrição",
                    "项目", "品目"),
    "quantity": ("Quantity", "Menge", "Quantité", "Cantidad", "Quantità", "Quantidade", "数量", "数量"),
    "unit_price": ("Unit price", "Einzelpreis", "Prix unitaire", "Precio unitario", "Prezzo unitario",
                   "Preço unitário", "单价", "単価"),
    "total": ("Total", "Gesamtbetrag", "Total", "Total", "Totale", "Total", "合计", "合計"),
    "payment": ("Payment method", "Zahlungsart", "Mode de paiement", "Forma de pago", "Metodo di pagamento",
                "Forma de pagamento", "付款方式", "支払方法"),
    "contact_by": ("Contact by", "Kontakt per", "Contact par", "Contacto por", "Contatto via", "Contacto por",
                   "联系方式", "連絡方法"),
    "remarks": ("Remarks", "Bemerkungen", "Remarques", "Observaciones", "Note", "Observações", "备注", "備考"),
    "contacts": ("Contact persons", "Ansprechpartner", "Interlocuteurs", "Personas de contacto", "Referenti",
                 "Pessoas de contacto", "联系人", "担当者"),
}
_OPTIONS = {
    "payment": (("Cash", "Credit card", "Bank transfer"), ("Bar", "Karte", "Überweisung"),
                ("Espèces", "Carte", "Virement"), ("Efectivo", "Tarjeta", "Transferencia"),
                ("Contanti", "Carta", "Bonifico"), ("Numerário", "Cartão", "Transferência"),
                ("现金", "银行卡", "转账"), ("現金", "カード", "振込")),
    "contact_by": (("Phone", "E-mail", "Letter"), ("Telefon", "E-Mail", "Brief"),
                   ("Téléphone", "E-mail", "Courrier"), ("Teléfono", "Correo", "Carta"),
                   ("Telefono", "E-mail", "Posta"), ("Telefone", "E-mail", "Carta"),
                   ("电话", "邮件", "信件"), ("電話", "メール", "郵便")),
}
_TITLES = (
    ("Application Form", "Invoice", "Registration Form", "Order Form", "Customer Information"),
    ("Antragsformular", "Rechnung", "Anmeldeformular", "Bestellformular", "Kundendaten"),
    ("Formulaire de demande", "Facture", "Formulaire d'inscription", "Bon de commande", "Informations client"),
    ("Formulario de solicitud", "Factura", "Formulario de registro", "Hoja de pedido", "Datos del cliente"),
    ("Modulo di richiesta", "Fattura", "Modulo di iscrizione", "Modulo d'ordine", "Dati del cliente"),
    ("Formulário de pedido", "Fatura", "Formulário de inscrição", "Nota de encomenda", "Dados do cliente"),
    ("申请表", "发票", "登记表", "订购单", "客户信息"),
    ("申請書", "請求書", "登録用紙", "注文書", "お客様情報"),
)
_SECTIONS = (
    ("Personal details", "Contact details", "Payment", "Items", "Confirmation"),
    ("Persönliche Angaben", "Kontaktdaten", "Zahlung", "Positionen", "Bestätigung"),
    ("Informations personnelles", "Coordonnées", "Paiement", "Articles", "Confirmation"),
    ("Datos personales", "Datos de contacto", "Pago", "Artículos", "Confirmación"),
    ("Dati personali", "Recapiti", "Pagamento", "Articoli", "Conferma"),
    ("Dados pessoais", "Contactos", "Pagamento", "Artigos", "Confirmação"),
    ("个人信息", "联系方式", "付款信息", "项目明细", "确认"),
    ("個人情報", "連絡先", "お支払い", "明細", "確認"),
)
_STAMPS = (("PAID", "APPROVED", "RECEIVED"), ("BEZAHLT", "GENEHMIGT", "EINGEGANGEN"),
           ("PAYÉ", "APPROUVÉ", "REÇU"), ("PAGADO", "APROBADO", "RECIBIDO"), ("PAGATO", "APPROVATO", "RICEVUTO"),
           ("PAGO", "APROVADO", "RECEBIDO"), ("已付款", "已批准", "已收到"), ("支払済", "承認", "受領"))
_PAGE = ("Page", "Seite", "Page", "Página", "Pagina", "Página", "页", "ページ")
_DATE_FORMATS = {"en": ("%m/%d/%Y", "%B %d, %Y"), "de": ("%d.%m.%Y",), "fr": ("%d/%m/%Y",), "es": ("%d/%m/%Y",),
                 "it": ("%d/%m/%Y",), "pt": ("%d/%m/%Y", "%d-%m-%Y"), "zh": ("%Y年%m月%d日", "%Y-%m-%d"),
                 "ja": ("%Y年%m月%d日", "%Y/%m/%d")}
_INLINE_KEY_CONCEPTS = ("name", "address", "city", "postcode", "phone", "email", "date", "birth_date", "amount",
                        "invoice_no", "customer_no", "company", "job", "id_number")


def _lang_index(lang: str) -> int:
    return LANGUAGES.index(lang)


def key_text(concept: str, lang: str) -> str:
    return _KEYS[concept][_lang_index(lang)]


# ------------------------------------------------------------------------------------------- values
class _Values:
    """Field values from faker in the language's locale; all randomness from the form's seed."""

    def __init__(self, lang: str, rng: random.Random, faker_seed: int):
        self.lang, self.rng = lang, rng
        self.fake = _faker(lang)
        self.fake.seed_instance(faker_seed)

    def _clean(self, text: str) -> str:
        return " ".join(str(text).replace("\n", " ").split())

    def date(self) -> str:
        day = self.fake.date_between_dates(_date(1990, 1, 1), _date(2026, 12, 31))
        return self._format_date(day)

    def _format_date(self, day) -> str:
        pattern = self.rng.choice(_DATE_FORMATS[self.lang])
        if "%B" in pattern:
            return f"{day.strftime('%B')} {day.day}, {day.year}"  # English month names regardless of C locale
        return day.strftime(pattern)

    def amount(self) -> str:
        value = self.rng.choice([self.rng.uniform(5, 300), self.rng.uniform(300, 20000)])
        whole, cents = int(value), int(round((value - int(value)) * 100)) % 100
        grouped = f"{whole:,}"
        if self.lang == "en":
            return f"${grouped}.{cents:02d}"
        if self.lang in ("zh",):
            return f"¥{grouped}.{cents:02d}"
        if self.lang == "ja":
            return self.rng.choice([f"¥{grouped}", f"{grouped}円"])
        separator = {"de": ".", "es": ".", "it": ".", "fr": " ", "pt": " "}[self.lang]
        return f"{grouped.replace(',', separator)},{cents:02d} €"

    def value(self, concept: str) -> str:
        fake, rng = self.fake, self.rng
        if concept == "name":
            return self._clean(fake.name())
        if concept == "address":
            if self.lang == "ja":  # ja_JP's street_address mixes in English words
                return self._clean(fake.prefecture() + fake.city() + fake.town() + fake.chome() + fake.ban())
            return self._clean(fake.street_address())
        if concept == "city":
            return self._clean(fake.city())
        if concept == "postcode":
            return self._clean(fake.postcode())
        if concept == "phone":
            return self._clean(fake.phone_number())
        if concept == "email":
            return self._clean(fake.email())
        if concept == "date":
            return self.date()
        if concept == "birth_date":
            return self._format_date(fake.date_of_birth(minimum_age=18, maximum_age=90))
        if concept in ("amount", "total", "unit_price"):
            return self.amount()
        if concept == "invoice_no":
            return fake.bothify(rng.choice(["INV-####-??", "R-######", "####/##"])).upper()
        if concept == "customer_no":
            return fake.bothify(rng.choice(["K-#####", "C######", "##-###-##"])).upper()
        if concept == "id_number":
            return fake.bothify(rng.choice(["??#######", "#########", "###-##-####"])).upper()
        if concept == "company":
            return self._clean(fake.company())
        if concept == "job":
            return self._clean(fake.job())[:40]
        if concept == "quantity":
            return str(rng.randint(1, 25))
        if concept == "description":
            words = fake.words(nb=rng.randint(1, 3))
            joiner = "" if self.lang in CJK_LANGUAGES else " "
            return self._clean(joiner.join(words))
        raise KeyError(concept)

    def sentence(self, words: int) -> str:
        if self.lang in CJK_LANGUAGES:
            return "".join(self.fake.words(nb=words)) + "。"
        return self._clean(self.fake.sentence(nb_words=words))


def _date(year, month, day):
    import datetime

    return datetime.date(year, month, day)


@lru_cache(maxsize=None)
def _faker(lang: str):
    try:
        from faker import Faker
    except ImportError as error:  # pragma: no cover - faker is a declared dependency
        raise RuntimeError("xformparser synth needs the 'faker' package (pip install faker)") from error
    fake = Faker(FAKER_LOCALES[lang])
    # faker's it_IT address provider builds its `cities` list from a set, so the list's order (and with it
    # every seeded draw) changed with PYTHONHASHSEED from one process to the next; sorted, the draws depend
    # on the seed only (random_element on a plain list is uniform, so the distribution is unchanged)
    for provider in fake.get_providers():
        cities = getattr(provider, "cities", None)
        if isinstance(cities, list) and all(isinstance(city, str) for city in cities):
            provider.cities = sorted(cities)
    return fake


# ------------------------------------------------------------------------------------------ the page
@dataclass
class _TextRun:
    text: str
    x: float
    y: float
    font: ImageFont.FreeTypeFont
    fill: tuple


@dataclass
class _EntitySpec:
    id: int
    label: str
    runs: list  # _TextRun per line
    words: list = field(default_factory=list)  # [(text, [x0, y0, x1, y1])]


@dataclass
class SyntheticForm:
    """One rendered page: ``image`` (PIL RGB) and ``document`` (an XFUND document dict)."""

    image: Image.Image
    document: dict
    language: str
    seed: int

    @property
    def entities(self) -> list[dict]:
        return self.document["document"]

    def links(self) -> list[tuple[int, int]]:
        """Key -> value entity id pairs."""
        pairs = {tuple(pair) for entity in self.entities for pair in entity["linking"]}
        return sorted(pairs)


class _Page:
    """Collects entities, links and graphics in page coordinates, then draws them."""

    def __init__(self, lang: str, rng: random.Random):
        self.lang, self.rng = lang, rng
        self.entities: list[_EntitySpec] = []
        self.links: list[tuple[int, int]] = []
        self.graphics: list[tuple] = []  # ("line"|"rect"|"check", coords, colour, width)
        self.y = MARGIN
        self.cjk = lang in CJK_LANGUAGES
        self.body_size = rng.randint(14, 18)
        self.key_role = rng.choice(["sans", "sans_bold", "serif_bold", "condensed"])
        self.value_role = rng.choice(["mono", "serif", "sans", "italic"])
        self.ink = rng.choice([(20, 20, 20), (35, 35, 45)])
        self.value_ink = rng.choice([(20, 20, 20), (20, 40, 140), (30, 30, 90)])  # filled in with a blue pen
        self.colon = rng.random() < 0.75

    # ---- state for rolling back a block that does not fit
    def mark(self):
        return len(self.entities), len(self.links), len(self.graphics), self.y

    def rollback(self, mark) -> None:
        entities, links, graphics, y = mark
        del self.entities[entities:], self.links[links:], self.graphics[graphics:]
        self.y = y

    def font(self, role: str, size: int):
        return font_for(role, self.lang, size)

    def width(self, text: str, font) -> float:
        return font.getlength(text)

    def key(self, concept: str) -> str:
        text = key_text(concept, self.lang)
        if not self.colon:
            return text
        if self.cjk:
            return text + "："
        return text + (" :" if self.lang == "fr" else ":")

    def add_entity(self, lines, label: str, font, fill=None) -> int:
        """``lines``: [(text, x, y)] drawn with ``font``; returns the new entity id."""
        fill = fill or self.ink
        entity = _EntitySpec(len(self.entities), label, [_TextRun(t, x, y, font, fill) for t, x, y in lines])
        self.entities.append(entity)
        return entity.id

    def link(self, key_id: int, value_id: int) -> None:
        self.links.append((key_id, value_id))

    def jitter(self, amount: float = 2.0) -> float:
        return self.rng.uniform(-amount, amount)

    def wrap(self, text: str, font, max_width: float, max_lines: int = 3) -> list[str]:
        """Greedy wrap by words (Latin) or characters (CJK); the last line is cut to fit."""
        units = list(text) if self.cjk else text.split(" ")
        joiner = "" if self.cjk else " "
        lines, current = [], ""
        for unit in units:
            candidate = unit if not current else current + joiner + unit
            if self.width(candidate, font) <= max_width or not current:
                current = candidate
            else:
                lines.append(current)
                current = unit
        if current:
            lines.append(current)
        lines = lines[:max_lines]
        while lines and self.width(lines[-1], font) > max_width and len(lines[-1]) > 1:
            lines[-1] = lines[-1][:-1].rstrip()
        return [line for line in lines if line.strip()]

    def fit(self, text: str, font, max_width: float) -> str:
        return self.wrap(text, font, max_width, max_lines=1)[0] if text.strip() else text

    def line_height(self, font) -> float:
        ascent, descent = font.getmetrics()
        return ascent + descent


# ------------------------------------------------------------------------------------------ blocks
def _block_title(page: _Page, values: _Values) -> None:
    rng, lang = page.rng, page.lang
    small = page.font("sans", page.body_size - 2)
    company = page.fit(values.value("company"), small, 330)
    page.add_entity([(company, MARGIN + page.jitter(), page.y)], "other", small)
    form_number = values.fake.bothify(rng.choice(["Form ??-###", "F-####", "No. #####"])).upper()
    if page.cjk:
        form_number = values.fake.bothify("No. #####")
    width = page.width(form_number, small)
    page.add_entity([(form_number, PAGE_WIDTH - MARGIN - width, page.y)], "other", small)
    page.y += page.line_height(small) + 18
    title_font = page.font(rng.choice(["sans_bold", "serif_bold"]), rng.randint(26, 34))
    title = rng.choice(_TITLES[_lang_index(lang)])
    width = page.width(title, title_font)
    x = (PAGE_WIDTH - width) / 2 if rng.random() < 0.7 else MARGIN
    page.add_entity([(title, x, page.y)], "header", title_font)
    page.y += page.line_height(title_font) + 14
    if rng.random() < 0.6:
        page.graphics.append(("line", (MARGIN, page.y, PAGE_WIDTH - MARGIN, page.y), page.ink, 2))
        page.y += 12


def _section_title(page: _Page, index: int) -> None:
    font = page.font("sans_bold", page.body_size + 3)
    title = _SECTIONS[_lang_index(page.lang)][index % 5]
    page.y += 8
    page.add_entity([(title, MARGIN + page.jitter(), page.y)], "header", font)
    page.y += page.line_height(font) + 10


def _pick_concepts(page: _Page, count: int) -> list[str]:
    return page.rng.sample(_INLINE_KEY_CONCEPTS, count)


def _block_inline(page: _Page, values: _Values) -> None:
    """``Key: value`` rows, one or two columns; the value sometimes wraps onto a second line."""
    rng = page.rng
    columns = rng.choice([1, 1, 2])
    key_font = page.font(page.key_role, page.body_size)
    value_font = page.font(page.value_role, page.body_size)
    column_width = (PAGE_WIDTH - 2 * MARGIN) / columns
    concepts = _pick_concepts(page, rng.randint(2, 4) * columns)
    line = page.line_height(value_font)
    for row_start in range(0, len(concepts), columns):
        row_height = line
        for column, concept in enumerate(concepts[row_start:row_start + columns]):
            x = MARGIN + column * column_width + page.jitter()
            key = page.key(concept)
            key_width = page.width(key, key_font)
            key_id = page.add_entity([(key, x, page.y + page.jitter(1))], "question", key_font)
            value_x = x + key_width + rng.randint(8, 30)
            available = MARGIN + (column + 1) * column_width - value_x - 12
            lines = page.wrap(values.value(concept), value_font, available, max_lines=2)
            if not lines:
                continue
            placed = [(text, value_x + page.jitter(1), page.y + i * line + page.jitter(1)) for i, text in enumerate(lines)]
            value_id = page.add_entity(placed, "answer", value_font, page.value_ink)
            page.link(key_id, value_id)
            if rng.random() < 0.4:  # a fill-in underline under the value
                underline_y = page.y + line + 1
                page.graphics.append(("line", (value_x - 2, underline_y, value_x + available, underline_y),
                                      (120, 120, 120), 1))
            row_height = max(row_height, len(lines) * line)
        page.y += row_height + rng.randint(8, 16)


def _block_grid(page: _Page, values: _Values) -> None:
    """Boxed cells (like many scanned forms): a small key in the cell's top-left, the value below it."""
    rng = page.rng
    columns = rng.choice([2, 3])
    rows = rng.choice([1, 2])
    key_font = page.font(page.key_role, max(page.body_size - 3, 11))
    value_font = page.font(page.value_role, page.body_size)
    cell_width = (PAGE_WIDTH - 2 * MARGIN) / columns
    cell_height = page.line_height(key_font) + page.line_height(value_font) + 16
    concepts = _pick_concepts(page, columns * rows)
    for row in range(rows):
        top = page.y + row * cell_height
        for column in range(columns):
            left = MARGIN + column * cell_width
            page.graphics.append(("rect", (left, top, left + cell_width, top + cell_height), page.ink, 1))
            concept = concepts[row * columns + column]
            key = key_text(concept, page.lang)
            key_id = page.add_entity([(key, left + 5, top + 4)], "question", key_font)
            text = page.fit(values.value(concept), value_font, cell_width - 16)
            value_id = page.add_entity([(text, left + 8 + page.jitter(), top + 8 + page.line_height(key_font))],
                                       "answer", value_font, page.value_ink)
            page.link(key_id, value_id)
    page.y += rows * cell_height + 14


def _block_caption(page: _Page, values: _Values) -> None:
    """Value first: written above a rule with its key as a caption below, or left of its key."""
    rng = page.rng
    above = rng.random() < 0.6
    concepts = _pick_concepts(page, rng.choice([2, 3]))
    key_font = page.font(page.key_role, max(page.body_size - 3, 11))
    value_font = page.font(page.value_role, page.body_size)
    slot = (PAGE_WIDTH - 2 * MARGIN) / len(concepts)
    value_line = page.line_height(value_font)
    if above:
        for index, concept in enumerate(concepts):
            left = MARGIN + index * slot
            text = page.fit(values.value(concept), value_font, slot - 24)
            value_id = page.add_entity([(text, left + 4 + page.jitter(), page.y + page.jitter(1))], "answer",
                                       value_font, page.value_ink)
            rule_y = page.y + value_line + 3
            page.graphics.append(("line", (left, rule_y, left + slot - 16, rule_y), page.ink, 1))
            key_id = page.add_entity([(key_text(concept, page.lang), left, rule_y + 4)], "question", key_font)
            page.link(key_id, value_id)
        page.y += value_line + 8 + page.line_height(key_font) + 14
    else:
        for concept in concepts:  # one per row: "value   (key)"
            text = page.fit(values.value(concept), value_font, 420)
            x = MARGIN + page.jitter()
            value_id = page.add_entity([(text, x, page.y)], "answer", value_font, page.value_ink)
            key_x = x + page.width(text, value_font) + rng.randint(14, 40)
            key = key_text(concept, page.lang)
            key = f"({key})" if rng.random() < 0.5 else key
            key_id = page.add_entity([(key, key_x, page.y + 2)], "question", key_font, (90, 90, 90))
            page.link(key_id, value_id)
            page.y += value_line + 10
        page.y += 6


def _block_multi(page: _Page, values: _Values) -> None:
    """A key with several values stacked to its right (or below it)."""
    rng = page.rng
    concept = rng.choice(["phone", "email", "contacts"])
    key_font = page.font(page.key_role, page.body_size)
    value_font = page.font(page.value_role, page.body_size)
    key = page.key(concept)
    key_id = page.add_entity([(key, MARGIN + page.jitter(), page.y)], "question", key_font)
    below = rng.random() < 0.4
    x = MARGIN + 24 if below else MARGIN + page.width(key, key_font) + rng.randint(12, 30)
    y = page.y + (page.line_height(key_font) + 6 if below else 0)
    line = page.line_height(value_font)
    for _ in range(rng.randint(2, 3)):
        text = values.value("name" if concept == "contacts" else concept)
        text = page.fit(text, value_font, PAGE_WIDTH - MARGIN - x)
        value_id = page.add_entity([(text, x + page.jitter(1), y)], "answer", value_font, page.value_ink)
        page.link(key_id, value_id)
        y += line + 6
    page.y = y + 10


def _draw_checkbox(page: _Page, x: float, y: float, size: float, checked: bool) -> None:
    page.graphics.append(("rect", (x, y, x + size, y + size), page.ink, 1))
    if checked:
        page.graphics.append(("check", (x + 2, y + 2, x + size - 2, y + size - 2), page.value_ink, 2))


def _block_checkboxes(page: _Page, values: _Values) -> None:
    """A key and its options with boxes: checked options are its values, the others are ``other``."""
    rng = page.rng
    concept = rng.choice(list(_OPTIONS))
    options = _OPTIONS[concept][_lang_index(page.lang)]
    checked = set(rng.sample(range(len(options)), rng.choice([1, 1, 2])))
    key_font = page.font(page.key_role, page.body_size)
    option_font = page.font("sans", page.body_size)
    key = page.key(concept)
    key_id = page.add_entity([(key, MARGIN + page.jitter(), page.y)], "question", key_font)
    box = page.body_size
    vertical = rng.random() < 0.35
    x = MARGIN + 20 if vertical else MARGIN + page.width(key, key_font) + 20
    y = page.y + (page.line_height(key_font) + 6 if vertical else 0)
    for index, option in enumerate(options):
        _draw_checkbox(page, x, y + 2, box, index in checked)
        option_id = page.add_entity([(option, x + box + 8, y)], "answer" if index in checked else "other", option_font)
        if index in checked:
            page.link(key_id, option_id)
        if vertical:
            y += page.line_height(option_font) + 6
        else:
            x += box + 8 + page.width(option, option_font) + rng.randint(24, 40)
    page.y = (y if vertical else y + page.line_height(option_font)) + 12


def _block_table(page: _Page, values: _Values) -> None:
    """A table: header row of column names (keys), cells linked to their column; a total below."""
    rng = page.rng
    columns = ["description", "quantity", "unit_price", "amount"][: rng.choice([3, 4])]
    header_font = page.font("sans_bold", max(page.body_size - 1, 12))
    cell_font = page.font(page.value_role, max(page.body_size - 1, 12))
    widths = {"description": 0.46, "quantity": 0.14, "unit_price": 0.2, "amount": 0.2}
    total_share = sum(widths[c] for c in columns)
    table_width = PAGE_WIDTH - 2 * MARGIN
    lefts, x = [], MARGIN
    for concept in columns:
        lefts.append(x)
        x += table_width * widths[concept] / total_share
    rights = lefts[1:] + [MARGIN + table_width]
    row_height = page.line_height(cell_font) + 10
    top = page.y
    header_ids = []
    for concept, left, right in zip(columns, lefts, rights):
        text = page.fit(key_text(concept, page.lang), header_font, right - left - 10)
        header_ids.append(page.add_entity([(text, left + 5, top + 5)], "question", header_font))
    rows = rng.randint(2, 4)
    lines = [top, top + row_height]
    for row in range(rows):
        y = top + (row + 1) * row_height + 5
        for concept, left, right, header_id in zip(columns, lefts, rights, header_ids):
            text = page.fit(values.value(concept), cell_font, right - left - 10)
            cell_id = page.add_entity([(text, left + 5 + page.jitter(1), y)], "answer", cell_font, page.value_ink)
            page.link(header_id, cell_id)
        lines.append(top + (row + 2) * row_height)
    bottom = lines[-1]
    for y in lines:
        page.graphics.append(("line", (MARGIN, y, MARGIN + table_width, y), page.ink, 1))
    if rng.random() < 0.7:  # full grid, otherwise rows only
        for x in lefts + [MARGIN + table_width]:
            page.graphics.append(("line", (x, top, x, bottom), page.ink, 1))
    page.y = bottom + 10
    key = page.key("total")
    amount = values.amount()
    amount_width = page.width(amount, cell_font)
    key_font = page.font("sans_bold", page.body_size)
    key_x = PAGE_WIDTH - MARGIN - amount_width - 24 - page.width(key, key_font)
    key_id = page.add_entity([(key, key_x, page.y)], "question", key_font)
    value_id = page.add_entity([(amount, PAGE_WIDTH - MARGIN - amount_width - 4, page.y)], "answer", cell_font,
                               page.value_ink)
    page.link(key_id, value_id)
    page.y += page.line_height(key_font) + 14


def _block_free_text(page: _Page, values: _Values) -> None:
    """A paragraph of free text (``other``), sometimes introduced by a "Remarks" key that it answers."""
    rng = page.rng
    font = page.font("serif" if not page.cjk else "sans", page.body_size - 1)
    with_key = rng.random() < 0.35
    key_id = None
    if with_key:
        key_font = page.font(page.key_role, page.body_size)
        key_id = page.add_entity([(page.key("remarks"), MARGIN, page.y)], "question", key_font)
        page.y += page.line_height(key_font) + 4
    text = " ".join(values.sentence(rng.randint(6, 14)) for _ in range(rng.randint(1, 3)))
    if page.cjk:
        text = text.replace(" ", "")
    lines = page.wrap(text, font, PAGE_WIDTH - 2 * MARGIN, max_lines=3)
    line = page.line_height(font) + 3
    placed = [(text, MARGIN, page.y + index * line) for index, text in enumerate(lines)]
    entity_id = page.add_entity(placed, "answer" if with_key else "other", font,
                                page.value_ink if with_key else page.ink)
    if key_id is not None:
        page.link(key_id, entity_id)
    page.y += len(lines) * line + 12


def _block_signature(page: _Page, values: _Values) -> None:
    """Place/date and signature lines: the written value sits above the rule, the key below it."""
    rng = page.rng
    key_font = page.font(page.key_role, max(page.body_size - 3, 11))
    value_font = page.font("italic", page.body_size + 2)
    slot = (PAGE_WIDTH - 2 * MARGIN) / 2
    page.y += 16
    value_line = page.line_height(value_font)
    for index, concept in enumerate(["place_date", "signature"]):
        left = MARGIN + index * (slot + 20)
        if concept == "place_date":
            text = f"{values.value('city')}, {values.date()}"
        else:
            text = values.value("name")
        text = page.fit(text, value_font, slot - 40)
        rule_y = page.y + value_line + 4
        if rng.random() < 0.9:  # sometimes left blank: an unlinked key
            value_id = page.add_entity([(text, left + 8 + page.jitter(3), page.y + page.jitter(2))], "answer",
                                       value_font, page.value_ink)
        else:
            value_id = None
        page.graphics.append(("line", (left, rule_y, left + slot - 20, rule_y), page.ink, 1))
        key_id = page.add_entity([(key_text(concept, page.lang), left, rule_y + 4)], "question", key_font)
        if value_id is not None:
            page.link(key_id, value_id)
    page.y += value_line + 8 + page.line_height(key_font) + 12


_BLOCKS = {"inline": _block_inline, "grid": _block_grid, "caption": _block_caption, "multi": _block_multi,
           "checkboxes": _block_checkboxes, "table": _block_table, "free_text": _block_free_text}
LAYOUTS = tuple(_BLOCKS) + ("signature", "stamp", "title")


def _stamp(page: _Page, values: _Values, image: Image.Image) -> None:
    """A rotated rubber stamp in free space near the bottom (``other``); drawn straight onto ``image``."""
    rng = page.rng
    text = rng.choice(_STAMPS[_lang_index(page.lang)])
    font = page.font("sans_bold", rng.randint(22, 30))
    colour = rng.choice([(190, 30, 30), (30, 60, 170)])
    text_width, line = page.width(text, font), page.line_height(font)
    patch_width, patch_height = int(text_width + 28), int(line + 20)
    patch = Image.new("L", (patch_width, patch_height), 0)
    draw = ImageDraw.Draw(patch)
    draw.rectangle((1, 1, patch_width - 2, patch_height - 2), outline=255, width=3)
    draw.text((14, 10), text, font=font, fill=255)
    angle = rng.uniform(-12, 12)
    rotated = patch.rotate(angle, resample=Image.BICUBIC, expand=True)
    free_top, free_bottom = page.y + 10, PAGE_HEIGHT - MARGIN - 30
    if free_bottom - free_top < rotated.height + 4:
        return
    x0 = rng.randint(PAGE_WIDTH // 2, PAGE_WIDTH - MARGIN - rotated.width)
    y0 = rng.randint(int(free_top), int(free_bottom - rotated.height))
    ink = Image.new("RGB", rotated.size, colour)
    image.paste(ink, (x0, y0), rotated.point(lambda v: int(v * 0.8)))
    # the text's box after the patch rotation: rotate its corners about the patch centre
    left, top, right, bottom = font.getbbox(text)
    corners = [(14 + left, 10 + top), (14 + right, 10 + top), (14 + right, 10 + bottom), (14 + left, 10 + bottom)]
    cx, cy = patch_width / 2, patch_height / 2
    theta = math.radians(angle)  # PIL rotates counter-clockwise on screen
    points = []
    for px, py in corners:
        dx, dy = px - cx, py - cy
        rx = cx + dx * math.cos(theta) + dy * math.sin(theta)
        ry = cy - dx * math.sin(theta) + dy * math.cos(theta)
        points.append((rx + (rotated.width - patch_width) / 2 + x0, ry + (rotated.height - patch_height) / 2 + y0))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    entity_id = len(page.entities)
    spec = _EntitySpec(entity_id, "other", [], [(text, [min(xs), min(ys), max(xs), max(ys)])])
    page.entities.append(spec)


def _layout(page: _Page, values: _Values) -> None:
    rng = page.rng
    _block_title(page, values)
    kinds = ["inline", "grid", "caption", "multi", "checkboxes", "table", "free_text"]
    plan = [rng.choice(["inline", "grid"])] + rng.sample(kinds, rng.randint(4, 7))
    plan += [rng.choice(["inline", "grid", "caption", "multi"]) for _ in range(3)]  # fill what room is left
    limit = PAGE_HEIGHT - MARGIN - 130  # room for the signature block
    for section_index, kind in enumerate(plan):
        mark = page.mark()
        if rng.random() < 0.6:
            _section_title(page, rng.randrange(5))
        _BLOCKS[kind](page, values)
        if page.y > limit:  # does not fit: drop it and try the next (smaller blocks may still fit)
            page.rollback(mark)
    if rng.random() < 0.8:
        _block_signature(page, values)
    small = page.font("sans", max(page.body_size - 4, 10))
    number = f"{_PAGE[_lang_index(page.lang)]} 1/1" if not page.cjk else f"1/1 {_PAGE[_lang_index(page.lang)]}"
    page.add_entity([(number, (PAGE_WIDTH - page.width(number, small)) / 2, PAGE_HEIGHT - MARGIN)], "other", small)


# ------------------------------------------------------------------------------------------ drawing
def _draw(page: _Page, paper: tuple) -> Image.Image:
    image = Image.new("RGB", (PAGE_WIDTH, PAGE_HEIGHT), paper)
    draw = ImageDraw.Draw(image)
    for kind, coords, colour, width in page.graphics:
        if kind == "line":
            draw.line(coords, fill=colour, width=width)
        elif kind == "rect":
            draw.rectangle(coords, outline=colour, width=width)
        elif kind == "check":
            x0, y0, x1, y1 = coords
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
            draw.line((x0, y1, x1, y0), fill=colour, width=width)
    for entity in page.entities:
        for run in entity.runs:
            draw.text((run.x, run.y), run.text, font=run.font, fill=run.fill)
            entity.words.extend(_word_boxes(run))
    return image


def _word_boxes(run: _TextRun) -> list:
    """Each space-separated word's box, from the font's advance widths and the line's ink extent."""
    _left, top, _right, bottom = run.font.getbbox(run.text)
    words, start = [], 0
    for token in run.text.split(" "):
        if token:
            x0 = run.x + run.font.getlength(run.text[:start])
            token_left = run.font.getbbox(token)[0]
            x1 = run.x + run.font.getlength(run.text[:start + len(token)])
            words.append((token, [x0 + token_left, run.y + top, x1, run.y + bottom]))
        start += len(token) + 1
    return words


def _noise(image: Image.Image, page: _Page, np_rng: np.random.Generator, strength: float, paper) -> tuple:
    """Scan-like degradation. Returns (image, affine point map) where the map takes page coordinates
    to coordinates in the degraded image (only the rotation moves pixels)."""
    rng = page.rng
    array = np.asarray(image).astype(np.float32)
    height, width = array.shape[:2]
    if strength > 0:
        # uneven lighting: a linear gradient plus a soft radial fall-off
        gx, gy = np.meshgrid(np.linspace(-1, 1, width, dtype=np.float32), np.linspace(-1, 1, height, dtype=np.float32))
        a, b = rng.uniform(-0.06, 0.06) * strength, rng.uniform(-0.06, 0.06) * strength
        radial = 1.0 - rng.uniform(0.0, 0.08) * strength * (gx ** 2 + gy ** 2) / 2
        light = (1.0 + a * gx + b * gy) * radial
        # sensor noise on luminance only (one field for all channels: a third of the cost)
        light_noise = np_rng.standard_normal(size=(height, width), dtype=np.float32) * (rng.uniform(1.0, 6.0) * strength)
        array = array * light[..., None] + light_noise[..., None]
    image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if strength > 0:
        radius = rng.uniform(0.0, 0.9) * strength
        if radius > 0.15:
            image = image.filter(ImageFilter.GaussianBlur(radius))
    angle = rng.uniform(-1.5, 1.5) * strength
    cx, cy = width / 2, height / 2
    theta = math.radians(angle)

    def transform(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - cx, y - cy  # PIL's rotate(angle) turns the content counter-clockwise on screen
        return cx + dx * math.cos(theta) + dy * math.sin(theta), cy - dx * math.sin(theta) + dy * math.cos(theta)

    if abs(angle) > 0.05:
        image = image.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=paper)
    if strength > 0:  # JPEG artefacts
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.uniform(40, 85)))
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return image, transform


def _box_after(box, transform) -> list[float]:
    x0, y0, x1, y1 = box
    points = [transform(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    xs = [min(max(p[0], 0.0), PAGE_WIDTH - 1.0) for p in points]
    ys = [min(max(p[1], 0.0), PAGE_HEIGHT - 1.0) for p in points]
    return [round(min(xs), 1), round(min(ys), 1), round(max(xs), 1), round(max(ys), 1)]


def _seed_int(*parts) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def render_form(seed: int, lang: str = "en", noise: float = 1.0, doc_id: str | None = None) -> SyntheticForm:
    """Render one synthetic form page in ``lang`` (one of LANGUAGES). ``noise`` scales the scan
    degradation (0 = clean page). Deterministic in (seed, lang, noise)."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; choose from {', '.join(LANGUAGES)}")
    find_font("sans", lang)  # fail early with the install hint
    rng = random.Random(_seed_int("layout", seed, lang))
    np_rng = np.random.default_rng(_seed_int("pixels", seed, lang))
    page = _Page(lang, rng)
    values = _Values(lang, rng, _seed_int("faker", seed, lang) % (2 ** 31))
    _layout(page, values)
    paper = tuple(int(v) for v in (255 - rng.randint(0, 12) * min(noise, 1.0),) * 3)
    paper = (paper[0], paper[1], max(paper[2] - rng.randint(0, 8), 0))
    image = _draw(page, paper)
    if rng.random() < 0.5:
        _stamp(page, values, image)
    image, transform = _noise(image, page, np_rng, noise, paper)
    links_by_entity: dict[int, list[list[int]]] = {}
    for key_id, value_id in page.links:
        links_by_entity.setdefault(key_id, []).append([key_id, value_id])
        links_by_entity.setdefault(value_id, []).append([key_id, value_id])
    records = []
    for entity in page.entities:
        words = [{"text": text, "box": _box_after(box, transform)} for text, box in entity.words]
        if not words:
            continue
        text = " ".join(run.text for run in entity.runs) if entity.runs else " ".join(w["text"] for w in words)
        box = [min(w["box"][0] for w in words), min(w["box"][1] for w in words),
               max(w["box"][2] for w in words), max(w["box"][3] for w in words)]
        records.append({"id": entity.id, "text": text, "box": box, "label": entity.label, "words": words,
                        "linking": links_by_entity.get(entity.id, [])})
    doc_id = doc_id or f"{lang}_{seed}"
    document = {"id": doc_id, "lang": lang, "document": records,
                "img": {"fname": f"{doc_id}.jpg", "width": PAGE_WIDTH, "height": PAGE_HEIGHT}}
    return SyntheticForm(image=image, document=document, language=lang, seed=seed)


# ------------------------------------------------------------------------------------------ datasets
def parse_languages(text: str) -> list[str]:
    langs = [lang.strip() for lang in text.split(",") if lang.strip()]
    unknown = [lang for lang in langs if lang not in LANGUAGES]
    if unknown or not langs:
        raise ValueError(f"--langs: unknown language(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {','.join(LANGUAGES)}")
    return langs


def form_seed(seed: int, lang: str, index: int) -> int:
    """The seed of the index-th form of a language in a dataset generated with ``seed``."""
    return _seed_int("dataset", seed, lang, index) % (2 ** 31)


def generate_dataset(out_dir, n: int, langs=LANGUAGES, seed: int = 0, noise: float = 1.0,
                     jpeg_quality: int = 85, progress: bool = False) -> dict:
    """Write ``n`` forms per language: ``images/<lang>_<i>.jpg`` and ``<lang>.json`` (XFUND) in
    ``out_dir``; every file is written atomically. Returns a summary (counts and file names)."""
    from sft_core.atomic_io import atomic_write_bytes, atomic_write_text

    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    langs = list(langs)
    for lang in langs:
        if lang not in LANGUAGES:
            raise ValueError(f"unknown language {lang!r}; choose from {', '.join(LANGUAGES)}")
        find_font("sans", lang)
    out_dir = Path(out_dir)
    summary = {"out_dir": str(out_dir), "seed": seed, "forms_per_language": n, "languages": {}, "fonts": {}}
    iterator = [(lang, index) for lang in langs for index in range(n)]
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="synth", unit="form", file=__import__("sys").stderr)
    documents: dict[str, list] = {lang: [] for lang in langs}
    counts: dict[str, dict] = {lang: {"forms": 0, "entities": 0, "links": 0} for lang in langs}
    for lang, index in iterator:
        doc_id = f"{lang}_{index:04d}"
        form = render_form(form_seed(seed, lang, index), lang, noise=noise, doc_id=doc_id)
        image_name = f"images/{doc_id}.jpg"
        buffer = io.BytesIO()
        form.image.save(buffer, format="JPEG", quality=jpeg_quality)
        atomic_write_bytes(out_dir / image_name, buffer.getvalue())
        form.document["img"]["fname"] = image_name
        documents[lang].append(form.document)
        counts[lang]["forms"] += 1
        counts[lang]["entities"] += len(form.entities)
        counts[lang]["links"] += len(form.links())
    for lang in langs:
        payload = {"lang": lang, "version": "sftkit-synth-1", "seed": seed, "documents": documents[lang]}
        atomic_write_text(out_dir / f"{lang}.json", json.dumps(payload, ensure_ascii=False))
        summary["languages"][lang] = {**counts[lang], "file": f"{lang}.json"}
    summary["fonts"] = {name: path for name, path in fonts_used(langs).items()}
    return summary


def load_synthetic(out_dir, langs=None) -> list:
    """The generated documents of ``out_dir`` (all languages, or ``langs``) as formats.Document."""
    from .formats import read_xfund

    out_dir = Path(out_dir)
    files = sorted(out_dir.glob("*.json"))
    documents = []
    for file in files:
        lang = file.stem
        if langs is None or lang in langs:
            documents.extend(read_xfund(file))
    return documents
