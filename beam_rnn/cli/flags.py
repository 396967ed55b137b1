"""Command-line flags generated from config dataclasses: the dataclass is the one home of each default.

A config field becomes a flag through its metadata::

    @dataclasses.dataclass(frozen=True)
    class PreprocessConfig:
        vocab_size: int = option(20000, "Keep the top-k words.")
        max_tokens: int | None = option(None, "Truncate documents to this many tokens.", metavar="N")

    parser = argparse.ArgumentParser()
    add_config_flags(parser, PreprocessConfig)               # --vocab-size (default 20000) ...
    known, rest = parse_known_flags(parser, argv)           # --vocab_size is accepted too
    config = config_from_flags(PreprocessConfig, known)

A field whose type is itself such a dataclass (made with
``option(default_factory=ModelSettings)``) contributes that dataclass's flags, and
`config_from_flags` builds it nested.

Help strings end with the default taken from the dataclass, so `--help`, the README
tables (tests/test_readme.py) and the library cannot disagree.  This module imports
neither TensorFlow nor Beam: drivers build their parsers before any heavy import.
"""

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

_META = "beam_rnn.flag"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - argparse's name
    *,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    show_default: str | None = None,
    nargs: str | int | None = None,
    negated: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    greater_than: float | None = None,
    less_than: float | None = None,
) -> Any:
    """A dataclass field with what its command-line flag needs.

    Args:
      default: The default (the only place it is written down).
      help: One sentence for --help (the default is appended).
      flag: Flag name without dashes (default: the field name with - for _).
      choices: Allowed values.
      metavar: Placeholder in --help.
      parse: str -> value for types argparse cannot infer (lists, tuples).
      cli: False keeps the field out of the command line (library-only).
      default_factory: As for dataclasses.field.
      show_default: Text for the default in --help instead of repr(default).
      nargs: As for argparse (e.g. "+": ``--splits train eval``); the default should be a tuple.
      negated: For a bool field defaulting to True: one switch `flag` that sets it False
          (``--fixed-window`` for ``dynamic_window``) instead of ``--x/--no-x``.
      minimum, maximum: Inclusive bounds; greater_than, less_than: exclusive ones; checked
          with the choices by `check_options` (None values of optional fields pass).

    A field without a default is a required flag.
    """
    meta = {
        _META: {
            "help": help,
            "flag": flag,
            "choices": tuple(choices) if choices is not None else None,
            "metavar": metavar,
            "parse": parse,
            "cli": cli,
            "show_default": show_default,
            "nargs": nargs,
            "negated": negated,
            "bounds": (minimum, maximum, greater_than, less_than),
        }
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _meta(field: dataclasses.Field) -> Mapping[str, Any] | None:
    return field.metadata.get(_META)


def flag_name(field: dataclasses.Field) -> str:
    meta = _meta(field) or {}
    return "--" + (meta.get("flag") or field.name.replace("_", "-"))


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(type without None, optional?) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return annotation, False


def _describe_default(value: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("show_default"):
        return meta["show_default"]
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) if value else "none"
    return str(value)


def _nested(field: dataclasses.Field) -> type | None:
    """The config dataclass a field holds (its flags are the nested class's), else None."""
    base, _ = _base_type(field.type)
    return base if isinstance(base, type) and dataclasses.is_dataclass(base) else None


def _bound_problem(value: Any, bounds: tuple[Any, ...]) -> str | None:
    """None if `value` is within (minimum, maximum, greater_than, less_than), else the allowed range in words."""
    minimum, maximum, greater_than, less_than = bounds
    ok = ((minimum is None or value >= minimum) and (greater_than is None or value > greater_than)
          and (maximum is None or value <= maximum) and (less_than is None or value < less_than))
    if ok:
        return None
    low = f"[{minimum:g}" if minimum is not None else (f"({greater_than:g}" if greater_than is not None else None)
    high = f"{maximum:g}]" if maximum is not None else (f"{less_than:g})" if less_than is not None else None)
    if low is None:
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]
    if high is None:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    return f"in {low}, {high}"


