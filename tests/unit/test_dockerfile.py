"""The Dockerfile translator: each instruction gives the Image the fluent API would build,
and each thing it refuses names the file and the (first) line."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest

from stockade._dockerfile import image_from_dockerfile
from stockade.errors import InvalidArgumentError
from stockade.image import Image


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    """The build context; resolved, as the translator resolves it."""
    return tmp_path.resolve()


def build(ctx: Path, text: str, build_args: dict[str, str] | None = None) -> Image:
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_text(textwrap.dedent(text))
    return image_from_dockerfile(dockerfile, context=ctx, build_args=build_args or {})


def error(ctx: Path, text: str, line: int, keyword: str, **build_args: str) -> str:
    """The message of the error ``text`` raises, checked to start with its file and line."""
    with pytest.raises(InvalidArgumentError) as info:
        build(ctx, text, build_args)
    message = info.value.message
    assert message.startswith(f"{ctx / 'Dockerfile'}:{line}: {keyword}: "), message
    return message


def files(ctx: Path, *names: str) -> None:
    for name in names:
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


# -- FROM and ARG ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("FROM python", Image.from_name("python")),
        ("from debian AS base", Image.from_name("debian")),
        ("FROM python:3.12-slim", Image.from_registry("python:3.12-slim")),
        # A Stockade image name or a Docker Hub tag: passed on as is, no ":latest" added.
        ("FROM agent:v1", Image.from_registry("agent:v1")),
        ("FROM ghcr.io/org/app", Image.from_registry("ghcr.io/org/app")),
        ("FROM alpine@sha256:abc", Image.from_registry("alpine@sha256:abc")),
    ],
)
def test_from(ctx: Path, line: str, expected: Image) -> None:
    image = build(ctx, line + "\n")
    assert image == expected
    assert image.name == expected.name and image.steps == ()


@pytest.mark.parametrize(
    ("build_args", "name"),
    [
        ({}, "python:3.12-slim"),
        ({"TAG": "3.11"}, "python:3.11-slim"),
        ({"TAG": ""}, "python:-slim"),
    ],
)
def test_arg_before_from_is_used_in_from(ctx: Path, build_args: dict[str, str], name: str) -> None:
    text = """\
        # a comment before ARG
        ARG TAG=3.12
        FROM python:${TAG}-slim
    """
    assert build(ctx, text, build_args) == Image.from_registry(name)


def test_arg_without_default_or_build_arg_is_empty(ctx: Path) -> None:
    text = """\
        ARG SUFFIX
        FROM python:3.12${SUFFIX}
        ARG LATER
        ENV A=[$LATER]
    """
    assert build(ctx, text) == Image.from_registry("python:3.12").env({"A": "[]"})


def test_undeclared_build_arg_is_ignored(ctx: Path) -> None:
    text = """\
        FROM python
        RUN true
    """
    assert build(ctx, text, {"NOPE": "1"}) == Image("python").run_commands("true")


@pytest.mark.parametrize(("build_args", "value"), [({}, "global"), ({"V": "given"}, "given")])
def test_global_arg_is_seen_after_from_once_redeclared(
    ctx: Path, build_args: dict[str, str], value: str
) -> None:
    text = """\
        ARG V=global
        FROM python
        ARG V
        ENV A=$V
    """
    assert build(ctx, text, build_args) == Image("python").env({"A": value})


@pytest.mark.parametrize(
    ("build_args", "a", "b"), [({}, "1", "10"), ({"V": "5"}, "5", "50"), ({"W": "w"}, "1", "w")]
)
def test_stage_args_default_in_order_and_build_args_win(
    ctx: Path, build_args: dict[str, str], a: str, b: str
) -> None:
    text = """\
        FROM python
        ARG V=1 W=${V}0
        ENV A=$V B=$W
    """
    assert build(ctx, text, build_args) == Image("python").env({"A": a, "B": b})


def test_platform_arg_comes_from_build_args(ctx: Path) -> None:
    text = """\
        FROM python
        ARG TARGETARCH
        WORKDIR /opt/$TARGETARCH
    """
    assert build(ctx, text, {"TARGETARCH": "arm64"}) == Image("python").workdir("/opt/arm64")


# -- variable substitution -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("$X", "x"),
        ("${X}", "x"),
        ("${X}y", "xy"),
        ("a$X/b", "ax/b"),
        ("${U:-d}", "d"),
        ("${E:-d}", "d"),
        ("${E-d}", ""),
        ("${U-d}", "d"),
        ("${X:-d}", "x"),
        ("${X:+alt}", "alt"),
        ("${E:+alt}", ""),
        ("${E+alt}", "alt"),
        ("${U+alt}", ""),
        ("${U:-$X}", "x"),
        ('${U:-"a b"}', "a b"),
        ("${X:?unset}", "x"),
        ('"${X:?must be set}"', "x"),
        (r"\$X", "$X"),
        ("'$X'", "$X"),
        ('"$X y"', "x y"),
        (r'"\$X \"q\" \n"', r'$X "q" \n'),
        (r"a\ b", "a b"),
        (r"a\\b", "a\\b"),
        ("cost$", "cost$"),
        ("$1", ""),
    ],
)
def test_substitution(ctx: Path, expression: str, value: str) -> None:
    text = f"""\
        FROM python
        ARG U
        ENV X=x E=
        ENV R={expression}
    """
    assert build(ctx, text) == Image("python").env({"X": "x", "E": ""}).env({"R": value})


def test_env_wins_over_arg_and_run_is_left_to_the_shell(ctx: Path) -> None:
    text = """\
        FROM python
        ARG V=arg
        ENV V=env
        ENV W=$V
        RUN echo $V ${HOME}
    """
    expected = Image("python").env({"V": "env"}).env({"W": "env"}).run_commands("echo $V ${HOME}")
    assert build(ctx, text) == expected


def test_env_values_are_expanded_before_any_is_set(ctx: Path) -> None:
    text = """\
        FROM python
        ENV abc=hello
        ENV abc=bye def=$abc
    """
    expected = Image("python").env({"abc": "hello"}).env({"abc": "bye", "def": "hello"})
    assert build(ctx, text) == expected


def test_escape_directive_changes_the_escape_character(ctx: Path) -> None:
    text = """\
        # escape=`
        # syntax=docker/dockerfile:1
        FROM python
        ENV P=C:\\app Q=a` b
        RUN echo one `
            two
    """
    expected = Image("python").env({"P": "C:\\app", "Q": "a b"}).run_commands("echo one     two")
    assert build(ctx, text) == expected
    # With the default escape, the same backslash is an escape.
    assert build(ctx, "FROM python\nENV P=C:\\app\n") == Image("python").env({"P": "C:app"})


# -- ENV, RUN, WORKDIR, USER, ENTRYPOINT, CMD ------------------------------------------------


def test_env_forms(ctx: Path) -> None:
    text = """\
        FROM python
        ENV A=1 B="two words" C=a\\ b D='$x' E=
        ENV LEGACY /a b  c
        env QUOTED "x y"
    """
    expected = (
        Image("python")
        .env({"A": "1", "B": "two words", "C": "a b", "D": "$x", "E": ""})
        .env({"LEGACY": "/a b  c"})
        .env({"QUOTED": "x y"})
    )
    assert build(ctx, text) == expected


def test_run_forms_are_one_step_each(ctx: Path) -> None:
    text = """\
        FROM python
        RUN apt-get update
        RUN ["python3", "-c", "print('hi there')"]
        RUN [ -f /etc/os-release ] && echo yes
        RUN [ "a", "b" ]
    """
    expected = (
        Image("python")
        .run_commands("apt-get update")
        .run_commands("python3 -c 'print('\"'\"'hi there'\"'\"')'")
        .run_commands("[ -f /etc/os-release ] && echo yes")
        .run_commands("a b")
    )
    assert build(ctx, text) == expected
    assert shlex.split(expected.steps[1]["commands"][0]) == ["python3", "-c", "print('hi there')"]


def test_run_exports_the_args_in_scope(ctx: Path) -> None:
    text = """\
        ARG GLOBAL=1
        FROM python
        ARG DEBIAN_FRONTEND=noninteractive
        ARG UNSET
        ARG QUOTED
        ARG SHADOWED=arg
        ENV SHADOWED=env
        RUN apt-get update
        RUN ["echo", "$QUOTED"]
    """
    exports = "export DEBIAN_FRONTEND=noninteractive QUOTED='it'\"'\"'s'; "
    expected = (
        Image("python")
        .env({"SHADOWED": "env"})
        .run_commands(exports + "apt-get update")
        .run_commands(exports + "echo '$QUOTED'")
    )
    assert build(ctx, text, {"QUOTED": "it's"}) == expected


def test_line_continuations_skip_comments_and_blank_lines(ctx: Path) -> None:
    text = """\
        FROM python
        RUN apt-get update \\
            # a comment inside the command

            && apt-get install -y git
        RUN echo hel\\
        lo
        ENV A=1 \\
            B=2
    """
    expected = (
        Image("python")
        .run_commands("apt-get update     && apt-get install -y git")
        .run_commands("echo hello")
        .env({"A": "1", "B": "2"})
    )
    assert build(ctx, text) == expected


def test_crlf_line_endings_and_byte_order_mark(ctx: Path) -> None:
    dockerfile = ctx / "Dockerfile"
    dockerfile.write_bytes(b"\xef\xbb\xbfFROM python\r\nRUN a \\\r\n  b\r\n")
    image = image_from_dockerfile(dockerfile, context=ctx, build_args={})
    assert image == Image("python").run_commands("a   b")


def test_workdir_is_joined_and_cleaned(ctx: Path) -> None:
    text = """\
        FROM python
        WORKDIR src
        WORKDIR /app
        WORKDIR src
        WORKDIR ../lib
        WORKDIR /x/./y/
        WORKDIR //double
        ENV BASE=/srv
        WORKDIR $BASE/my app
    """
    expected = (
        Image("python")
        .workdir("/src")
        .workdir("/app")
        .workdir("/app/src")
        .workdir("/app/lib")
        .workdir("/x/y")
        .workdir("/double")
        .env({"BASE": "/srv"})
        .workdir("/srv/my app")
    )
    assert build(ctx, text) == expected


def test_user_entrypoint_and_cmd(ctx: Path) -> None:
    text = """\
        FROM python
        ARG UID=1000
        USER ${UID}:${UID}
        ENTRYPOINT ["python3", "-u"]
        CMD ["app.py", "--port", "80"]
        ENTRYPOINT exec python3 "$APP"
        CMD echo $HOME
    """
    expected = (
        Image("python")
        .user("1000:1000")
        .entrypoint(["python3", "-u"])
        .cmd(["app.py", "--port", "80"])
        .entrypoint(["/bin/sh", "-c", 'exec python3 "$APP"'])
        .cmd(["/bin/sh", "-c", "echo $HOME"])
    )
    assert build(ctx, text) == expected


# -- COPY and ADD ----------------------------------------------------------------------------


def test_copy_file_destinations(ctx: Path) -> None:
    files(ctx, "app.py", "conf/a.toml")
    text = """\
        FROM python
        COPY app.py /srv/main.py
        COPY app.py /srv/
        WORKDIR /app
        COPY app.py .
        COPY app.py rel/x.py
        COPY /conf/a.toml ./
    """
    expected = (
        Image("python")
        .add_local_file(ctx / "app.py", "/srv/main.py")
        .add_local_file(ctx / "app.py", "/srv/app.py")
        .workdir("/app")
        .add_local_file(ctx / "app.py", "/app/app.py")
        .add_local_file(ctx / "app.py", "/app/rel/x.py")
        .add_local_file(ctx / "conf" / "a.toml", "/app/a.toml")
    )
    image = build(ctx, text)
    assert image == expected
    assert [c.source for _, c in image.copies][-1] == ctx / "conf" / "a.toml"


def test_copy_directories_copy_their_contents(ctx: Path) -> None:
    files(ctx, "src/pkg/a.py", "src/b.py")
    text = """\
        FROM python
        COPY . /app
        COPY src/ /opt/src
        COPY ./src/pkg /opt/pkg/
    """
    expected = (
        Image("python")
        .add_local_dir(ctx, "/app")
        .add_local_dir(ctx / "src", "/opt/src")
        .add_local_dir(ctx / "src" / "pkg", "/opt/pkg")
    )
    assert build(ctx, text) == expected


def test_copy_several_sources_and_globs(ctx: Path) -> None:
    files(ctx, "b.py", "a.py", "c.txt", "d.py", "lib/x.py")
    text = """\
        FROM python
        COPY c.txt b.py /dest
        COPY [a-b].py ?.txt /globbed/
        COPY *.py /py
        COPY d.py l*/ /mixed
    """
    expected = (
        Image("python")
        .add_local_file(ctx / "c.txt", "/dest/c.txt")
        .add_local_file(ctx / "b.py", "/dest/b.py")
        .add_local_file(ctx / "a.py", "/globbed/a.py")
        .add_local_file(ctx / "b.py", "/globbed/b.py")
        .add_local_file(ctx / "c.txt", "/globbed/c.txt")
        .add_local_file(ctx / "a.py", "/py/a.py")
        .add_local_file(ctx / "b.py", "/py/b.py")
        .add_local_file(ctx / "d.py", "/py/d.py")
        .add_local_file(ctx / "d.py", "/mixed/d.py")
        .add_local_dir(ctx / "lib", "/mixed")
    )
    assert build(ctx, text) == expected


def test_copy_json_form_variables_and_add(ctx: Path) -> None:
    files(ctx, "my file.txt", "app.py", "bundle.tar.gz")
    text = """\
        FROM python
        ARG SRC=app.py
        ENV DEST=/opt
        COPY ["my file.txt", "/data/"]
        COPY $SRC ${DEST}/
        add bundle.tar.gz /tmp/
    """
    expected = (
        Image("python")
        .env({"DEST": "/opt"})
        .add_local_file(ctx / "my file.txt", "/data/my file.txt")
        .add_local_file(ctx / "app.py", "/opt/app.py")
        # ADD copies a local archive as it is: no extraction.
        .add_local_file(ctx / "bundle.tar.gz", "/tmp/bundle.tar.gz")
    )
    assert build(ctx, text) == expected


def test_context_may_differ_from_the_dockerfile_directory(ctx: Path) -> None:
    files(ctx, "ctx/app.py")
    dockerfile = ctx / "docker" / "Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text("FROM python\nCOPY app.py /app/\n")
    image = Image.from_dockerfile(dockerfile, context=ctx / "ctx", build_args={"X": "1"})
    assert image == Image("python").add_local_file(ctx / "ctx" / "app.py", "/app/app.py")


def test_context_defaults_to_the_dockerfile_directory(ctx: Path) -> None:
    files(ctx, "app.py")
    (ctx / "Dockerfile").write_text("FROM python\nCOPY app.py /app/\n")
    image = Image.from_dockerfile(ctx / "Dockerfile")
    assert image == Image("python").add_local_file(ctx / "app.py", "/app/app.py")


# -- errors ----------------------------------------------------------------------------------


def test_second_from_is_refused(ctx: Path) -> None:
    text = """\
        FROM python AS build
        RUN make
        FROM debian
    """
    assert "multi-stage builds are not supported" in error(ctx, text, 3, "FROM")


@pytest.mark.parametrize(
    ("text", "line", "keyword", "fragment"),
    [
        ("FROM --platform=linux/amd64 python\n", 1, "FROM", "--platform flag"),
        ("FROM scratch\n", 1, "FROM", "FROM scratch is not supported"),
        ("FROM python base\n", 1, "FROM", "FROM <image> [AS <name>]"),
        ("ARG B\nFROM $B\n", 2, "FROM", "'$B' is empty"),
        ("FROM\n", 1, "FROM", "needs an argument, e.g. FROM python:3.12-slim"),
        ("# hi\nRUN true\nFROM python\n", 2, "RUN", "comes before FROM"),
        ("ARG TARGETARCH\nFROM python\n", 1, "ARG", "build_args={'TARGETARCH': ...}"),
        ("FROM python:$BUILDOS\n", 1, "FROM", "build_args={'BUILDOS': ...}"),
    ],
)
def test_from_errors(ctx: Path, text: str, line: int, keyword: str, fragment: str) -> None:
    assert fragment in error(ctx, text, line, keyword)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "ARG A=1\n"])
def test_no_from_is_an_error(ctx: Path, text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="there is no FROM"):
        build(ctx, text)


@pytest.mark.parametrize(
    "keyword",
    ["EXPOSE", "LABEL", "VOLUME", "HEALTHCHECK", "SHELL", "ONBUILD", "STOPSIGNAL", "MAINTAINER",
     "FOO"],
)  # fmt: skip
def test_unsupported_instructions(ctx: Path, keyword: str) -> None:
    text = f"""\
        FROM python
        # a comment
        {keyword.lower()} something
    """
    message = error(ctx, text, 3, keyword)
    assert "not supported" in message
    assert "Stockade translates FROM, ARG, ENV, RUN, WORKDIR, COPY, ADD, USER" in message


def test_error_names_the_first_line_of_a_continued_instruction(ctx: Path) -> None:
    text = """\
        FROM python
        RUN true
        EXPOSE 80 \\
            443
    """
    error(ctx, text, 3, "EXPOSE")
    text = """\
        FROM python
        RUN cat \\
            # comment
            <<EOF > /x
        hi
        EOF
    """
    assert "heredocs (<<EOF) are not supported" in error(ctx, text, 2, "RUN")


@pytest.mark.parametrize(
    ("instruction", "flag"),
    [
        ("RUN --mount=type=cache,target=/root/.cache pip install x", "--mount"),
        ("RUN --network=none true", "--network"),
        ("COPY --chown=app:app a /b", "--chown"),
        ("COPY --chmod=755 a /b", "--chmod"),
        ("COPY --from=build /out /out", "--from"),
        ("ADD --checksum=sha256:abc a /b", "--checksum"),
    ],
)
def test_flags_are_refused(ctx: Path, instruction: str, flag: str) -> None:
    message = error(ctx, f"FROM python\n{instruction}\n", 2, instruction.split()[0])
    assert f"the {flag} flag is not supported" in message


@pytest.mark.parametrize(
    "instruction",
    ["RUN <<EOF", "RUN cat <<-'EOF' > /f", "COPY <<EOF /x", "ADD 2<<END /x"],
)
def test_heredocs_are_refused(ctx: Path, instruction: str) -> None:
    message = error(ctx, f"FROM python\n{instruction}\nx\nEOF\n", 2, instruction.split()[0])
    assert "heredocs" in message


def test_heredoc_like_text_in_quotes_or_arithmetic_is_not_one(ctx: Path) -> None:
    text = """\
        FROM python
        RUN echo "<<EOF" $((1<<3)) cat <<<here
    """
    expected = Image("python").run_commands('echo "<<EOF" $((1<<3)) cat <<<here')
    assert build(ctx, text) == expected


@pytest.mark.parametrize(
    ("instruction", "fragment"),
    [
        ("RUN [\"a\", 'b']", "malformed JSON array"),
        ('CMD ["a" "b"]', "malformed JSON array"),
        ("ENTRYPOINT [python]", "malformed JSON array"),
        ('COPY ["a", /x]', "malformed JSON array"),
        ('CMD ["a", 1]', "may hold only strings"),
        ("RUN []", "the JSON array is empty"),
    ],
)
def test_malformed_exec_forms(ctx: Path, instruction: str, fragment: str) -> None:
    assert fragment in error(ctx, f"FROM python\n{instruction}\n", 2, instruction.split()[0])


@pytest.mark.parametrize(
    "keyword", ["RUN", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "ENV", "ARG", "COPY", "ADD"]
)
def test_missing_arguments(ctx: Path, keyword: str) -> None:
    assert "needs an argument, e.g." in error(ctx, f"FROM python\n{keyword}   \n", 2, keyword)


@pytest.mark.parametrize(
    ("instruction", "fragment"),
    [
        ("ENV K", "K has no value; write ENV K=value"),
        ("ENV A=1 B", "'B' is not NAME=value"),
        ("ENV =x", "a variable name is empty"),
        ('ENV A="x', "unterminated double quote"),
        ("ENV A='x", "unterminated single quote"),
        ("ENV A=${X:-y", "missing '}'"),
        ("ENV A=${X#pre}", "bad substitution"),
        ("ENV A=${}", "bad substitution"),
        ("ARG U\nENV A=${U:?required}", "${U}: required"),
        ("ARG U\nENV A=${U?}", "${U}: is not set"),
        ("ARG =1", "has no name"),
        ("COPY onlyone", "needs sources and a destination"),
        ("USER a b", "takes one user"),
        ("ARG E=\nUSER ${E}", "user must be a name, uid or uid:gid"),
    ],
)
def test_malformed_arguments(ctx: Path, instruction: str, fragment: str) -> None:
    line = 2 + instruction.count("\n")
    keyword = instruction.splitlines()[-1].split()[0]
    assert fragment in error(ctx, f"FROM python\n{instruction}\n", line, keyword)


def test_variables_from_the_base_image_are_refused(ctx: Path) -> None:
    message = error(ctx, "FROM python\nENV PATH=/opt/bin:$PATH\n", 2, "ENV")
    assert "$PATH is not declared by an ARG or ENV above" in message
    assert "ENV PATH=/opt/tool/bin:/usr/local/sbin:" in message
    message = error(ctx, "ARG G=1\nFROM python\nWORKDIR /$G\n", 3, "WORKDIR")
    assert "redeclared: ARG G" in message


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("../secret", "../secret is outside the build context"),
        ("/../secret", "/../secret is outside the build context"),
        ("a/../../x", "a/../../x is outside the build context"),
        ("../*", "../* is outside the build context"),
        ("missing.py", "missing.py: no such file or directory in"),
        ("/etc/hostname", "/etc/hostname: no such file or directory in"),
        ("*.nothing", "*.nothing: no file in the build context"),
        ("link", "leads outside the build context"),
        ("http://example.com/x.tgz", "URL sources are not supported"),
        ("https://example.com/x.tgz", "URL sources are not supported"),
        ("git@github.com:org/repo.git", "URL sources are not supported"),
        ("${EMPTY}", "a source is empty"),
    ],
)
@pytest.mark.parametrize("keyword", ["COPY", "ADD"])
def test_bad_sources(ctx: Path, keyword: str, source: str, fragment: str) -> None:
    inside = ctx / "inside"
    inside.mkdir()
    (ctx / "secret").write_text("outside")
    (inside / "link").symlink_to(ctx / "secret")
    (inside / "Dockerfile").write_text(f"FROM python\nARG EMPTY\n{keyword} {source} /x\n")
    with pytest.raises(InvalidArgumentError) as info:
        image_from_dockerfile(inside / "Dockerfile", context=inside, build_args={})
    assert info.value.message.startswith(f"{inside / 'Dockerfile'}:3: {keyword}: ")
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("# escape=`\n# escape=\\\nFROM python\n", 2, "only one `# escape=` parser directive"),
        ("# escape=x\nFROM python\n", 1, "the escape character must be \\ or `"),
    ],
)
def test_bad_parser_directives(ctx: Path, text: str, line: int, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        build(ctx, text)
    assert info.value.message.startswith(f"{ctx / 'Dockerfile'}:{line}: ")
    assert fragment in info.value.message


def test_directives_after_the_top_are_comments(ctx: Path) -> None:
    text = """\
        # a comment ends the directives
        # escape=`
        FROM python
        ENV P=a\\b
    """
    assert build(ctx, text) == Image("python").env({"P": "ab"})


def test_missing_dockerfile_and_context(ctx: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot read the Dockerfile"):
        image_from_dockerfile(ctx / "nope", context=ctx, build_args={})
    (ctx / "Dockerfile").write_text("FROM python\n")
    with pytest.raises(InvalidArgumentError, match="the build context is not a directory"):
        image_from_dockerfile(ctx / "Dockerfile", context=ctx / "nope", build_args={})
