"""The curl examples of the API references in `../shared/seeds/` (bundled in tests/data/seeds),
parsed from the files as written, so that a test can run them against a live server."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SEEDS = Path(__file__).parent / "data" / "seeds"

_CONTINUATION = re.compile(r"\\[ \t]*(\n|(?=[ \t]))")
_CURL = re.compile(r"(?<![\w./-])curl\s")
_FLAGS = {"-s", "-S", "-sS", "-N", "-L", "-f", "-v", "-i"}
_WITH_VALUE = {"-X", "-H", "-d", "--data", "-F", "-o"}


@dataclass
class Example:
    """One curl command of a seed file."""

    source: str
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    data: str | None = None
    form: list[str] = field(default_factory=list)
    """`-F` fields as written: `name=value`, or `name=@file` to send a file's contents."""
    output: str | None = None
    """`-o`: the file the response body is written to (relative to the working directory)."""
    streams: bool = False
    follows: bool = False
    """`-L`: follow redirects."""

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def id(self) -> str:
        return f"{self.source}:{self.method} {self.path}"


def examples(*names: str) -> list[Example]:
    """Every curl command in the seed files whose names start with `names`."""
    found = []
    for name in names:
        for path in sorted(SEEDS.glob(f"{name}*.txt")):
            found.extend(_parse(path.read_text(), path.name.split("_")[0]))
    return found


def _parse(text: str, source: str) -> list[Example]:
    text = _CONTINUATION.sub(" ", text)
    found = []
    for match in _CURL.finditer(text):
        example = _command(text[match.start() :], source)
        if example is not None:
            found.append(example)
    return found


def _command(text: str, source: str) -> Example | None:
    """The curl command at the start of `text`, read token by token until the first token
    that is not part of it (a pipe, a comment, prose)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    tokens: list[str] = []
    try:
        while (token := lexer.get_token()) not in (None, ""):
            tokens.append(token)
            if len(tokens) > 40:
                break
    except ValueError:  # an unbalanced quote in the prose after the command
        pass
    options: dict[str, list[str]] = {}
    url = ""
    index = 1
    while index < len(tokens):
        token = tokens[index]
        if token in _FLAGS:
            options.setdefault(token, [])
        elif token in _WITH_VALUE and index + 1 < len(tokens):
            options.setdefault(token, []).append(tokens[index + 1])
            index += 1
        elif token.startswith("http://") and not url:
            # `$(curl ... "http://...")` in a shell line: the `)` closes the substitution.
            url = token.removesuffix(")")
        else:
            break
        index += 1
    if not url:
        return None
    data = (options.get("-d") or options.get("--data") or [None])[0]
    form = options.get("-F", [])
    method = (options.get("-X") or ["POST" if data is not None or form else "GET"])[0]
    headers = dict(h.split(":", 1) for h in options.get("-H", []) if ":" in h)
    return Example(
        source=source,
        method=method,
        url=url,
        headers={k.strip(): v.strip() for k, v in headers.items()},
        data=data,
        form=form,
        output=(options.get("-o") or [None])[0],
        streams="-N" in options,
        follows="-L" in options,
    )
