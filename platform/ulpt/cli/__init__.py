"""The `ulpt` command line: sub-commands grouped by noun, `--json` for machines, one-line errors."""

from __future__ import annotations

import typer

from ulpt.cli.output import fail
from ulpt.errors import UlptError

app = typer.Typer(
    name="ulpt",
    help="Train, catalog and serve ultra-low-dimensional prompt adapters, by the thousand.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


_registered = False


def _register_commands() -> None:
    """Attach every sub-command, once per process (tests call `main()` many times)."""
    global _registered
    if _registered:
        return
    _registered = True
    from ulpt.cli.adapters import adapters_app
    from ulpt.cli.data import data_app
    from ulpt.cli.db import db_app
    from ulpt.cli.demo import demo
    from ulpt.cli.gc import gc
    from ulpt.cli.jobs import jobs_app
    from ulpt.cli.keys import keys_app
    from ulpt.cli.pools import pools_app
    from ulpt.cli.serve import serve
    from ulpt.cli.train import train

    app.command("demo", help=demo.__doc__)(demo)
    app.command("train", help=train.__doc__)(train)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(pools_app, name="pools")
    app.add_typer(adapters_app, name="adapters")
    app.command("serve", help=serve.__doc__)(serve)
    app.add_typer(keys_app, name="keys")
    app.add_typer(db_app, name="db")
    app.add_typer(data_app, name="data")
    app.command("gc", help=gc.__doc__)(gc)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and a non-zero exit, never a traceback."""
    _register_commands()
    try:
        app(standalone_mode=True)
    except UlptError as exc:
        fail(str(exc))
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        fail("interrupted", code=130)


if __name__ == "__main__":
    main()
