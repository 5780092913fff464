"""Property tests of the Dockerfile translator: any text gives an Image or the SDK's
InvalidArgumentError, and Dockerfiles built from known instructions give the steps that the
fluent API would.

Dockerfiles are copied from anywhere (a project, a blog, a generator), so a translator that
crashes with a ValueError or a RecursionError on some input is a crash of the user's program
instead of an error that names the line.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stockade._dockerfile import image_from_dockerfile
from stockade.errors import InvalidArgumentError
from stockade.image import Image

# Deterministic for CI, no timing checks on a small, busy machine. The fixtures are module
# scoped: a build context that no example changes.
PROPS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Place:
    context: Path
    dockerfile: Path


@pytest.fixture(scope="module")
def place() -> Iterator[Place]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        context = root / "context"
        for name in ("a.txt", "b.txt", "dir/c.txt", "dir/sub/d.txt"):
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            (context / name).write_text(name)
        (root / "secret").write_text("outside the context")
        (context / "out").symlink_to("../secret")  # leads outside the context
        (context / "outdir").symlink_to("..")
        (context / "loop").symlink_to("loop")  # a symlink loop
        yield Place(context, root / "Dockerfile")


def translate(place: Place, text: str | bytes, build_args: dict[str, str]) -> Image:
    if isinstance(text, str):
        place.dockerfile.write_text(text, encoding="utf-8")
    else:
        place.dockerfile.write_bytes(text)
    return image_from_dockerfile(place.dockerfile, context=place.context, build_args=build_args)


def check_image(place: Place, image: Image) -> None:
    """What any translated Image holds: paths inside the image and sources in the context."""
    for step in image.steps:
        for key in ("dest", "path"):
            if key in step:
                path = step[key]
                assert path.startswith("/") and posixpath.normpath(path) in (path, "//"), step
                assert ".." not in path.split("/"), step
    for _, copy in image.copies:
        assert copy.source.resolve().is_relative_to(place.context), copy


# -- any text ---------------------------------------------------------------------------------

KEYWORDS = [
    "FROM",
    "from",
    "ARG",
    "ENV",
    "RUN",
    "WORKDIR",
    "COPY",
    "ADD",
    "USER",
    "CMD",
    "ENTRYPOINT",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "SHELL",
    "Run",
]
FRAGMENTS = [
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\\",
    "\\\n",
    "`",
    "`\n",
    "#",
    "# escape=`\n",
    "# escape=\\\n",
    "# syntax=docker/dockerfile:1\n",
    "# check=skip\n",
    "$",
    "${",
    "}",
    "{",
    ":-",
    ":+",
    ":?",
    "-",
    "+",
    "?",
    ":",
    '"',
    "'",
    "=",
    "[",
    "]",
    '["',
    '"]',
    ",",
    "*",
    "**",
    "/",
    "..",
    ".",
    "../",
    "a.txt",
    "dir",
    "out",
    "outdir",
    "loop",
    "A",
    "B",
    "PATH",
    "TARGETARCH",
    "python",
    "debian",
    "python:3.12",
    "scratch",
    "AS",
    "x",
    "--chown=1",
    "--from=a",
    "<<EOF",
    "http://h/x",
    "1000:1000",
    "\x00",
    "\u00e9",
    "\u2028",
    "\x0b",
    "$1",
    "$$",
    "${A:-x}",
    "${B:?}",
    "[ -f x ]",
    "a**b",
    "d*/**",
    "[[[[",
    "x" * 300,
    "dir/" * 3,
]
words = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=6).map("".join)
instructions = st.tuples(
    st.sampled_from(KEYWORDS), st.lists(words, min_size=1, max_size=4).map(" ".join)
).map(" ".join)
lines = st.one_of(
    instructions,
    words,  # a line that is no instruction: a continuation, a comment, stray text
)
# The first bad line ends the translation, so most weight goes to files whose lines after
# FROM are few: each one then gets to be translated.
dockerfile_ish = st.one_of(
    st.text(max_size=300),
    st.lists(lines, max_size=8).map("\n".join),
    st.lists(lines, max_size=2).map(lambda ls: "FROM python\n" + "\n".join(ls)),
    instructions.map(lambda line: f"FROM python\n{line}\n"),
    # One supported instruction after FROM, its arguments made of the fragments alone: what
    # reaches the deeper code (globs, JSON, paths) most often.
    st.tuples(
        st.sampled_from(["COPY", "ADD", "WORKDIR", "ENV", "ARG", "RUN", "CMD", "USER"]),
        st.lists(
            st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=3).map("".join),
            min_size=1,
            max_size=3,
        ).map(" ".join),
    ).map(lambda t: f"FROM python\n{t[0]} {t[1]}\n"),
    # The line structure alone: continuations, escape-only and blank lines, comments and
    # parser directives, in any order.
    st.lists(
        st.sampled_from(
            [
                "\\",
                "`",
                "\\ ",
                " \\",
                "\t",
                "",
                "#",
                "# c",
                "# escape=`",
                "# escape=\\",
                "FROM python",
                "RUN x",
                "RUN",
                "ENV A=1 \\",
            ]
        ),
        max_size=8,
    ).map("\n".join),
)
build_args = st.dictionaries(
    st.sampled_from(["A", "B", "PATH", "TARGETARCH", "V"]), st.text(max_size=6), max_size=3
)


@PROPS
@given(st.one_of(dockerfile_ish, st.binary(max_size=200)), build_args)
def test_any_text_gives_an_image_or_invalid_argument(
    place: Place, text: str | bytes, args: dict[str, str]
) -> None:
    try:
        image = translate(place, text, args)
    except InvalidArgumentError as exc:
        assert exc.message.startswith(str(place.dockerfile)), exc.message
        return
    check_image(place, image)


PATH_FRAGMENTS = [
    "a",
    "a.txt",
    "dir",
    "sub",
    "out",
    "outdir",
    "loop",
    "secret",
    "/",
    "//",
    "..",
    ".",
    "*",
    "**",
    "?",
    "[",
    "]",
    "[a-c]",
    "x" * 256,
    "\x00",
    "$A",
    "\u00e9",
    "d/" * 2100,
    "*/" * 300,
    "[" * 3000,
]
path_words = st.lists(st.sampled_from(PATH_FRAGMENTS), min_size=1, max_size=6).map("".join)


@PROPS
@given(
    st.sampled_from(["COPY", "ADD"]),
    st.lists(path_words, min_size=1, max_size=3),
    path_words,
)
def test_any_copy_source_is_copied_or_refused(
    place: Place, keyword: str, sources: list[str], dest: str
) -> None:
    """Globs, ``..``, symlinks out of the context and names the kernel refuses: each COPY
    either copies files of the context or names its line; never another exception."""
    text = f"FROM python\nARG A=dir\n{keyword} {' '.join(sources)} {dest}\n"
    try:
        image = translate(place, text, {})
    except InvalidArgumentError as exc:
        assert exc.message.startswith(f"{place.dockerfile}:3: {keyword}: "), exc.message
        return
    check_image(place, image)
    assert image.copies


@PROPS
@given(
    st.integers(1, 3000),
    st.sampled_from(["${B:-", "${A:+", '"${B-', "${B:-'", "${A:-$", "${B:-${A:+"]),
    st.sampled_from(["WORKDIR", "ENV X=", "COPY a.txt", "USER", "FROM"]),
)
def test_nested_substitutions_expand_or_are_refused(
    place: Place, depth: int, opening: str, keyword: str
) -> None:
    """Docker's ${VAR:-${VAR:-...}} nests; however deep, the answer is an Image or an error."""
    word = opening * depth + "x" + "}" * depth * opening.count("{")
    text = f"ARG A=1\nFROM python\nARG A\n{keyword} {word}\n"
    if keyword == "FROM":
        text = f"ARG A=1\nFROM {word}\n"
    try:
        image = translate(place, text, {})
    except InvalidArgumentError as exc:
        assert exc.message.startswith(str(place.dockerfile)), exc.message
        return
    check_image(place, image)


