"""Translate a Dockerfile into an :class:`~stockade.image.Image`, on the client.

Why: many projects already describe their environment in a Dockerfile, but Stockade's
server builds ``Image`` steps, not Dockerfiles. This module reads the file and replays it
with the fluent API, so the result is cached, built and exported like any other ``Image``.
It needs neither Docker nor the network; :meth:`Image.from_dockerfile` is its public door.

What is translated (keywords are case-insensitive):

- ``FROM image [AS name]``: the base. A bare name (``python``, ``debian``) is a Stockade
  base image (``Image.from_name``); anything with ``:``, ``/`` or ``@`` (``agent:v1``,
  ``python:3.12-slim``) is ``Image.from_registry(ref)`` as written, no ``:latest`` added:
  the server's build looks for a Stockade image of that name before it pulls. Exactly one
  FROM; only ARG may come before it.
- ``ARG NAME[=default] ...``: before FROM (for FROM) and after it, with Docker's scoping: a
  global ARG is seen after FROM only once redeclared there. ``build_args`` win over
  defaults; build args that no ARG declares are ignored, as Docker does (it warns).
- ``ENV NAME=value ...`` and the legacy ``ENV NAME value`` -> ``Image.env``.
- ``RUN cmd`` -> ``Image.run_commands(cmd)``; ``RUN ["a", "b"]`` -> ``shlex.join`` of it.
  One step per RUN, as Docker makes one layer per RUN. Docker gives a RUN the ARGs in
  scope as environment variables (an ENV of the same name wins); the server's run step
  only knows the image's ENV, so such a command starts with ``export NAME='value'; ``.
- ``WORKDIR path`` -> ``Image.workdir``; a relative path is joined to the previous WORKDIR,
  or to ``/`` (the base image's own working directory is not known here).
- ``COPY src... dest`` and ``ADD src... dest`` of files in ``context``: globs expand
  (sorted); a directory's contents go into ``dest``; a file goes to ``dest`` itself, or to
  ``dest/<name>`` when ``dest`` ends with ``/`` (or is ``.``) or there are several sources.
  As in Docker, a source starting with ``/`` is still relative to the context, and nothing
  may lead outside it. A destination whose ``..`` climbs above ``/`` is refused, where
  Docker would stop at ``/``: every copy step of the SDK and the server refuses it.
  ``ADD`` of a local tar archive copies the archive as it is: there is no auto-extraction
  (``RUN tar -xf`` it). ``.dockerignore`` is not read.
- ``USER user[:group]``, ``ENTRYPOINT`` and ``CMD`` (the exec form as is; the shell form
  as ``["/bin/sh", "-c", text]``).
- Comments, blank lines, line continuations, and the ``# escape=`` and ``# syntax=``
  parser directives (``syntax`` and ``check`` are ignored).

Variables (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
``${VAR:+alt}``, ``${VAR+alt}``, ``${VAR:?message}``, quotes, ``\\$``) are substituted by
Docker's rules in FROM, ARG, ENV, WORKDIR, COPY, ADD and USER, and left to the shell in
RUN, CMD and ENTRYPOINT. After FROM, a variable must be declared above by an ARG or an
ENV: Docker would take it from the base image's environment, which only the server sees,
so ``ENV PATH=/opt/bin:$PATH`` is an error that says to write the value out rather than
a silently broken PATH.

Everything else (EXPOSE, LABEL, VOLUME, HEALTHCHECK, SHELL, ONBUILD, STOPSIGNAL,
MAINTAINER, multi-stage builds, heredocs, ``--flags`` such as ``--mount`` or ``--chown``,
URL sources) raises :class:`~stockade.errors.InvalidArgumentError` as
``Dockerfile:LINE: INSTRUCTION: what is wrong; what to do``, where LINE is the first
physical line of a continued instruction.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import InvalidArgumentError
from stockade.image import Image

__all__ = ["image_from_dockerfile"]

# What each supported instruction looks like, for "needs an argument" errors.
_USAGE = {
    "FROM": "FROM python:3.12-slim",
    "ARG": "ARG VERSION=1.0",
    "ENV": "ENV NAME=value",
    "RUN": "RUN pip install requests",
    "WORKDIR": "WORKDIR /app",
    "COPY": "COPY . /app",
    "ADD": "ADD . /app",
    "USER": "USER 1000:1000",
    "ENTRYPOINT": 'ENTRYPOINT ["python3", "app.py"]',
    "CMD": 'CMD ["python3", "app.py"]',
}
_SUPPORTED = ", ".join(_USAGE)

# Docker instructions that are refused on purpose, with what to do instead.
_METADATA = "image metadata that Stockade does not keep; remove the line"
_UNSUPPORTED = {
    "EXPOSE": _METADATA,
    "LABEL": _METADATA,
    "MAINTAINER": _METADATA,
    "STOPSIGNAL": _METADATA,
    "VOLUME": _METADATA,
    "HEALTHCHECK": _METADATA,
    "SHELL": "name the shell in the command instead: RUN bash -c '...'",
    "ONBUILD": "write the steps into the Dockerfile that would have used this image",
}

_FLAG_HINTS = {
    "--platform": "the server builds for its own platform; remove the flag",
    "--mount": "build mounts do not exist here; COPY what the step needs or fetch it in RUN",
    "--chown": "add a `RUN chown ...` step after it",
    "--chmod": "add a `RUN chmod ...` step after it",
    "--from": "multi-stage builds are not supported",
}

# Docker sets these itself from the build platform, which is the server's and unknown here.
_PLATFORM_ARGS = frozenset(
    f"{side}{part}"
    for side in ("TARGET", "BUILD")
    for part in ("PLATFORM", "OS", "ARCH", "VARIANT")
)

# buildkit's parser directive pattern; only these names are directives, others are comments.
_DIRECTIVE = re.compile(r"#[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*")
_DIRECTIVES = ("syntax", "escape", "check")

# buildkit treats a word like `<<EOF`, `<<-EOF` or `2<<"EOF"` in RUN, COPY and ADD as a heredoc.
_HEREDOC = re.compile(r"\d*<<-?[^<]+")
# A JSON array was meant when RUN/CMD/ENTRYPOINT start with "[" and a non-space (the shell's
# `[ -f x ]` test has a space), or COPY/ADD with "[" and a quote (a glob `[ab]*` has none).
_COMMAND_JSON = re.compile(r"\[[^\s\[]")
_COPY_JSON = re.compile(r"\[\s*[\"']")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|git@")
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The shell's special parameters: `$$` and `$?` are no variables of the Dockerfile.
_SPECIAL_PARAMS = "@*#?-$!"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How deep ${VAR:-${VAR:-...}} may nest. The expansion recurses once per level, and Python's
# stack is not Go's: a few thousand levels would end in a RecursionError. Real files nest
# two or three deep.
_MAX_NESTING = 64
# Bounds on a COPY source, checked before pathlib sees it: no file has a name over NAME_MAX,
# fnmatch's translation of a glob is quadratic in a name's length ("[[[[…" of 8 KiB takes
# seconds), and pathlib's glob recurses once per component (a few hundred overflow it).
_NAME_MAX = 255
_MAX_GLOB_DEPTH = 64


def image_from_dockerfile(
    dockerfile: Path, *, context: Path, build_args: Mapping[str, str]
) -> Image:
    """The :class:`Image` that ``dockerfile`` describes, its COPY sources read from ``context``.

    The rules are in this module's docstring; any error is an ``InvalidArgumentError`` that
    names the file and the line.

    Example::

        image = image_from_dockerfile(
            Path("Dockerfile"), context=Path("."), build_args={"VERSION": "1.4"}
        )
    """
    where = str(dockerfile)
    try:
        # utf-8-sig drops a byte order mark; text mode turns CRLF endings into "\n".
        text = dockerfile.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{where}: a Dockerfile must be UTF-8 text ({exc})") from exc
    except OSError as exc:
        raise InvalidArgumentError(
            f"{where}: cannot read the Dockerfile: {exc.strerror or exc}"
        ) from exc
    if not context.is_dir():
        raise InvalidArgumentError(
            f"{context}: the build context is not a directory; pass context= the directory "
            "that COPY sources are relative to"
        )
    escape, instructions = _parse(where, text)
    translator = _Translator(context.resolve(), build_args, escape)
    for ins in instructions:
        try:
            translator.apply(ins)
        except _Bad as exc:
            raise InvalidArgumentError(f"{where}:{ins.line}: {ins.keyword}: {exc}") from None
        except InvalidArgumentError as exc:  # an Image method refused a translated value
            raise InvalidArgumentError(f"{where}:{ins.line}: {ins.keyword}: {exc}") from exc
    if translator.image is None:
        raise InvalidArgumentError(
            f"{where}: there is no FROM; a Dockerfile starts with FROM <image>, e.g. "
            f"{_USAGE['FROM']}"
        )
    return translator.image


class _Bad(Exception):
    """A problem with one instruction; the caller adds the file, line and keyword."""


@dataclass(frozen=True)
class _Instruction:
    line: int  # the first physical line: the one an editor should jump to
    keyword: str  # upper case, as messages show it
    args: str  # the rest, continuation lines joined, outer whitespace trimmed


# -- reading the file ----------------------------------------------------------------------


def _parse(where: str, text: str) -> tuple[str, list[_Instruction]]:
    """The escape character and the instructions, as buildkit's parser splits them."""
    lines = text.split("\n")
    escape = "\\"
    seen: set[str] = set()
    number = 0
    # Directives count only at the very top: the first line that is not one ends them.
    while number < len(lines):
        match = _DIRECTIVE.fullmatch(lines[number])
        if match is None or match[1].lower() not in _DIRECTIVES:
            break
        name, value = match[1].lower(), match[2]
        number += 1
        if name in seen:
            raise InvalidArgumentError(
                f"{where}:{number}: only one `# {name}=` parser directive is allowed"
            )
        seen.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise InvalidArgumentError(
                    f"{where}:{number}: `# escape={value}`: the escape character must be \\ or `"
                )
            escape = value

    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    instructions: list[_Instruction] = []
    while number < len(lines):
        first = number + 1
        text = lines[number].lstrip()
        number += 1
        if not text or text.startswith("#"):
            continue
        text, more = _cut(continued, text)
        while more and number < len(lines):
            line = lines[number]
            number += 1
            # Docker drops comment and blank lines inside a continued instruction.
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            # Lines are joined as they are: `a \` + `  b` is `a   b`, as in Docker.
            part, more = _cut(continued, line)
            text += part
        if not text.strip():
            continue  # only escape characters and blanks (a lone `\` line): no instruction
        keyword, *args = text.split(None, 1)
        instructions.append(_Instruction(first, keyword.upper(), "".join(args).strip()))
    return escape, instructions


