"""Slack message → plain text for an X Direct Message, and splitting of long messages.

Pure module: it depends on the standard library and the ``emoji`` package only.

Two inputs describe a Slack message:

* ``event.text`` — Slack's wire format ("mrkdwn"): ``<@U123>``, ``<#C123|general>``,
  ``<https://x.y|label>``, ``<!here>`` … tokens, ``:shortcode:`` emoji, and only ``&``, ``<``
  and ``>`` entity-escaped (``&amp; &lt; &gt;``).
* ``event.blocks`` — ``rich_text`` blocks with raw (unescaped) text and typed elements.

:func:`to_plain` prefers the blocks (they are structured) and falls back to the text when the
blocks are absent, not purely ``rich_text``, malformed, or render to nothing.

Decisions (kept identical in both paths so either input gives the same output):

* Code stays code: inline code keeps its single backticks and code blocks keep their ```` ``` ````
  fences (an X reader sees plain text; the fences are the only signal that the content is code
  and must be read verbatim). Shortcodes inside code are never converted to emoji.
* Lists become ``• item`` / ``1. item`` lines, indented two spaces per level; quotes become
  ``> `` prefixed lines (Slack's own wire form for quotes).
* Emoji shortcodes go through ``emoji.emojize(language="alias")``. Slack (iamcal emoji-data)
  spells some names differently; these are bridged by generic rules rather than a table:
  ``-`` ↔ ``_`` (``man-shrugging``), ``male-``/``female-`` → ``man_``/``woman_``
  (``male-technologist``) and ``flag-xx`` → regional-indicator pair. Only names no rule can
  derive are in :data:`_SLACK_ONLY_EMOJI`. Unknown (custom) emoji stay ``:name:``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import emoji

__all__ = ["X_TEXT_LIMIT", "mentioned_user_ids", "quote_parent", "render_parts", "to_plain"]

#: Maximum length of one X Direct Message, counted here as Python ``len()`` (code points).
X_TEXT_LIMIT = 10_000

# Slack-specific names that neither the ``emoji`` alias table nor the generic spelling rules in
# ``_emoji_for_name`` resolve. Kept deliberately tiny: ``simple_smile`` is Slack's legacy name
# for 🙂 (Slack renders it as slightly_smiling_face; it is not a Unicode/CLDR/GitHub alias, so the
# library does not know it) and ``thumbsup_all`` is a Slack built-in whose nearest Unicode
# rendering is 👍.
_SLACK_ONLY_EMOJI: Mapping[str, str] = {
    "simple_smile": "\U0001f642",
    "thumbsup_all": "\U0001f44d",
}

# Slack's `:skin-tone-N:` (N = 2..6) maps onto the five Fitzpatrick modifiers.
_SKIN_TONES: Mapping[int, str] = {
    2: "\U0001f3fb",
    3: "\U0001f3fc",
    4: "\U0001f3fd",
    5: "\U0001f3fe",
    6: "\U0001f3ff",
}
_SKIN_TONE_CHARS = frozenset(_SKIN_TONES.values())

_ZWJ = "\u200d"
_MAX_INDENT = 8  # list nesting levels rendered (Slack allows up to 8)

# ---------------------------------------------------------------------------------------------
# Regexes for the wire format
# ---------------------------------------------------------------------------------------------

# Left-to-right scanner: code block, inline code, or an angle-bracket token. User-typed `<`/`>`
# arrive as &lt;/&gt;, so a raw `<` always starts a Slack token.
_SCAN_RE = re.compile(r"(?P<fence>```.*?```)|(?P<code>`[^`\n]+`)|(?P<tok><[^<>\n]*>)", re.DOTALL)
_TOKEN_RE = re.compile(r"<[^<>\n]*>")
_CODE_SPAN_RE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)
# `:name:` optionally followed by `:skin-tone-N:`. Digits may not touch the colons so clock
# times such as 10:30:45 are left alone.
_EMOJI_RE = re.compile(r"(?<![0-9]):([a-z0-9_+'\-]+):(?::skin-tone-([2-6]):)?(?![0-9])")
_ENTITY_RE = re.compile(r"&(amp|lt|gt);")
_ENTITIES: Mapping[str, str] = {"amp": "&", "lt": "<", "gt": ">"}
_MENTION_RE = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^<>\n]*)?>")
_USER_ID_RE = re.compile(r"[UW][A-Z0-9]+")
_ID_RE = re.compile(r"[A-Z0-9]+")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:(?://)?")
_HEX_SEQ_RE = re.compile(r"[0-9a-fA-F]{1,6}(?:-[0-9a-fA-F]{1,6})*")
_BROADCASTS = frozenset({"here", "channel", "everyone"})


class _Malformed(Exception):
    """Internal: the blocks do not have the documented rich_text shape."""


# ---------------------------------------------------------------------------------------------
# Emoji
# ---------------------------------------------------------------------------------------------


def _emojize_alias(name: str) -> str | None:
    code = f":{name}:"
    out: str = emoji.emojize(code, language="alias")
    return out if out != code else None


@functools.lru_cache(maxsize=4096)
def _emoji_for_name(name: str) -> str | None:
    """Unicode for a Slack shortcode name, or None when it is unknown (custom emoji)."""
    found = _emojize_alias(name)
    if found is not None:
        return found
    if "-" in name:
        if name.startswith("flag-") and len(name) == 7 and name[5:].isascii() and name[5:].isalpha():
            flag = "".join(chr(0x1F1E6 + ord(c) - ord("a")) for c in name[5:])
            if flag in emoji.EMOJI_DATA:
                return flag
        underscored = name.replace("-", "_")
        for candidate in (
            underscored,
            re.sub(r"^male_", "man_", underscored),
            re.sub(r"^female_", "woman_", underscored),
        ):
            if candidate != name:
                found = _emojize_alias(candidate)
                if found is not None:
                    return found
    return _SLACK_ONLY_EMOJI.get(name)


def _with_skin_tone(base: str, tone: int | None) -> str:
    """Apply a Slack skin tone (2..6) to ``base`` when Unicode defines that combination."""
    modifier = _SKIN_TONES.get(tone) if tone is not None else None
    if modifier is None or not base or any(c in _SKIN_TONE_CHARS for c in base):
        return base
    rest = base[1:]
    if rest.startswith("\ufe0f"):
        rest = rest[1:]
    candidate = base[0] + modifier + rest
    for option in (candidate, candidate.replace("\ufe0f", "")):
        if option in emoji.EMOJI_DATA:
            return option
    return base  # not a modifier base: Slack would show the plain emoji too


def _convert_shortcodes(text: str) -> str:
    """Replace ``:name:`` (and ``:name::skin-tone-N:``) with Unicode; unknown names stay."""

    def repl(m: re.Match[str]) -> str:
        found = _emoji_for_name(m.group(1))
        if found is None:
            return m.group(0)
        tone = m.group(2)
        return _with_skin_tone(found, int(tone)) if tone else found

    return _EMOJI_RE.sub(repl, text)


def _convert_outside_code(text: str) -> str:
    """Convert shortcodes everywhere except inside ``` blocks and `inline code`."""
    out: list[str] = []
    pos = 0
    for m in _CODE_SPAN_RE.finditer(text):
        out.append(_convert_shortcodes(text[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_convert_shortcodes(text[pos:]))
    return "".join(out)


def _unescape(text: str) -> str:
    """Decode Slack's three entities in one pass (so ``&amp;lt;`` → ``&lt;``, not ``<``)."""
    return _ENTITY_RE.sub(lambda m: _ENTITIES[m.group(1)], text)


# ---------------------------------------------------------------------------------------------
# Shared renderers (wire tokens and rich_text elements)
# ---------------------------------------------------------------------------------------------


class _Names:
    """Name lookups: caller-supplied maps first, then labels seen in the wire text."""

    def __init__(
        self,
        user_names: Mapping[str, str] | None,
        channel_names: Mapping[str, str] | None,
        text: str = "",
        unnamed_user: str | None = None,
    ) -> None:
        self.users: Mapping[str, str] = user_names or {}
        self.unnamed_user = unnamed_user
        self.channels: Mapping[str, str] = channel_names or {}
        self.user_labels: dict[str, str] = {}
        self.channel_labels: dict[str, str] = {}
        self.group_labels: dict[str, str] = {}
        for m in _TOKEN_RE.finditer(text):
            inner = m.group(0)[1:-1]
            ref, sep, label = inner.partition("|")
            label = _unescape(label)
            if not sep or not label:
                continue
            if ref.startswith("@"):
                self.user_labels.setdefault(ref[1:], label)
            elif ref.startswith("#"):
                self.channel_labels.setdefault(ref[1:], label)
            elif ref.startswith("!subteam^"):
                self.group_labels.setdefault(ref[len("!subteam^") :].split("^")[0], label)

    def user(self, user_id: str, label: str = "") -> str:
        name = (
            self.users.get(user_id) or label or self.user_labels.get(user_id) or self.unnamed_user or user_id
        )
        return "@" + name.removeprefix("@")

    def channel(self, channel_id: str, label: str = "") -> str:
        name = self.channels.get(channel_id) or label or self.channel_labels.get(channel_id) or channel_id
        return "#" + name.removeprefix("#")

    def usergroup(self, group_id: str, label: str = "") -> str:
        name = label or self.group_labels.get(group_id) or group_id
        return "@" + name.removeprefix("@")


def _render_link(url: str, label: str) -> str:
    """``label (url)``, or just the URL when there is no distinct label. ``mailto:`` shows the address."""
    shown = url[len("mailto:") :] if url.lower().startswith("mailto:") else url
    label = label.strip()
    if not label:
        return shown

    def norm(s: str) -> str:
        return _SCHEME_RE.sub("", s).rstrip("/").lower()

    if label in (url, shown) or norm(label) == norm(url):
        return shown
    return f"{label} ({shown})"


def _render_date(timestamp: object, fallback: str) -> str | None:
    """A date's fallback text, else the UTC time of ``timestamp``; None when that is not a time."""
    if fallback:
        return fallback
    try:
        seconds = float(str(timestamp))
        when = _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _render_token(inner: str, names: _Names) -> str:
    """Render the inside of a wire ``<…>`` token (still entity-escaped) as plain text."""
    ref, _, raw_label = inner.partition("|")
    label = _unescape(raw_label)
    if ref.startswith("@"):
        return names.user(ref[1:], label)
    if ref.startswith("#"):
        return names.channel(ref[1:], label)
    if ref.startswith("!"):
        command, _, args = ref[1:].partition("^")
        if command in _BROADCASTS:
            return "@" + command
        if command == "subteam":
            return names.usergroup(args.split("^")[0], label)
        if command == "date":
            stamp = args.split("^")[0]
            return _render_date(stamp, label) or stamp
        return label or "@" + command
    return _render_link(_unescape(ref), label)


def _text_to_plain(text: str, names: _Names) -> str:
    """Wire text → plain text. Tokens are replaced first, entities decoded last."""
    out: list[str] = []
    pos = 0

    def literal(chunk: str) -> None:
        out.append(_unescape(_convert_shortcodes(chunk)))

    def code(chunk: str) -> None:
        # Tokens inside code are still wire syntax (e.g. auto-linked URLs), so render them,
        # but never convert emoji shortcodes. Decode entities of the literal parts only: a
        # rendered token is already decoded and must not be decoded twice.
        start = 0
        for t in _TOKEN_RE.finditer(chunk):
            out.append(_unescape(chunk[start : t.start()]))
            out.append(_render_token(t.group(0)[1:-1], names))
            start = t.end()
        out.append(_unescape(chunk[start:]))

    for m in _SCAN_RE.finditer(text):
        literal(text[pos : m.start()])
        if m.lastgroup == "tok":
            out.append(_render_token(m.group(0)[1:-1], names))
        else:
            code(m.group(0))
        pos = m.end()
    literal(text[pos:])
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# rich_text blocks
# ---------------------------------------------------------------------------------------------


def _is_seq(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def _seq(value: object) -> Sequence[Any]:
    if not _is_seq(value):
        raise _Malformed
    return value


def _str(element: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = element.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _Malformed
    return value


def _int(element: Mapping[str, Any], key: str, default: int) -> int:
    value = element.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed
    return value


def _unicode_from_hex(code: str) -> str | None:
    if not _HEX_SEQ_RE.fullmatch(code):
        return None
    points = [int(part, 16) for part in code.split("-")]
    if any(p > 0x10FFFF or 0xD800 <= p <= 0xDFFF for p in points):
        return None
    return "".join(chr(p) for p in points)


def _render_emoji_element(element: Mapping[str, Any], *, in_code: bool) -> str:
    name = _str(element, "name")
    tone_value = element.get("skin_tone")
    tone = tone_value if isinstance(tone_value, int) and not isinstance(tone_value, bool) else None
    verbatim = f":{name}:" + (f":skin-tone-{tone}:" if tone in _SKIN_TONES else "")
    if in_code:
        return verbatim
    code = element.get("unicode")
    base = _unicode_from_hex(code) if isinstance(code, str) else None
    if base is None:
        base = _emoji_for_name(name)
    if base is None:
        return verbatim
    return _with_skin_tone(base, tone)


def _render_inline(elements: object, names: _Names, *, in_code: bool = False) -> str:
    """Render the inline elements of a section / quote / preformatted / list item."""
    out: list[str] = []
    code_run: list[str] = []

    def flush() -> None:
        if code_run:
            joined = "".join(code_run)
            if joined:
                out.append(f"`{joined}`")
            code_run.clear()

    for element in _seq(elements):
        if not isinstance(element, Mapping):
            raise _Malformed
        kind = element.get("type")
        if kind == "text":
            value = _str(element, "text")
            style = element.get("style")
            is_code = isinstance(style, Mapping) and style.get("code") is True
            if is_code and not in_code:
                code_run.append(value)
                continue
            flush()
            out.append(value if in_code else _convert_outside_code(value))
            continue
        flush()
        if kind == "link":
            out.append(_render_link(_str(element, "url"), _str(element, "text", required=False)))
        elif kind == "user":
            out.append(names.user(_str(element, "user_id")))
        elif kind == "channel":
            out.append(names.channel(_str(element, "channel_id")))
        elif kind == "usergroup":
            out.append(names.usergroup(_str(element, "usergroup_id")))
        elif kind == "broadcast":
            out.append("@" + _str(element, "range"))
        elif kind == "emoji":
            out.append(_render_emoji_element(element, in_code=in_code))
        elif kind == "date":
            date = _render_date(element.get("timestamp"), _str(element, "fallback", required=False))
            if date is None:
                raise _Malformed
            out.append(date)
        elif kind == "color":
            out.append(_str(element, "value"))
        else:
            raise _Malformed
    flush()
    return "".join(out)


def _render_list(element: Mapping[str, Any], names: _Names) -> str:
    ordered = element.get("style") == "ordered"
    indent = "  " * min(max(_int(element, "indent", 0), 0), _MAX_INDENT)
    offset = _int(element, "offset", 0)
    lines: list[str] = []
    for number, item in enumerate(_seq(element.get("elements")), start=offset + 1):
        if not isinstance(item, Mapping) or item.get("type") != "rich_text_section":
            raise _Malformed
        marker = f"{number}. " if ordered else "• "
        body = _render_inline(item.get("elements"), names).rstrip("\n")
        body = body.replace("\n", "\n" + indent + " " * len(marker))
        lines.append(indent + marker + body)
    return "\n".join(lines)


def _render_rich_block(block: Mapping[str, Any], names: _Names) -> str:
    pieces: list[str] = []
    for element in _seq(block.get("elements")):
        if not isinstance(element, Mapping):
            raise _Malformed
        kind = element.get("type")
        if kind == "rich_text_section":
            rendered = _render_inline(element.get("elements"), names)
        elif kind == "rich_text_list":
            rendered = _render_list(element, names)
        elif kind == "rich_text_quote":
            quoted = _render_inline(element.get("elements"), names).rstrip("\n")
            rendered = "\n".join("> " + line for line in quoted.split("\n"))
        elif kind == "rich_text_preformatted":
            rendered = "```" + _render_inline(element.get("elements"), names, in_code=True) + "```"
        else:
            raise _Malformed
        if pieces and not pieces[-1].endswith("\n"):
            pieces.append("\n")
        pieces.append(rendered)
    return "".join(pieces)


def _blocks_to_plain(blocks: object, names: _Names) -> str | None:
    """Render rich_text blocks, or None when they are absent or unusable."""
    try:
        if not _is_seq(blocks) or not blocks:
            return None
        if not all(isinstance(b, Mapping) and b.get("type") == "rich_text" for b in blocks):
            return None
        rendered = "\n".join(_render_rich_block(block, names) for block in blocks)
    except Exception:  # _Malformed, or anything odd inside a hand-made payload (even RecursionError)
        return None
    return rendered.rstrip("\n")


# ---------------------------------------------------------------------------------------------
# Public API: translation
# ---------------------------------------------------------------------------------------------


def mentioned_user_ids(text: str, blocks: Sequence[Mapping[str, Any]] | None = None) -> set[str]:
    """Slack user ids referenced (<@U…> / <@W…> in text, or rich_text `user` elements).

    Returned so the caller can resolve display names first (for :func:`to_plain`). Escaped
    look-alikes typed by a user (``&lt;@U1&gt;``) are not mentions. Never raises.
    """
    found = set(_MENTION_RE.findall(text)) if isinstance(text, str) else set()
    stack: list[object] = [blocks]
    seen: set[int] = set()
    try:
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            if isinstance(node, Mapping):
                seen.add(id(node))
                user_id = node.get("user_id")
                if node.get("type") == "user" and isinstance(user_id, str) and _USER_ID_RE.fullmatch(user_id):
                    found.add(user_id)
                stack.extend(node.values())
            elif _is_seq(node):
                seen.add(id(node))
                stack.extend(node)
    except Exception:  # a hostile Mapping/Sequence implementation; keep what we have
        pass
    return found


def to_plain(
    text: str,
    blocks: Sequence[Mapping[str, Any]] | None = None,
    *,
    user_names: Mapping[str, str] | None = None,
    channel_names: Mapping[str, str] | None = None,
    unnamed_user: str | None = None,
) -> str:
    """Slack wire text (or rich_text blocks when present) → plain text.

    * Blocks are used when every block is ``rich_text`` and they render cleanly to non-blank
      text; otherwise ``text`` is parsed. Labels found in ``text`` (``<#C1|general>``,
      ``<@U1|bob>``, ``<!subteam^S1|@team>``) also name the ids in blocks, which carry none.
    * Mentions: ``@`` + ``user_names[id]``, else the token label, else ``unnamed_user`` when
      given (a caller that did not look everyone up), else the id. Channels likewise
      with ``#``. Broadcasts → ``@here`` / ``@channel`` / ``@everyone``; user groups → their label.
    * Links: ``label (url)``, or just the URL if the label is empty or equals the URL (with or
      without scheme); ``mailto:`` links show the address.
    * Emoji shortcodes → Unicode (see module docstring); code spans/blocks are left verbatim,
      keeping their backticks and fences.
    * Entities ``&amp; &lt; &gt;`` are decoded last, once, so escaped look-alikes stay text.

    Never raises for a ``str`` text and any blocks value.
    """
    names = _Names(user_names, channel_names, text, unnamed_user)
    if blocks is not None:
        rendered = _blocks_to_plain(blocks, names)
        if rendered is not None and (rendered.strip() or not text.strip()):
            return rendered
    return _text_to_plain(text, names)


def quote_parent(parent_text: str, *, max_chars: int = 80) -> str:
    """Short one-line quote of a thread parent, e.g. '↪ re: "first words…"' for thread replies.

    ``parent_text`` should already be plain (see :func:`to_plain`). Whitespace is collapsed to
    single spaces; when longer than ``max_chars`` (code points, quote marks excluded) the excerpt
    is cut at a word boundary where possible and ends with ``…``. An empty parent (e.g. a
    file-only message) gives ``↪ re: (thread)``.
    """
    flat = " ".join(parent_text.split())
    if not flat:
        return "↪ re: (thread)"
    max_chars = max(1, max_chars)
    if len(flat) > max_chars:
        room = max_chars - 1  # keep one code point for the ellipsis
        space = flat.rfind(" ", 0, room + 1)
        cut = space if space >= room // 2 and space > 0 else _safe_cut(flat, room, 0)
        flat = flat[:cut].rstrip() + "…"
    return f'↪ re: "{flat}"'


# ---------------------------------------------------------------------------------------------
# Public API: splitting
# ---------------------------------------------------------------------------------------------

# Preferred split points, strongest first. Each regex matches the whitespace dropped at a split.
_SPLIT_LEVELS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\n\s*\n\s*"),  # paragraph: at least one blank line
    re.compile(r"\s*\n\s*"),  # line break
    re.compile(r"(?<=[.!?…。！？])\s+"),  # sentence end
    re.compile(r"\s+"),  # any whitespace
)


def _joins_previous(ch: str) -> bool:
    """True when ``ch`` must stay attached to the preceding code point (same grapheme)."""
    return (
        ch == _ZWJ
        or ch in _SKIN_TONE_CHARS
        or "\ufe00" <= ch <= "\ufe0f"
        or "\U000e0020" <= ch <= "\U000e007f"
        or unicodedata.category(ch).startswith("M")
    )


def _safe_cut(text: str, pos: int, floor: int) -> int:
    """Move a hard cut at ``pos`` left (by at most 16) so it does not split an emoji/accent.

    ``floor < pos < len(text)``; the result stays above ``floor`` so a chunk is never empty.
    """

    def splits_grapheme(at: int) -> bool:
        return _joins_previous(text[at]) or text[at - 1] == _ZWJ

    if pos <= floor + 1 or pos >= len(text):
        return pos
    cut = pos
    while cut > floor + 1 and pos - cut < 16 and splits_grapheme(cut):
        cut -= 1
    return pos if splits_grapheme(cut) else cut


def _hard_cut(text: str, cap: int) -> list[str]:
    out: list[str] = []
    start = 0
    while len(text) - start > cap:
        cut = _safe_cut(text, start + cap, start)
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _split_chunks(text: str, cap: int, level: int = 0) -> list[str]:
    """Split ``text`` into stripped, non-empty chunks of at most ``cap`` code points.

    Greedily packs pieces separated at the strongest available boundary; a piece that is still
    too long is split at the next weaker boundary, down to a hard cut. Only whitespace is lost.
    """
    text = text.strip()
    if not text:
        return []
    if len(text) <= cap:
        return [text]
    if level >= len(_SPLIT_LEVELS):
        return [c for c in (p.strip() for p in _hard_cut(text, cap)) if c]
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _SPLIT_LEVELS[level].finditer(text):
        if m.start() > pos:
            spans.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        spans.append((pos, len(text)))

    out: list[str] = []
    start: int | None = None
    end = 0
    for s, e in spans:
        if start is not None and e - start <= cap:
            end = e
            continue
        if start is not None:
            out.append(text[start:end])
            start = None
        if e - s <= cap:
            start, end = s, e
        else:
            out.extend(_split_chunks(text[s:e], cap, level + 1))
    if start is not None:
        out.append(text[start:end])
    return [c for c in (p.strip() for p in out) if c]


def _check_format(fmt: str) -> int:
    """Validate ``fmt``; return how many times ``{name}`` occurs."""
    fields: list[str] = []
    for _, field, spec, conversion in string.Formatter().parse(fmt):
        if field is None:
            continue
        if field not in ("name", "text") or spec or conversion:
            raise ValueError(f"fmt may only use plain {{name}} and {{text}} fields, got {fmt!r}")
        fields.append(field)
    if fields.count("text") != 1:
        raise ValueError(f"fmt must contain {{text}} exactly once, got {fmt!r}")
    return fields.count("name")


def _fit_name(fmt: str, name: str, budget: int, name_uses: int) -> str:
    """Truncate ``name`` (ending in …) so the formatted prefix/suffix fits ``budget``."""

    def overhead(candidate: str) -> int:
        return len(fmt.format(name=candidate, text=""))

    if name_uses == 0 or overhead(name) <= budget:
        return name
    base = overhead("")
    keep = min(len(name) - 1, (budget - base) // name_uses - 1)
    while keep >= 0 and overhead(name[:keep] + "…") > budget:
        keep -= 1
    return name[:keep].rstrip() + "…" if keep >= 0 else ""


def render_parts(
    body: str, *, name: str, fmt: str = "{name}: {text}", limit: int = X_TEXT_LIMIT
) -> list[str]:
    """Apply the sender line format and split into numbered parts, each len() <= limit.

    Length is Python ``len()`` (Unicode code points), not X's weighted count; X's 10,000 DM
    limit is at least that generous for every character.

    * If ``fmt.format(name=name, text=body)`` fits, it is the single, un-numbered part.
    * Otherwise ``name`` is shortened with ``…`` if the formatted prefix/suffix alone would take
      more than half of ``limit`` (short limits stay readable), and that is retried as one part.
    * Otherwise ``body`` is split at paragraph breaks, then line breaks, then sentence ends, then
      whitespace, then hard cuts (never inside an emoji sequence when avoidable), and each chunk
      becomes ``fmt`` with ``text = f"{chunk} ({i}/{n})"``. The numbering width depends on the
      digits of ``n``, so the chunk size is recomputed until ``n``'s width is stable.

    Parts are never empty; the chunks keep every non-whitespace character of ``body`` in order
    (only whitespace at split points, and at chunk edges, is dropped; a blank body that does
    not fit becomes ``""``). If the numbering of very many parts leaves no room for text at a
    tiny ``limit``, the name is shortened further before giving up.

    Raises ``ValueError`` if ``fmt`` uses fields other than a single plain ``{text}`` and any
    number of plain ``{name}``, or if ``limit`` is too small to hold one character per part.
    """
    name_uses = _check_format(fmt)
    whole = fmt.format(name=name, text=body)
    if len(whole) <= limit:
        return [whole]
    name = _fit_name(fmt, name, limit // 2, name_uses)
    text = body if body.strip() else ""  # a blank body carries nothing worth splitting
    whole = fmt.format(name=name, text=text)
    if len(whole) <= limit:
        return [whole]
    if not text:
        raise ValueError(f"limit={limit} cannot hold the format {fmt!r}")
    overhead = len(fmt.format(name=name, text=""))
    digits = 1
    while True:
        cap = limit - overhead - len(f" ({'9' * digits}/{'9' * digits})")
        if cap < 1:
            # Numbering grew (many parts at a tiny limit): give the name's room to the text.
            shorter = _fit_name(fmt, name, overhead - (1 - cap), name_uses)
            if shorter == name:
                raise ValueError(f"limit={limit} is too small to split this message")
            name = shorter
            overhead = len(fmt.format(name=name, text=""))
            continue
        chunks = _split_chunks(body, cap)
        total = len(chunks)
        if len(str(total)) <= digits:
            break
        digits = len(str(total))
    return [fmt.format(name=name, text=f"{chunk} ({i}/{total})") for i, chunk in enumerate(chunks, start=1)]


def to_slack(text: str) -> str:
    """X's plain text as Slack message text, to be posted with Slack's markup off
    (``SlackClient.post_as``): then only ``&``, ``<`` and ``>`` need escaping (Slack would read
    ``<@U…>`` or ``<!channel>`` as a mention that pings, ``&amp;`` as ``&``).

    Why markup off rather than invisible characters around ``*``, ``_``, ``~`` and backticks:
    Slack's mrkdwn has no escape, and where a zero-width space stops or starts formatting is
    undocumented client behaviour; one inside a URL (``a_b``) breaks the link, and copies and
    searches carry it. With ``mrkdwn: false`` (documented) the text stays byte for byte what the
    X author typed, and Slack still links bare URLs."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