@PROPS
@given(
    st.integers(1, 100_000),
    st.sampled_from(["CMD", "ENTRYPOINT", "RUN", "COPY", "ADD"]),
    st.booleans(),
)
# The one depth that is an exec form, for each keyword: always tried, not left to chance.
@example(1, "CMD", True)
@example(1, "RUN", True)
@example(1, "COPY", True)
def test_deeply_nested_json_arrays_are_never_an_argv(
    place: Place, depth: int, keyword: str, closed: bool
) -> None:
    """The exec form is JSON; an array in an array is never an argv, however deep: it is an
    error, or shell text (Docker's fallback for what does not parse as JSON)."""
    array = "[" * depth + '"a.txt", "/x"' + ("]" * depth if closed else "")
    try:
        image = translate(place, f"FROM python\n{keyword} {array}\n", {})
    except InvalidArgumentError as exc:
        assert exc.message.startswith(f"{place.dockerfile}:2: {keyword}: ")
        assert not (depth == 1 and closed), exc.message
        return
    check_image(place, image)
    step = image.steps[-1]
    if depth == 1 and closed:
        expected = {
            "CMD": {"op": "cmd", "argv": ["a.txt", "/x"]},
            "ENTRYPOINT": {"op": "entrypoint", "argv": ["a.txt", "/x"]},
            "RUN": {"op": "run", "commands": ["a.txt /x"]},
        }
        assert step == expected.get(keyword, {"op": "copy", "dest": "/x"})
    elif keyword in ("CMD", "ENTRYPOINT"):
        assert step["argv"] == ["/bin/sh", "-c", array]
    else:
        assert step["commands"] == [array]


