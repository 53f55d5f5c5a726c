"""The ``visattn`` command line: ``visattn SUB-COMMAND [options]``.

Sub-commands are modules listed in :data:`COMMANDS`. Each module provides either

- ``add_parser(subparsers) -> argparse.ArgumentParser`` (add its parser with
  :func:`add_command`) and
  ``run(args) -> int``; or
- ``main(argv: list[str] | None) -> int`` (the remaining arguments are passed through).

A listed module that is not installed is skipped, so a sub-command appears as soon as its module
exists. Errors the user can fix (``ValueError``, ``TypeError``, ``OSError``, checkpoint and data
errors) become ONE line on stderr and exit status 1 (2 for a command-line syntax error); nothing
prints a traceback unless ``VISATTN_DEBUG=1``.

Shared helpers for sub-commands: :func:`add_command` (a sub-command's parser, with
:class:`HelpFormatter`, which shows defaults), :func:`load_config`
(TOML / YAML option files) and :func:`add_dataclass_options` / :func:`resolve_options`
(options from a dataclass, merged as defaults < ``--config`` file < command line).

Tests: ``tests/cli/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

__all__ = [
    "COMMANDS",
    "CommandLineError",
    "HelpFormatter",
    "add_command",
    "add_dataclass_options",
    "build_parser",
    "load_config",
    "main",
    "resolve_options",
]

#: sub-command name -> module (see the module docstring for the protocol).
COMMANDS: dict[str, str] = {
    "demo": "visattn.commands.demo",
    "train": "visattn.commands.train",
    "eval": "visattn.commands.evaluate",
    "predict": "visattn.commands.predict",
    "viz": "visattn.commands.viz",
    "bench": "visattn.commands.bench",  # main(argv)
    "data": "visattn.commands.data",
}


class CommandLineError(Exception):
    """A command-line syntax error (unknown option, missing value, ...)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (``(default: X)``) and keeps descriptions' line breaks.

    Options whose argparse default is None (so that an explicit value can be told apart from the
    default, see :func:`resolve_options`) carry their real default in their help text.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or "%(default)" in text or action.default in (None, False):
            return text
        if action.default is argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def add_command(
    subparsers: Any,
    name: str,
    help: str,
    description: str | None = None,
    epilog: str | None = None,
    arguments: typing.Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The parser of (sub-)command ``name`` under ``subparsers``, formatted by
    :class:`HelpFormatter`; ``arguments(parser)``, when given, adds the command's options."""
    parser = subparsers.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    if arguments is not None:
        arguments(parser)
    return parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise CommandLineError(f"{self.prog}: error: {message}")


def _import_command(module: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # only "this sub-command is not installed" is skipped, not a broken import inside it
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="visattn",
        description="Visual attention for CNNs: Spatial Transformer, SE and CBAM.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"visattn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = _import_command(module_name)
        if module is None:
            continue
        if hasattr(module, "add_parser") and hasattr(module, "run"):
            sub = module.add_parser(subparsers)
            sub.set_defaults(_run=module.run)
        elif hasattr(module, "main"):
            doc = (module.__doc__ or "").strip().splitlines()
            sub = subparsers.add_parser(
                name, help=doc[0] if doc else name, add_help=False, prefix_chars="\0"
            )
            sub.add_argument("argv", nargs=argparse.REMAINDER)
            sub.set_defaults(_run=lambda args, _main=module.main: _main(args.argv))
    return parser


# ----------------------------------------------------------------------------- options


def _field_type(field: dataclasses.Field, hints: dict[str, Any]) -> tuple[type, bool]:
    """(base type, optional) of a dataclass field."""
    hint = hints[field.name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    return origin, optional


def _parse_key_value(text: str) -> tuple[str, Any]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    help_of: typing.Callable[[str], str],
    *,
    choices: dict[str, tuple[str, ...]] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Add ``--field-name`` for every field of dataclass ``cls`` (argparse default: None)."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        base, _ = _field_type(field, hints)
        default = getattr(defaults, field.name)
        text = f"{help_of(field.name)} (default: {default})"
        if base is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text.replace("%", "%%"),
            )
        elif base is dict:
            flag = "--" + field.name.replace("_", "-").removesuffix("s")
            parser.add_argument(
                flag,
                dest=field.name,
                action="append",
                type=_parse_key_value,
                default=None,
                metavar="KEY=VALUE",
                help=f"{help_of(field.name)}; repeatable".replace("%", "%%"),
            )
        else:
            parser.add_argument(
                flag,
                type=base,
                default=None,
                choices=(choices or {}).get(field.name),
                metavar=field.name.upper(),
                help=text.replace("%", "%%"),
            )


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml`` / ``.yml``) file of options.

    Keys are option names with ``-`` or ``_``; a ``[train]`` (or other sub-command) table is not
    needed. Raises ``ValueError`` with the file name for unreadable or malformed files.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--config: cannot read {path} ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError:
                    raise ValueError(
                        "--config: TOML files need Python 3.11+ or `pip install tomli`; "
                        "or use a YAML file"
                    ) from None
            data = tomllib.loads(raw.decode("utf-8"))
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(raw.decode("utf-8"))
        else:
            raise ValueError(f"--config: expected a .toml, .yaml or .yml file, got {path.name!r}")
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError
        if str(exc).startswith("--config:"):
            raise
        message = " ".join(str(exc).split())
        raise ValueError(f"--config: cannot parse {path}: {message}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_options(
    cls: type, args: argparse.Namespace, config: dict[str, Any] | None = None
) -> tuple[Any, set[str]]:
    """Build ``cls`` from defaults < ``config`` < explicit command-line values.

    Returns (options, names set explicitly by the config or the command line).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if key not in fields:
            raise ValueError(
                f"--config: unknown option {key!r}; valid options: {', '.join(sorted(fields))}"
            )
        base, optional = _field_type(fields[key], hints)
        if value is None and optional:
            values[key] = None
            continue
        if base in (int, float) and isinstance(value, str):
            try:
                value = base(value)
            except ValueError:
                raise ValueError(
                    f"--config: option {key!r} expects a{'n int' if base is int else ' number'}, "
                    f"got {value!r}"
                ) from None
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if base is dict and not isinstance(value, dict):
            raise ValueError(f"--config: option {key!r} expects a table / mapping, got {value!r}")
        if (base is not dict and not isinstance(value, base)) or (
            base is int and isinstance(value, bool)
        ):
            raise ValueError(f"--config: option {key!r} expects {base.__name__}, got {value!r}")
        values[key] = value
    for key, field in fields.items():
        value = getattr(args, key, None)
        if value is None:
            continue
        if _field_type(field, hints)[0] is dict:
            value = {**values.get(key, {}), **dict(value)}
        values[key] = value
    return cls(**values), set(values)


# ----------------------------------------------------------------------------- main


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if (
        isinstance(exc, (FileNotFoundError, PermissionError))
        and exc.filename
        and not str(exc).startswith(str(exc.filename))
    ):
        text = f"{exc.filename}: {exc.strerror or text}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 error, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except CommandLineError as exc:
        print(_one_line(exc), file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    prog = f"visattn {args.command}"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except CommandLineError as exc:
        print(_one_line(exc), file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("VISATTN_DEBUG"):
            raise
        known = isinstance(exc, (ValueError, TypeError, OSError, RuntimeError))
        prefix = "" if known else f"{type(exc).__name__}: "
        print(f"{prog}: error: {prefix}{_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