def check_options(config: Any) -> None:
    """Checks every `option` field of a config dataclass against its bounds and choices.

    Called first in the configs' ``__post_init__``: one place for the range checks, so
    the message (which names the flag) is the same in the library and on the command line.

    Raises:
      InputError: The first field out of range, as ``--vocab-size must be >= 1, got 0``.
    """
    from beam_rnn.core.errors import InputError  # pylint: disable=import-outside-toplevel

    for field in dataclasses.fields(config):
        meta = _meta(field)
        if meta is None:
            continue
        value = getattr(config, field.name)
        if value is None:
            continue
        name = flag_name(field) if meta["cli"] else field.name
        values = value if isinstance(value, (tuple, list)) else (value,)
        if meta["choices"] is not None:
            bad = [v for v in values if v not in meta["choices"]]
            if bad:
                raise InputError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {bad[0]!r}")
        bounds = meta.get("bounds", (None,) * 4)
        if bounds == (None,) * 4 or isinstance(value, bool):
            continue
        for v in values:
            problem = _bound_problem(v, bounds)
            if problem is not None:
                raise InputError(f"{name} must be {problem}, got {v}")


def config_fields(config_cls: type, *, exclude: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of `config_cls` that are command-line flags."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for field in dataclasses.fields(config_cls):
        meta = _meta(field)
        if meta is None or not meta["cli"] or field.name in set(exclude):
            continue
        field.type = hints.get(field.name, field.type)
        out.append(field)
    return out


def add_config_flags(
    parser: argparse.ArgumentParser | Any,
    config_cls: type,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    dest_prefix: str = "",
    shown_defaults: Mapping[str, str] | None = None,
) -> list[str]:
    """Adds one flag per field of `config_cls` (see `option`); returns their dests.

    Args:
      parser: An ArgumentParser or argument group.
      config_cls: A dataclass whose fields were made with `option`.
      exclude: Field names to leave out (the driver adds its own flag for them).
      defaults: Overrides of the shown/used defaults for this command.
      dest_prefix: Prefix of the argparse dests (to keep two configs apart).
      shown_defaults: The words --help shows for overridden defaults (e.g. None meaning "the model's").
    """
    dests = []
    for field in config_fields(config_cls, exclude=exclude):
        meta = _meta(field)
        if field.name in (shown_defaults or {}):
            meta = {**meta, "show_default": shown_defaults[field.name]}
        default = (defaults or {}).get(field.name, _default(field))
        nested = _nested(field)
        if nested is not None:  # its fields' defaults are those of this field's default object
            inner = {f.name: getattr(default, f.name) for f in dataclasses.fields(nested)}
            dests += add_config_flags(parser, nested, exclude=exclude, defaults={**inner, **(defaults or {})},
                                      dest_prefix=dest_prefix)
            continue
        base, optional = _base_type(field.type)
        kwargs: dict[str, Any] = {"dest": dest_prefix + field.name, "default": default}
        help_text = meta["help"].rstrip()
        if default is dataclasses.MISSING:
            del kwargs["default"]
            kwargs["required"] = True
        if base is bool and not optional and meta.get("negated"):
            if default is not True:
                raise ValueError(f"{config_cls.__name__}.{field.name}: a negated flag needs the default True")
            kwargs["action"] = "store_false"
            help_text += f" (default {_describe_default(False, meta)})"
        elif base is bool and not optional:
            kwargs["action"] = argparse.BooleanOptionalAction
            help_text += f" (default {_describe_default(default, meta)})"
        else:
            if meta["parse"] is not None:
                kwargs["type"] = meta["parse"]
            elif base in (int, float, str):
                kwargs["type"] = base
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
            if meta.get("nargs") is not None:
                kwargs["nargs"] = meta["nargs"]
            if not kwargs.get("required"):
                help_text += f" (default {_describe_default(default, meta)})"
        kwargs["help"] = help_text.replace("%", "%%")
        parser.add_argument(flag_name(field), **kwargs)
        dests.append(dest_prefix + field.name)
    return dests


def config_from_flags(config_cls: type, namespace: argparse.Namespace, *, dest_prefix: str = "", **overrides: Any):
    """Builds `config_cls` from parsed flags (fields without a flag keep their defaults)."""
    kwargs = {}
    for field in config_fields(config_cls):
        dest = dest_prefix + field.name
        if _nested(field) is not None:
            kwargs[field.name] = config_from_flags(_nested(field), namespace, dest_prefix=dest_prefix)
        elif hasattr(namespace, dest):
            kwargs[field.name] = getattr(namespace, dest)
    kwargs.update(overrides)
    return config_cls(**kwargs)


TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")
_SWITCH_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction,  # pylint: disable=protected-access
                   argparse.BooleanOptionalAction)