def _cut(continued: re.Pattern[str], line: str) -> tuple[str, bool]:
    """The line without a trailing escape character, and whether the instruction goes on."""
    match = continued.search(line)
    return (line[: match.start()], True) if match else (line, False)


def _split_words(text: str, escape: str) -> list[str]:
    """Split on whitespace outside quotes, keeping the quotes and escapes (buildkit's
    ``parseWords``): ENV and ARG find their pairs so, then expand each word."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        if not quote and ch.isspace():
            if word:
                words.append("".join(word))
                word = []
            continue
        if ch == escape and quote != "'":
            # An escaped character (a quote, a space) stays in the word with its escape.
            word.append(text[i - 1 : i + 1])
            i += 1
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        word.append(ch)
    if word:
        words.append("".join(word))
    return words


# -- Docker's word expansion ---------------------------------------------------------------

# What a variable is worth: None when unset; raises _Bad when the value cannot be known.
_Lookup = Callable[[str], "str | None"]


class _Word:
    """One word expanded as buildkit's shell lexer does (``frontend/dockerfile/shell``):
    quotes removed, escapes applied, variables substituted. Not thread-safe: one use."""

    def __init__(self, text: str, escape: str, lookup: _Lookup) -> None:
        self._text = text
        self._pos = 0
        self._escape = escape
        self._lookup = lookup
        self._depth = 0  # ${...} open around the current position

    def expand(self) -> str:
        return self._until("")

    def _peek(self) -> str:
        return self._text[self._pos : self._pos + 1]

    def _next(self) -> str:
        ch = self._peek()
        self._pos += len(ch)
        return ch

    def _until(self, stop: str) -> str:
        """The expansion up to ``stop`` (consumed), or to the end when ``stop`` is ""."""
        out: list[str] = []
        while ch := self._peek():
            if ch == stop:
                self._pos += 1
                return "".join(out)
            if ch == "'":
                out.append(self._single_quoted())
            elif ch == '"':
                out.append(self._double_quoted())
            elif ch == "$":
                out.append(self._dollar())
            else:
                self._pos += 1
                # An escape makes the next character literal; one at the very end is dropped.
                out.append(self._next() if ch == self._escape else ch)
        if stop:
            raise _Bad(f"missing {stop!r} in {self._text!r}")
        return "".join(out)

    def _single_quoted(self) -> str:
        end = self._text.find("'", self._pos + 1)
        if end < 0:
            raise _Bad(f"unterminated single quote in {self._text!r}")
        value = self._text[self._pos + 1 : end]
        self._pos = end + 1
        return value

    def _double_quoted(self) -> str:
        self._pos += 1
        out: list[str] = []
        while ch := self._peek():
            if ch == '"':
                self._pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self._pos += 1
            # Inside double quotes only ", $ and the escape itself can be escaped.
            if ch == self._escape and self._peek() in ('"', "$", self._escape):
                ch = self._next()
            out.append(ch)
        raise _Bad(f"unterminated double quote in {self._text!r}")

    def _dollar(self) -> str:
        self._pos += 1
        if self._peek() != "{":
            name = self._name()
            return "$" if not name else (self._value(name) or "")
        self._pos += 1
        if self._peek() in ("", "{", "}", ":"):
            raise self._bad_substitution()
        name = self._name()
        op = self._next()
        if op == "}":
            return self._value(name) or ""
        colon = op == ":"
        if colon:
            op = self._next()
        if not name or op not in ("-", "+", "?"):
            # Newer buildkit also has ${VAR#pattern}, ${VAR%pattern} and ${VAR/a/b}.
            raise self._bad_substitution()
        if self._depth >= _MAX_NESTING:
            raise _Bad(
                f"substitutions nested more than {_MAX_NESTING} deep in {self._text[:60]!r}...; "
                "set an ARG or ENV to the inner value instead"
            )
        self._depth += 1
        word = self._until("}")
        self._depth -= 1
        value = self._value(name)
        if colon and value == "":
            value = None  # the ":" forms treat an empty value as unset
        if op == "-":
            return word if value is None else value
        if op == "+":
            return "" if value is None else word
        if value is None:
            raise _Bad(f"${{{name}}}: {word or 'is not set'}")
        return value

    def _name(self) -> str:
        start = self._pos
        ch = self._peek()
        if ch.isdecimal():  # a positional parameter: $1, $12
            while self._peek().isdecimal():
                self._pos += 1
        elif ch and ch in _SPECIAL_PARAMS:
            self._pos += 1
        else:
            while (c := self._peek()) and (c.isalnum() or c == "_"):
                self._pos += 1
        return self._text[start : self._pos]

    def _value(self, name: str) -> str | None:
        # Positional and special parameters never have a value at build time.
        if not (name[0].isalpha() or name[0] == "_"):
            return None
        return self._lookup(name)

    def _bad_substitution(self) -> _Bad:
        return _Bad(
            f"bad substitution in {self._text!r}: the forms are $VAR, ${{VAR}}, "
            "${VAR:-default}, ${VAR-default}, ${VAR:+alt}, ${VAR+alt}, ${VAR:?message}"
        )


# -- the instructions ----------------------------------------------------------------------


class _Translator:
    """Replays instructions onto an ``Image``, with Docker's ARG, ENV and WORKDIR state."""

    def __init__(self, context: Path, build_args: Mapping[str, str], escape: str) -> None:
        self.context = context  # resolved: sources must resolve under it
        self.build_args = build_args
        self.escape = escape
        self.image: Image | None = None  # set by FROM
        self.global_args: dict[str, str | None] = {}  # ARGs before FROM: None is unset
        self.args: dict[str, str | None] = {}  # ARGs after FROM
        self.env: dict[str, str] = {}  # ENVs so far (the base image's are unknown)
        self.workdir = "/"
        self._handlers: dict[str, Callable[[_Instruction], None]] = {
            "FROM": self._from,
            "ARG": self._arg,
            "ENV": self._env,
            "RUN": self._run,
            "WORKDIR": self._workdir,
            "COPY": self._copy,
            "ADD": self._copy,
            "USER": self._user,
            "ENTRYPOINT": self._entrypoint,
            "CMD": self._cmd,
        }

    def apply(self, ins: _Instruction) -> None:
        handler = self._handlers.get(ins.keyword)
        if handler is None:
            hint = _UNSUPPORTED.get(ins.keyword, "not a Dockerfile instruction")
            raise _Bad(f"not supported ({hint}); Stockade translates {_SUPPORTED}")
        if self.image is None and ins.keyword not in ("FROM", "ARG"):
            raise _Bad(f"comes before FROM; a Dockerfile starts with {_USAGE['FROM']}")
        if not ins.args:
            raise _Bad(f"needs an argument, e.g. {_USAGE[ins.keyword]}")
        if ins.args.startswith("--"):
            flag = ins.args.split(None, 1)[0].split("=", 1)[0]
            hint = _FLAG_HINTS.get(flag, "remove it")
            raise _Bad(f"the {flag} flag is not supported; {hint}")
        handler(ins)

    @property
    def _stage(self) -> Image:
        # apply() lets nothing but FROM and ARG (which do not use this) come before FROM.
        assert self.image is not None
        return self.image

    def _expand(self, word: str) -> str:
        lookup = self._global_value if self.image is None else self._stage_value
        return _Word(word, self.escape, lookup).expand()

    def _global_value(self, name: str) -> str | None:
        if name in self.global_args:
            return self.global_args[name]
        if name in _PLATFORM_ARGS:  # Docker declares these in the global scope itself
            return self._platform_arg(name)
        return None  # Docker warns and substitutes nothing

    def _stage_value(self, name: str) -> str | None:
        if name in self.env:  # an ENV wins over an ARG of the same name
            return self.env[name]
        if name in self.args:
            return self.args[name]
        hint = ""
        if name in self.global_args:
            hint = f"; the global ARG {name} is seen after FROM once redeclared: ARG {name}"
        elif name == "PATH":
            hint = f", e.g. ENV PATH=/opt/tool/bin:{_DEFAULT_PATH}"
        raise _Bad(
            f"${name} is not declared by an ARG or ENV above; Docker would take it from the "
            "base image's environment, which is not known until the server builds the "
            f"image: write the value out{hint}"
        )

    def _platform_arg(self, name: str) -> str:
        if name in self.build_args:
            return self.build_args[name]
        raise _Bad(
            f"{name} is set by Docker from the build platform, which is not known here; "
            f"pass it: build_args={{{name!r}: ...}}"
        )

    def _from(self, ins: _Instruction) -> None:
        if self.image is not None:
            raise _Bad(
                "a second FROM: multi-stage builds are not supported; build in one stage "
                "(or build the first stage's image and FROM it by name)"
            )
        words = ins.args.split()
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise _Bad(f"expected FROM <image> [AS <name>], got {ins.args!r}")
        ref = self._expand(words[0]).strip()
        if not ref:
            raise _Bad(f"{words[0]!r} is empty; give the ARG a default or pass build_args")
        if ref == "scratch":
            raise _Bad(
                "FROM scratch is not supported; start from a Stockade base image "
                "(FROM debian) or a registry image"
            )
        # A bare name is a Stockade base image. Anything else may be a Stockade image too
        # (`agent:v1`) or a registry's (`python:3.12-slim`): from_registry keeps it as
        # written (no ":latest"), and the server's build looks for its own image of that
        # name before it pulls.
        if any(c in ref for c in ":/@"):
            self.image = Image.from_registry(ref)
        else:
            self.image = Image.from_name(ref)

    def _arg(self, ins: _Instruction) -> None:
        in_stage = self.image is not None
        scope = self.args if in_stage else self.global_args
        # One at a time: `ARG A=1 B=$A` sees the A it just declared.
        for word in _split_words(ins.args, self.escape):
            name, has_default, default = word.partition("=")
            if not name:
                raise _Bad(f"{word!r} has no name; write ARG NAME[=default]")
            value: str | None
            if name in self.build_args:
                value = self.build_args[name]
            elif name in _PLATFORM_ARGS:
                value = self._platform_arg(name)
            elif has_default:
                value = self._expand(default)
            else:
                # Redeclared after FROM, a global ARG brings its value; otherwise unset.
                value = self.global_args.get(name) if in_stage else None
            scope[name] = value

    def _env(self, ins: _Instruction) -> None:
        words = _split_words(ins.args, self.escape)
        pairs: list[tuple[str, str]] = []
        if "=" not in words[0]:
            # The legacy `ENV NAME the rest of the line`: one variable.
            parts = ins.args.split(None, 1)
            if len(parts) < 2:
                raise _Bad(f"{parts[0]} has no value; write ENV {parts[0]}=value")
            pairs.append((parts[0], parts[1]))
        else:
            for word in words:
                name, eq, value = word.partition("=")
                if not eq:
                    raise _Bad(
                        f'{word!r} is not NAME=value (quote a value with spaces: NAME="a b")'
                    )
                pairs.append((name, value))
        # All values are expanded before any is set: `ENV A=2 B=$A` gives B the old A.
        variables = {self._expand(name): self._expand(value) for name, value in pairs}
        if "" in variables:
            raise _Bad("a variable name is empty; write ENV NAME=value")
        self.env.update(variables)
        self.image = self._stage.env(variables)

    def _run(self, ins: _Instruction) -> None:
        argv = self._exec_form(ins)
        if argv is None:
            self._refuse_heredoc(ins.args)
            command = ins.args
        else:
            command = shlex.join(argv)
        exported = {
            name: value
            for name, value in self.args.items()
            if value is not None and name not in self.env and _SHELL_NAME.fullmatch(name)
        }
        if exported:
            assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in exported.items())
            command = f"export {assignments}; {command}"
        self.image = self._stage.run_commands(command)

    def _workdir(self, ins: _Instruction) -> None:
        path = self._expand(ins.args)
        if not path:
            raise _Bad(f"{ins.args!r} is empty")
        self.workdir = _image_path(self.workdir, path)
        self.image = self._stage.workdir(self.workdir)

    def _user(self, ins: _Instruction) -> None:
        words = ins.args.split()
        if len(words) != 1:
            raise _Bad(f"takes one user, e.g. {_USAGE['USER']}, got {ins.args!r}")
        self.image = self._stage.user(self._expand(words[0]))

    def _entrypoint(self, ins: _Instruction) -> None:
        self.image = self._stage.entrypoint(self._argv(ins))

    def _cmd(self, ins: _Instruction) -> None:
        self.image = self._stage.cmd(self._argv(ins))

    def _argv(self, ins: _Instruction) -> list[str]:
        argv = self._exec_form(ins)
        return ["/bin/sh", "-c", ins.args] if argv is None else argv

    def _copy(self, ins: _Instruction) -> None:
        items = _json_array(ins.args, _COPY_JSON)
        if items is None:
            self._refuse_heredoc(ins.args)
            # Docker splits COPY on whitespace only (quotes do not group); JSON keeps spaces.
            items = ins.args.split()
        if len(items) < 2:
            raise _Bad(f"needs sources and a destination, e.g. {_USAGE[ins.keyword]}")
        *sources, dest = [self._expand(item) for item in items]
        target = _copy_destination(self.workdir, dest)
        paths = [path for source in sources for path in self._sources(source)]
        # Docker: a destination ending in "/" (or ".") is a directory; several sources
        # need one (Docker then insists on the "/", which is forgiven here).
        into = posixpath.basename(dest) in ("", ".", "..") or len(paths) > 1
        image = self._stage
        for path in paths:
            if path.is_dir():
                image = image.add_local_dir(path, target)
            elif into:
                image = image.add_local_file(path, posixpath.join(target, path.name))
            else:
                image = image.add_local_file(path, target)
        self.image = image

    def _sources(self, source: str) -> list[Path]:
        """The context paths a COPY source names, sorted when it is a glob."""
        if _URL.match(source):
            raise _Bad(
                f"{source}: URL sources are not supported; download it in a RUN step "
                "(curl, git clone) or into the build context first"
            )
        if not source:
            raise _Bad("a source is empty (an unset variable?); it would copy the whole context")
        # As in Docker, "/x" is the context's x; ".." must not climb out of the context.
        relative = posixpath.normpath(source.lstrip("/") or ".")
        if relative == ".." or relative.startswith("../"):
            raise _Bad(f"{source} is outside the build context {self.context}")
        components = relative.split("/")
        if any(len(c.encode("utf-8", "surrogatepass")) > _NAME_MAX for c in components):
            raise _Bad(f"{source}: a name in it is longer than {_NAME_MAX} bytes; no file is")
        glob = any(c in relative for c in "*?[")
        if glob and len(components) > _MAX_GLOB_DEPTH:
            raise _Bad(f"{source}: a pattern of more than {_MAX_GLOB_DEPTH} path components")
        try:
            if glob:
                paths = sorted(self.context.glob(relative))
                if not paths:
                    raise _Bad(f"{source}: no file in the build context {self.context} matches it")
            else:
                paths = [self.context / relative]
                if not paths[0].exists():
                    raise _Bad(f"{source}: no such file or directory in {self.context}")
        except ValueError as exc:  # pathlib refuses "**" that is not a whole path component
            raise _Bad(f"{source}: {exc}") from None
        except OSError as exc:  # the kernel refuses the path itself, e.g. a name too long
            raise _Bad(f"{source}: {exc.strerror or exc}") from None
        for path in paths:
            # os.path.realpath, not Path.resolve: this Python's resolve raises RuntimeError for
            # a symlink loop in the context; realpath leaves the loop in place, and add_local_*
            # then refuses it as neither file nor directory.
            if not Path(os.path.realpath(path)).is_relative_to(self.context):
                raise _Bad(
                    f"{source}: {path} leads outside the build context {self.context} "
                    "(a symbolic link?)"
                )
        return paths

    def _exec_form(self, ins: _Instruction) -> list[str] | None:
        argv = _json_array(ins.args, _COMMAND_JSON)
        if argv is not None and not argv:
            raise _Bad(f"the JSON array is empty; e.g. {_USAGE['CMD']}")
        return argv

    def _refuse_heredoc(self, args: str) -> None:
        for word in _split_words(args, self.escape):
            if _HEREDOC.fullmatch(word):
                raise _Bad(
                    f"heredocs ({word}) are not supported; put the text in a file in the "
                    "build context and COPY it"
                )


