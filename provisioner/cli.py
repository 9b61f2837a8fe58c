"""The command line: ``provisioner validate|plan|apply|drift|render|facts|schema|lab``.

Exit codes everywhere: 0 success and nothing to change, 1 error, 2 success with changes or drift.
A :class:`~provisioner.errors.ProvisionerError` prints as one line and exits 1; so does a usage
error (click's own code for those is 2, which here means "changes").
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

from provisioner import __version__
from provisioner.errors import ProvisionerError

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

paths_argument = click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provisioner")
def app() -> None:
    """Declarative provisioning of NFON Multiline TAPI estates on Windows."""


@app.command()
@paths_argument
def validate(paths: tuple[Path, ...]) -> None:
    """Check manifests offline: schema, references, policies. Reports every problem."""
    from provisioner.manifest import load_estate

    estate, errors = load_estate(paths)
    for error in errors:
        click.echo(str(error))
    if errors:
        files = {e.location.file for e in errors if e.location}
        where = f" in {_count(len(files), 'file')}" if files else ""
        click.echo(f"{_count(len(errors), 'problem')}{where}", err=True)
        sys.exit(EXIT_ERROR)
    kinds = Counter(kind for kind, _ in estate.origin)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    assignments = sum(len(t.assignments) for t in estate.tenants.values())
    click.echo(
        f"valid: {_count(len(estate.files), 'file')}, {_count(len(estate.origin), 'document')} "
        f"({summary}), {_count(assignments, 'line assignment')}"
    )


@app.command()
def schema() -> None:
    """Print the JSON Schema of a manifest document (for editors' YAML plugins)."""
    from provisioner.manifest.schema import manifest_schema

    click.echo(json.dumps(manifest_schema(), indent=2))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and turn every user error into one line and exit code 1."""
    try:
        code = app.main(args=argv, prog_name="provisioner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = EXIT_ERROR
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        code = EXIT_ERROR
    except ProvisionerError as exc:
        click.echo(f"error: {exc}", err=True)
        code = EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = EXIT_ERROR
    sys.exit(code if isinstance(code, int) else EXIT_OK)
