"""HTML from email: sanitised for display with nh3, and turned into plain text.

Policy (house rule: nothing a sender writes ever runs in an agent's browser):
- no script, style, iframe, form, object, svg, meta or link elements; no event handler
  attributes; links only to http(s), mailto and tel;
- inline ``style`` attributes keep a short list of presentational properties, and are
  dropped whole when they mention ``expression``, ``url(``, ``javascript`` or ``@import``;
- images: ``cid:`` sources are kept (inline parts, rewritten to our attachment URLs by the
  ticket view); remote sources are removed by default because they are how senders track
  when an email is opened. ``allow_remote_images=True`` keeps http(s) sources for a
  viewer who asks for them (the raw MIME is kept, so this can be decided later).
"""

from __future__ import annotations

import html as html_lib
import re
from functools import lru_cache
from html.parser import HTMLParser

import nh3

_TAGS = (set(nh3.ALLOWED_TAGS) | {"font", "tfoot", "label"}) - {"map", "area"}
_ATTRIBUTES = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
for _tag in ("td", "th", "table", "tr", "div", "p", "span", "font", "img", "a", "li", "ul",
             "ol", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "center"):
    _ATTRIBUTES.setdefault(_tag, set()).update({"style", "title", "dir", "lang"})
_ATTRIBUTES["font"].update({"color", "face", "size"})
_ATTRIBUTES["table"].update({"width", "border", "cellpadding", "cellspacing", "bgcolor"})
_ATTRIBUTES["td"].update({"width", "valign", "bgcolor", "nowrap"})
_ATTRIBUTES["th"].update({"width", "valign", "bgcolor"})
_STYLE_PROPERTIES = {
    "color", "background-color", "font-weight", "font-style", "font-size", "font-family",
    "text-align", "text-decoration", "vertical-align", "white-space", "border",
    "border-collapse", "padding", "margin", "width", "height", "line-height", "display",
}
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid"}
# A backslash is a CSS escape (u\72l( is url(): a style that needs one is dropped whole.
# Matched against the lower-cased value (CSS keywords are ASCII case-insensitive): a plain
# pattern on lower-cased text runs about six times faster than an IGNORECASE one, and
# every email carries dozens of style attributes.
_DANGEROUS_STYLE = re.compile(r"expression|url\s*\(|javascript|@import|behavior|-moz-binding"
                              r"|\\|&#|image-set|src\s*\(")
CID_REFERENCE = re.compile(r"""\bcid:([^"'\s<>)]+)""", re.IGNORECASE)


# nh3 serialises what it keeps in a normal form (double-quoted attributes, with "&<>
# escaped), so the two policies nh3 cannot express are applied to its output: image
# sources other than cid: (and http(s) when allowed), and inline styles that could load or
# run anything. A Python attribute callback would cost twice the whole clean.
_IMG_SRC = re.compile(r'(<img\b[^>]*?)\ssrc="([^"]*)"', re.IGNORECASE)
_STYLE_ATTR = re.compile(r'\sstyle="([^"]*)"', re.IGNORECASE)
_CID_LINK = re.compile(r'\s(?:href|cite)="cid:[^"]*"', re.IGNORECASE)


def _img_src(allow_remote_images: bool):
    def replace(match: re.Match) -> str:
        source = match.group(2).strip().lower()
        if source.startswith("cid:") or (
                allow_remote_images and source.startswith(("https:", "http:"))):
            return match.group(0)
        return match.group(1)

    return replace


def _style(match: re.Match) -> str:
    return "" if _DANGEROUS_STYLE.search(match.group(1).lower()) else match.group(0)


@lru_cache(maxsize=1)
def _cleaner() -> nh3.Cleaner:
    return nh3.Cleaner(
        tags=_TAGS,
        clean_content_tags={"script", "style", "title", "head", "textarea", "select",
                            "noscript", "iframe", "object", "embed", "svg", "math",
                            "template", "xmp", "noembed", "noframes"},
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
        filter_style_properties=_STYLE_PROPERTIES,
    )


def sanitize_html(html: str, *, allow_remote_images: bool = False) -> str:
    if not html or not html.strip():
        return ""
    cleaned = _cleaner().clean(html)
    if "<img" in cleaned:
        cleaned = _IMG_SRC.sub(_img_src(allow_remote_images), cleaned)
    if ' style="' in cleaned:
        cleaned = _STYLE_ATTR.sub(_style, cleaned)
    if "cid:" in cleaned:
        cleaned = _CID_LINK.sub("", cleaned)
    return cleaned


def cid_references(html: str) -> set[str]:
    """Content-IDs an HTML body refers to with ``cid:`` (normalised, no brackets)."""
    from urllib.parse import unquote

    if not html or "cid:" not in html.lower():  # the common case, without the regex scan
        return set()
    return {unquote(m).strip("<>").strip() for m in CID_REFERENCE.findall(html)}


_BLOCK = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table",
          "blockquote", "pre", "hr", "ul", "ol", "dl", "dt", "dd", "section", "article",
          "header", "footer", "center", "address"}
_SKIP = {"script", "style", "head", "title", "noscript", "template", "svg", "xml"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self.skip_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
        if tag in _BLOCK:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag in ("td", "th"):
            self.parts.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag in ("br", "hr"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in _SKIP and self.skip_depth:
            self.skip_depth -= 1
        elif tag == "pre" and self.pre_depth:
            self.pre_depth -= 1
        if tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self.skip_depth:
            return
        if not self.pre_depth:
            data = re.sub(r"\s+", " ", data)
        self.parts.append(data)


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML body (for mails without a text part)."""
    if not html:
        return ""
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
        text = "".join(parser.parts)
    except Exception:  # noqa: BLE001 - HTMLParser is lenient; this is a last resort
        text = html_lib.unescape(re.sub(r"<[^>]*>", " ", html))
    lines = [line.strip() for line in text.replace("\xa0", " ").splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