def _json_array(args: str, intended: re.Pattern[str]) -> list[str] | None:
    """The exec form's argv, or None for shell text (which may start with "[", like Docker's
    fallback does for `[ -f x ] && ...`); malformed JSON that was meant as one is an error."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[…" nested too deep
        if intended.match(args):
            raise _Bad(
                f'malformed JSON array ({exc}); write it as ["program", "arg"], with double '
                "quotes and commas"
            ) from None
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"{args}: the JSON array may hold only strings")
    return value


def _copy_destination(workdir: str, dest: str) -> str:
    """Where COPY/ADD write: ``dest`` relative to ``workdir``, refused when its ``..`` climbs
    above "/" (Docker stops at "/"): the SDK and the server refuse such paths in every copy
    step, since ``..`` past the root means to leave it; the message should name the line."""
    parts: list[str] = []
    for part in posixpath.join(workdir, dest).split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif parts:
            parts.pop()
        else:
            raise _Bad(
                f"the destination {dest!r} climbs above the image's root '/' with '..' "
                f"(WORKDIR is {workdir}); name a path inside the image"
            )
    return "/" + "/".join(parts)


def _image_path(workdir: str, path: str) -> str:
    """``path`` in the image, relative to ``workdir``, cleaned as Docker cleans it."""
    cleaned = posixpath.normpath(posixpath.join(workdir, path))
    return "/" + cleaned.lstrip("/")  # normpath keeps a leading "//"
