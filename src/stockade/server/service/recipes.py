"""Built-in images that the image builder makes on first use ("recipes").

``code-interpreter``: the ``python`` base image (Debian bookworm's Python 3.11) with
ipykernel, bash_kernel, numpy, pandas and matplotlib, for ``Sandbox.run_code`` (see
docs/code-interpreter.md). Sandboxes never reach the internet for it: the host's pip
downloads the wheels once (wheelhouse.py) and a build step installs them from there,
in a gVisor sandbox, as a cached layer like any other.

The requirements are the whole dependency tree, pinned, so that every server builds the
same image from the same wheels and a change of pins is a new wheelhouse and a new image.
"""

from __future__ import annotations

import functools

from ..images.catalog import ImageCatalog, Recipe
from ..images.wheelhouse import Wheelhouse
from .builder import BuildSpec, ImageBuilder

__all__ = [
    "CODE_INTERPRETER",
    "CODE_INTERPRETER_WHEELS",
    "RECIPE_NAMES",
    "WHEELHOUSES",
    "add_recipes",
    "code_interpreter_spec",
]

CODE_INTERPRETER = "code-interpreter"

# ipykernel, bash_kernel, numpy, pandas and matplotlib, and what they depend on.
CODE_INTERPRETER_WHEELS = Wheelhouse(
    CODE_INTERPRETER,
    (
        "asttokens==3.0.2",
        "bash-kernel==0.10.0",
        "comm==0.2.3",
        "contourpy==1.3.3",
        "cycler==0.12.1",
        "debugpy==1.8.22",
        "executing==2.3.0",
        "filetype==1.2.0",
        "fonttools==4.68.0",
        "ipykernel==7.4.0",
        "ipython-pygments-lexers==1.1.1",
        "ipython==9.18.1",
        "jedi==0.20.1",
        "jupyter-client==8.10.0",
        "jupyter-core==5.9.1",
        "kiwisolver==1.5.1",
        "matplotlib-inline==0.2.2",
        "matplotlib==3.11.2",
        "nest-asyncio2==1.7.4",
        "numpy==2.4.6",
        "packaging==26.4",
        "pandas==3.1.1",
        "parso==0.8.7",
        "pexpect==4.9.0",
        "pillow==13.0.0",
        "platformdirs==4.14.8",
        "prompt-toolkit==3.0.53",
        "psutil==7.2.2",
        "ptyprocess==0.7.0",
        "pure-eval==0.2.4",
        "pygments==2.21.0",
        "pyparsing==3.3.3",
        "python-dateutil==4.0.0",
        "pyzmq==27.3.0",
        "stack-data==0.6.3",
        "tornado==6.6.1",
        "traitlets==5.16.1",
        "typing-extensions==4.16.0",
        "tzdata==2026.6",
        "wcwidth==0.9.4",
    ),
)

RECIPE_NAMES = (CODE_INTERPRETER,)
# The wheels each recipe's build installs.
WHEELHOUSES: dict[str, tuple[Wheelhouse, ...]] = {CODE_INTERPRETER: (CODE_INTERPRETER_WHEELS,)}


def code_interpreter_spec() -> BuildSpec:
    return BuildSpec(
        base="python",
        steps=(
            {
                "op": "pip_install",
                "packages": list(CODE_INTERPRETER_WHEELS.requirements),
                "wheelhouse": CODE_INTERPRETER_WHEELS.dirname,
            },
            # matplotlib builds its font cache on first import, seconds per sandbox
            # otherwise; made once here, it is part of the image.
            {"op": "run", "commands": ["python3 -c 'import matplotlib.pyplot'"]},
        ),
    )


def add_recipes(catalog: ImageCatalog, builder: ImageBuilder) -> None:
    """Make the built-in images resolvable through ``catalog``, built by ``builder``."""
    builder.add_wheelhouse(CODE_INTERPRETER_WHEELS)
    spec = code_interpreter_spec()
    catalog.add_recipe(
        Recipe(
            CODE_INTERPRETER,
            "python with ipykernel, bash_kernel, numpy, pandas and matplotlib",
            functools.partial(builder.build, spec),
            functools.partial(builder.cached, spec),
        )
    )
