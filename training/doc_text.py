"""Documentation pages to clean paragraphs: HTML (stdlib html.parser) and Perl POD.

Navigation, sidebars, tables of contents and long code listings are dropped: the corpus should be
mostly prose.
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser

_SKIP_TAGS = {"script", "style", "head", "nav", "footer", "header", "form", "button", "noscript",
              "svg", "select", "textarea", "iframe"}
# class / id / role tokens of navigation, sidebars, permalinks and search boxes (Sphinx, DocBook)
_SKIP_MARKS = {"related", "sphinxsidebar", "sphinxsidebarwrapper", "footer", "navheader",
               "navfooter", "headerlink", "wy-nav-side", "rst-footer-buttons", "wy-breadcrumbs",
               "inline-search", "version_switcher_placeholder", "language_switcher_placeholder",
               "clearer", "nav", "toc", "navigation", "search", "contentinfo", "sidebar",
               "global-nav", "hd", "ft", "searchbox", "sidebarbutton", "breadcrumbs"}
_BLOCK_TAGS = {"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
               "pre", "table", "tr", "blockquote", "section", "article", "br", "hr", "caption",
               "figure", "figcaption", "main", "body", "title"}
_VOID_TAGS = {"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"}
MAX_PRE_LINES = 12  # longer code listings are dropped: the corpus should stay mostly prose


class _TextExtractor(HTMLParser):
    """Collects paragraphs (block-level text runs) of an HTML page, skipping navigation."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._buf: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, starts a skipped region)
        self._skip = 0
        self._pre = 0

    def _flush(self) -> None:
        text = "".join(self._buf)
        self._buf = []
        if self._pre:
            lines = [ln.rstrip() for ln in text.strip("\n").splitlines()]
            if 0 < len(lines) <= MAX_PRE_LINES:
                self.blocks.append("\n".join(lines))
        else:
            text = " ".join(text.split())
            if text:
                self.blocks.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS and not self._skip:
            self._flush()
        if tag in _VOID_TAGS:
            return
        marks = set()
        for key, val in attrs:
            if key in ("class", "id", "role") and val:
                marks.update(val.split())
        skip = tag in _SKIP_TAGS or bool(marks & _SKIP_MARKS)
        self._stack.append((tag, skip))
        self._skip += skip
        self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS or all(t != tag for t, _ in self._stack):
            return  # stray end tag: ignore rather than unwind the stack
        if tag in _BLOCK_TAGS and not self._skip:
            self._flush()
        while self._stack:
            t, skip = self._stack.pop()
            self._skip -= skip
            self._pre -= t == "pre"
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._buf.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def html_to_paragraphs(html: str) -> list[str]:
    """Visible text of an HTML page as a list of paragraphs, navigation boilerplate removed."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.blocks


_POD_MULTI = re.compile(r"[A-Z]<<+\s(.*?)\s>>+")  # C<< $a->b >>
_POD_LINK = re.compile(r"L<([^<>|]*)\|[^<>]*>")  # L<text|target> -> text
_POD_CODE = re.compile(r"[A-Z]<([^<>]*)>")  # innermost single-bracket code
_POD_ESC = {"lt": "\x01", "gt": "\x02", "verbar": "|", "sol": "/"}  # \x01/\x02 restored last


def _pod_inline(text: str) -> str:
    text = re.sub(r"E<(\w+)>", lambda m: _POD_ESC.get(m[1], ""), text)
    text = _POD_MULTI.sub(r"\1", text)
    for _ in range(4):  # nested codes such as B<C<x>>, innermost first
        text = _POD_CODE.sub(r"\1", _POD_LINK.sub(r"\1", text))
    return text.replace("\x01", "<").replace("\x02", ">")


def pod_to_paragraphs(pod: str) -> list[str]:
    """Paragraphs of a Perl POD file: commands become headings, formatting codes are dropped."""
    out = []
    for para in re.split(r"\n\s*\n", pod):
        if not para.strip():
            continue
        if para[0] in " \t":  # verbatim (code) paragraph
            lines = para.splitlines()
            if len(lines) <= MAX_PRE_LINES:
                out.append("\n".join(ln.rstrip() for ln in lines))
            continue
        if para.startswith("="):
            cmd, _, rest = para.partition(" ")
            if cmd not in ("=head1", "=head2", "=head3", "=head4", "=item"):
                continue
            para = rest
        para = " ".join(_pod_inline(para).split())
        if para and para != "*":
            out.append(para)
    return out


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_paragraph(text: str) -> str:
    """NFC, no control characters, no non-breaking or zero-width spaces (newlines kept)."""
    text = unicodedata.normalize("NFC", text).replace("\xa0", " ").replace("\u200b", "")
    return _CONTROL.sub("", text.replace("\t", "    ")).strip()