# -- known instructions give known steps ------------------------------------------------------

SHELL_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
# ENV values: anything on one line; double quotes, "$" and "\" get escaped below.
VALUES = st.text(
    st.characters(exclude_categories=["Cs", "Cc"]) | st.sampled_from('"$\\\t'), max_size=12
)
COMMAND_CHARS = "abcxyz019 ._-/=|&;:'\"$()"
COMPONENTS = ["app", "src", "lib", "my dir", "..", "."]
SOURCES = ["a.txt", "b.txt", "dir", "dir/c.txt", "*.txt", "/a.txt", "./dir/../a.txt", "dir/*"]


def image_path(start: list[str], path: str) -> list[str] | None:
    """Docker's join of ``path`` to the directory ``start`` (as components); None where its
    ``..`` climbs above "/"."""
    parts = [] if path.startswith("/") else list(start)
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return parts


def clamped(start: list[str], path: str) -> list[str]:
    """WORKDIR as Docker cleans it: ``..`` above "/" stays at "/"."""
    parts = [] if path.startswith("/") else list(start)
    for part in path.split("/"):
        if part == "..":
            parts = parts[:-1]
        elif part not in ("", "."):
            parts.append(part)
    return parts


def absolute(parts: list[str]) -> str:
    return "/" + "/".join(parts)


@dataclass
class Model:
    """What the translator should have made so far, built with the fluent API."""

    context: Path
    image: Image
    workdir: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    args: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    error: tuple[int, str, str] | None = None  # (line, keyword, part of the message)

    def add(self, text: str) -> int:
        self.lines.append(text)
        return sum(t.count("\n") + 1 for t in self.lines[:-1]) + 1

    def sources(self, source: str) -> list[Path]:
        relative = posixpath.normpath(source.lstrip("/"))
        if "*" in relative:
            return sorted(self.context.glob(relative))
        return [self.context / relative]


def quoted(value: str) -> str:
    return '"' + "".join("\\" + c if c in '"$\\' else c for c in value) + '"'