def switch_value(flag: str, value: str) -> bool:
    """``true``/``yes``/``1`` or ``false``/``no``/``0`` (any case) given to a switch as ``--flag=value``.

    Raises:
      argparse.ArgumentTypeError: Any other value.
    """
    word = value.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"argument {flag}: expected true or false, got {value!r}")


def normalise_flag_spelling(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Rewrites ``--a_b`` to ``--a-b`` for the parser's own flags (Beam's keep their spelling), and
    ``--switch=true|false`` to the switch, its ``--no-`` form, or nothing.

    So every switch can also be given a value, as a Flex Template launcher passes its parameters
    (``--name=value``): ``--switch=true`` is ``--switch``, ``--switch=false`` leaves it off (the
    ``--no-switch`` of a flag that has one).
    """
    known = set()
    switches = {}
    for action in parser._actions:  # argparse has no public list of option strings
        known.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, _SWITCH_ACTIONS):
            switches.update((s, action) for s in action.option_strings)
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if arg.startswith("--") and "_" in name:
            dashed = name.replace("_", "-")
            if dashed in known and name not in known:
                name = dashed
                arg = name + eq + value
        if eq and name in switches:
            try:
                on = switch_value(name, value)
            except argparse.ArgumentTypeError as e:
                parser.error(str(e))
            if on:
                arg = name
            elif isinstance(switches[name], argparse.BooleanOptionalAction):
                arg = "--" + name[len("--no-"):] if name.startswith("--no-") else "--no-" + name[2:]
            else:
                continue
        out.append(arg)
    return out


def parse_known_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """`parser.parse_known_args` accepting ``--a_b`` for ``--a-b``; the rest must be Beam's flags.

    A leftover that neither `parser` nor any Beam `PipelineOptions` class knows is an
    argparse error (exit 2, with a suggestion) instead of being dropped by Beam.
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    known, rest = parser.parse_known_args(normalise_flag_spelling(parser, args))
    unknown = unknown_pipeline_flags(rest)
    if unknown:
        own = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
        message = f"unrecognized arguments: {' '.join(unknown)}"
        guesses = difflib.get_close_matches(unknown[0].split("=", 1)[0].replace("_", "-"), own, n=1)
        parser.error(message + (f" (did you mean {guesses[0]}?)" if guesses else
                                " (neither this command nor Beam's pipeline options know it)"))
    return known, rest


def parse_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """`parser.parse_args` accepting ``--a_b`` for ``--a-b`` (for commands that take no Beam flags)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    return parser.parse_args(normalise_flag_spelling(parser, args))


def unknown_pipeline_flags(args: Sequence[str]) -> list[str]:
    """The arguments of `args` that no Beam `PipelineOptions` class parses (what Beam would drop)."""
    if not args:
        return []
    # Beam's own parser (private) because PipelineOptions only logs unknown flags and drops them;
    # its ValueProvider flags need _BeamArgumentParser's add_value_provider_argument.
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    beam_parser = _BeamArgumentParser(allow_abbrev=False)
    classes: dict[str, type] = {}
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        classes.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        pending.extend(cls.__subclasses__())
    for cls in classes.values():
        try:
            cls._add_argparse_args(beam_parser)  # pylint: disable=protected-access
        except argparse.ArgumentError:  # a subclass re-adding its parent's flag
            continue
    _, unknown = beam_parser.parse_known_args(list(args))
    return unknown


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: every library's log lines (`beam_rnn.cli.run_command` handles it before parsing)."""
    parser.add_argument("--verbose", action="store_true",
                        help="Show every library's log lines (TensorFlow, Beam, Keras) instead of only the project's.")


def add_model_flag(parser: argparse.ArgumentParser, help_tail: str = "", *, required: bool = True) -> None:
    """``--model DIR [DIR ...]``: exported models, the same flag wherever a model directory is meant."""
    parser.add_argument(
        "--model", nargs="+", required=required, metavar="DIR",
        help="Exported model dir(s): an export (OUTPUT/<kind> of `beam-rnn train`), NAME=DIR to name one, or a "
        "training output holding bilstm/ and lstm/ (both models)." + help_tail)


def split_list(text: str) -> tuple[str, ...]:
    """Comma-separated flag value -> tuple of non-empty stripped items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated ints."""
    try:
        return tuple(int(item) for item in split_list(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