@st.composite
def dockerfiles(draw: st.DrawFn, context: Path) -> Model:
    base = draw(st.sampled_from(["python", "debian", "python:3.12-slim", "ghcr.io/o/app:v1"]))
    image = Image.from_registry(base) if ":" in base else Image.from_name(base)
    model = Model(context, image)
    model.add(f"FROM {base}")
    for _ in range(draw(st.integers(0, 10))):
        if model.error is not None:
            break
        kind = draw(st.sampled_from(["ARG", "ENV", "RUN", "WORKDIR", "USER", "CMD", "COPY"]))
        if kind == "ARG":
            name, value = draw(SHELL_NAMES), draw(st.text("abc123", max_size=5))
            model.add(f"ARG {name}={value}")
            model.args[name] = value
        elif kind == "ENV":
            name, value = draw(SHELL_NAMES), draw(VALUES)
            model.add(f"ENV {name}={quoted(value)}")
            model.env[name] = value
            model.image = model.image.env({name: value})
        elif kind == "RUN":
            # Not blank: a blank continuation line is dropped, and the next line would join.
            piece = st.text(COMMAND_CHARS, min_size=1, max_size=10).filter(str.strip)
            pieces = draw(st.lists(piece, min_size=1, max_size=3))
            command = " ".join(pieces).strip()
            if not command or command.startswith(("[", "--")):
                continue
            # Continuation lines, with a comment between them that Docker drops.
            model.add("RUN " + " \\\n# a comment\n".join(pieces))
            exported = {k: v for k, v in model.args.items() if k not in model.env}
            if exported:
                prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in exported.items())
                command = f"export {prefix}; {command}"
            model.image = model.image.run_commands(command)
        elif kind == "WORKDIR":
            path = "/".join(draw(st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4)))
            path = draw(st.sampled_from(["", "/"])) + path + draw(st.sampled_from(["", "/"]))
            if path.strip("/ ") == "":
                continue
            model.add(f"WORKDIR {path}")
            model.workdir = clamped(model.workdir, path)
            model.image = model.image.workdir(absolute(model.workdir))
        elif kind == "USER":
            user = draw(st.from_regex(r"[a-z0-9_]{1,8}(:[a-z0-9_]{1,8})?", fullmatch=True))
            model.add(f"USER {user}")
            model.image = model.image.user(user)
        elif kind == "CMD":
            keyword = draw(st.sampled_from(["CMD", "ENTRYPOINT"]))
            argv = draw(st.lists(st.text(max_size=8), min_size=1, max_size=3))
            model.add(f"{keyword} {json.dumps(argv)}")
            model.image = (
                model.image.cmd(argv) if keyword == "CMD" else model.image.entrypoint(argv)
            )
        else:
            keyword = draw(st.sampled_from(["COPY", "ADD"]))
            sources = draw(st.lists(st.sampled_from(SOURCES), min_size=1, max_size=2))
            dest = "/".join(draw(st.lists(st.sampled_from(["x", "y", "..", "."]), max_size=5)))
            dest = draw(st.sampled_from(["", "/"])) + dest + draw(st.sampled_from(["", "/"]))
            if not dest:
                continue
            line = model.add(f"{keyword} {' '.join(sources)} {dest}")
            target = image_path(model.workdir, dest)
            if target is None:
                model.error = (line, keyword, "climbs above")
                break
            paths = [p for s in sources for p in model.sources(s)]
            into = dest.endswith("/") or dest.split("/")[-1] in (".", "..") or len(paths) > 1
            for p in paths:
                if p.is_dir():
                    model.image = model.image.add_local_dir(p, absolute(target))
                elif into:
                    model.image = model.image.add_local_file(p, absolute([*target, p.name]))
                else:
                    model.image = model.image.add_local_file(p, absolute(target))
    return model


@PROPS
@given(st.data())
def test_known_instructions_give_the_fluent_api_steps(place: Place, data: st.DataObject) -> None:
    model = data.draw(dockerfiles(place.context))
    text = "\n".join(model.lines) + "\n"
    if model.error is None:
        image = translate(place, text, {})
        assert image == model.image
        check_image(place, image)
        return
    line, keyword, what = model.error
    with pytest.raises(InvalidArgumentError) as info:
        translate(place, text, {})
    assert info.value.message.startswith(f"{place.dockerfile}:{line}: {keyword}: ")
    assert what in info.value.message
