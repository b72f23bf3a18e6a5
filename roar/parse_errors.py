"""jsonargparse's errors, made one line that names the bad value and the valid choices.

Every command (``train.py``, ``python -m roar benchmark``, ``sanity``, ``attribute``) parses its
config with :class:`roar.fit_config.ConfigParser`, whose ``error`` passes the message through
:func:`one_line_error`: a misspelled key gets the valid keys and a close match, a misspelled
section the option it meant, a bad value of a class (a datamodule, a logger, a callback, a
``Literal`` choice) the value and what is accepted, instead of jsonargparse's nested union dumps.
Messages of other shapes pass unchanged.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any


def one_line_error(parser: Any, message: str) -> str:
    """``message`` of ``parser`` (a :class:`~roar.fit_config.ConfigParser`), made readable."""
    return _bad_value_of_a_class(_with_valid_keys(parser, message))


def _with_valid_keys(parser: Any, message: str) -> str:
    group = re.search(r"Group '([\w.]+)' does not accept option '(\w+)'", message)
    data = re.search(r"class_path '([\w.]+)'[^\n]*\n\s*Option '(\w+)' is not accepted", message)
    # "--sanity.num_imgs 3": argparse names the argument only; the one-line usage no longer lists the options
    unknown = re.search(r"unrecognized arguments: --([\w.]+)", message)
    # train.py fit --config with `model: {learning_rate: ...}`: the key belongs to the subcommand's parser
    subcommand = re.search(r"Subcommand '(\w+)' does not accept option '([\w.]+)'", message)
    if subcommand and subcommand.group(1) in parser.subcommand_parsers:
        parser, unknown = parser.subcommand_parsers[subcommand.group(1)], re.search(r"([\w.]+)", subcommand.group(2))
    # `benchmrk: {seeds: 3}` in a config file: the top-level parser names the dotted option only
    top = re.match(r"\s*Option '([\w.]+)' is not accepted", message) if not (group or unknown or data) else None
    misplaced = unknown or top
    if misplaced and not group:
        section_typo = _section_typo(parser.get_defaults(), misplaced.group(1))
        if section_typo:  # --benchmrk.seeds: the section is misspelled, so there was no list of its keys to name
            bad, close, valid = section_typo
            dash = "--" if "unrecognized arguments" in message else ""  # a command-line option, or a key of a config file
            hint = f" (did you mean {dash}{close}?)" if close else ""
            return f"{dash}{misplaced.group(1)}: '{bad}' is not a valid key{hint}; valid keys: {', '.join(valid)}"
    if group or unknown:
        section, _, bad = (group.group(1), None, group.group(2)) if group else unknown.group(1).rpartition(".")
        valid = _keys(parser.get_defaults(), section)
        if not valid:
            return message
    elif data:
        from roar.registry import import_object

        try:
            cls = import_object(data.group(1), "data class_path")
            valid = sorted(n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "args", "kwargs"))
        except ValueError:
            return message
        bad = data.group(2)
    else:
        return message
    close = difflib.get_close_matches(bad, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    alone = unknown and not group and message.count(" --") == 1  # one unrecognized option: one line naming it
    head = f"--{unknown.group(1)}: " if alone else message.rstrip() + "\n"
    text = f"{head}'{bad}' is not a valid key{f' of {data.group(1)}' if data else ''}{hint}; valid keys: {', '.join(valid)}"
    return (text + _wrap_hint(data.group(1), bad)) if data else text


def _keys(defaults: Any, section: str) -> list[str]:
    """The keys under ``section`` of a parser's defaults (the top level for ""), nested sections as one key each."""
    keys = defaults.get(section) if section else defaults
    # a nested section is one key (`model`, not `model.lr`): the top level listed no model or trainer
    return sorted({k.split(".")[0] for k in (keys.keys() if hasattr(keys, "keys") else []) if not k.startswith("__")})


def _section_typo(defaults: Any, option: str) -> tuple[str, str | None, list[str]] | None:
    """For ``benchmrk.seeds``: the misspelled section ``benchmrk``, the mended option ``benchmark.seeds``, the valid keys.

    None when every section of ``option`` exists (its last key is the misspelled one). The rest of the
    option is mended level by level with the closest key, so ``benchmrk.seedz`` suggests ``benchmark.seeds``.
    """
    parts = option.split(".")
    for depth, part in enumerate(parts[:-1]):
        valid = _keys(defaults, ".".join(parts[:depth]))
        if not valid or part in valid:
            continue
        mended = parts[:depth]
        for level, name in enumerate(parts[depth:], start=depth):
            close = difflib.get_close_matches(name, _keys(defaults, ".".join(mended)), n=1)
            if not close and level < len(parts) - 1:
                return part, None, valid
            mended.append(close[0] if close else name)
        return part, ".".join(mended) if ".".join(mended) != option else None, valid
    return None


_UNION = re.compile(r'^Parser key "([\w.]+)":\s*\n\s*Does not validate against any of the Union subtypes')
_IN_CLASS = re.compile(r"Problem with given class_path '([\w.]+)':\s*\n\s*Parser key \"([\w.]+)\":\s*\n\s*Expected (.+?)\. Got value: (.*)")
_IN_CLASS_SHORTENED = re.compile(r"Problem with given class_path '([\w.]+)':\s*\n\s*--([\w.]+) (.*)")
_SIMPLE = re.compile(r'^Parser key "([\w.]+)":\s*\n\s*Expected (.+?)\. Got value: ([^\n]*)\Z')
_LITERAL = re.compile(r"a typing\.Literal\[(.*)\]")
_NOT_SUBCLASS = re.compile(r"Import path ([\w.]+) does not correspond to a subclass of (\w+)")


def _lightning_hint(class_path: str, base: str) -> str:
    """``train.py fit`` takes roar's datamodules only: how to give it a user's LightningDataModule (the lightning source)."""
    from lightning.pytorch import LightningDataModule

    from roar.registry import import_object

    try:
        cls = import_object(class_path, "data class_path")
    except ValueError:
        return ""
    if base == "LightningDataModule" or not (isinstance(cls, type) and issubclass(cls, LightningDataModule)):
        return ""
    return (f"; a LightningDataModule of yours is roar's lightning source: --data '{{class_path: roar.data.ImageDataModule, "
            f"init_args: {{source: lightning, source_options: {{class_path: {class_path}, init_args: {{...}}}}, image_size: null}}}}'")


def _bad_value_of_a_class(message: str) -> str:
    """``--data.fill foo`` in one line: ``--data.fill 'foo': expected one of channel_mean, image_mean, ...``.

    A section typed by a class (``data:`` takes any LightningDataModule) or a union
    (``seed_everything``: bool or int) reports a bad value as a union that matched no subtype:
    eight lines of types around the one that names the key, the value and what it takes. A
    misspelled key of the data class keeps the line :func:`_with_valid_keys` added. Messages of
    other shapes pass unchanged.
    """
    neither = _not_a_file_nor_a_class(message)
    if neither:
        return neither
    simple = _SIMPLE.match(message.strip())
    if simple:
        return f"--{simple.group(1)} {simple.group(3).strip()!r}: expected {_readable(simple.group(2), simple.group(3))}"
    not_subclass, parser_key = _NOT_SUBCLASS.search(message), re.match(r'Parser key "([\w.]+)"', message)
    if not_subclass and parser_key:  # --data given a class of another kind: one line, however jsonargparse nests it
        path, base = not_subclass.groups()
        return f"--{parser_key.group(1)}: {path} is not a subclass of {base}" + _lightning_hint(path, base)
    union = _UNION.match(message)
    if not union:
        return message
    key = union.group(1)
    inner, shortened = _IN_CLASS.findall(message), _IN_CLASS_SHORTENED.findall(message)
    if len(inner) == 1:
        class_path, name, expected, value = inner[0]
        return f"--{key}.{name} {value.strip()!r}: expected {_readable(expected, value)} ({class_path})"
    if len(shortened) == 1:  # the class's own parser already made its line
        class_path, name, rest = shortened[0]
        return f"--{key}.{name} {rest.strip()} ({class_path})"
    added = re.search(r"\n('[\w.]+' is not a valid key.*)\Z", message, flags=re.S)
    if added:
        return f"--{key}: {added.group(1)}"
    subtypes, given = re.search(r"Subtypes: \[(.*)\]", message), re.search(r"Given value: (.*)", message)
    if subtypes and given and "class_path" not in message:
        # split at top-level commas only: dict[str, dict[str, typing.Any]] is one subtype, not three
        kinds = [_readable(f"a {t.strip()}") for t in _flat_brackets(subtypes.group(1)).split(",")]
        kinds = [re.sub(r"^an? (?=\w+\[)", "", k).replace("\0", ",") for k in kinds]  # "dict[str, int]", not "a dict[str, int]"
        return f"--{key} {given.group(1).strip()!r}: expected {' or '.join(kinds)}"
    return message


_NOT_A_PATH = re.compile(r'^Parser key "([\w.]+)":\s*\n\s*- Expected a path but (.+?) either not accessible or invalid\n')
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'|No module named '[\w.]+'")


def _not_a_file_nor_a_class(message: str) -> str | None:
    """``--trainer.logger wandbx`` or ``--trainer.callbacks+=callbacks.ModelRandomCheck`` in one line.

    A logger or callback is a config file or a class path; a value that is neither was twelve lines
    of union subtypes, none of them naming what the user can give.
    """
    head = _NOT_A_PATH.match(message.strip())
    subtypes = re.search(r"Subtypes: \[(.*)\]", message)
    bases = re.findall(r"<class '([\w.]+)'>", subtypes.group(1)) if subtypes else []
    bases = [b for b in bases if b not in ("bool", "NoneType")]
    if not head or not bases:
        return None
    key, value = head.groups()
    if value.lstrip("'\" ").startswith("{"):  # a class_path given as a dict: the class itself is what's wrong, said elsewhere
        return None
    missing = _NO_ATTRIBUTE.search(message)
    if missing and missing.group(1):  # an existing module without that class: list the module's classes of that kind
        import importlib

        from roar.registry import import_object

        try:
            base, module = import_object(bases[0], "base class"), importlib.import_module(missing.group(1))
        except (ImportError, ValueError):
            return None
        names = sorted(n for n, obj in vars(module).items() if isinstance(obj, type) and issubclass(obj, base) and not inspect.isabstract(obj))
        close = difflib.get_close_matches(missing.group(2), names, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"--{key} {value!r}: no such file, and {missing.group(0)}{hint}; its {bases[0]} classes: {', '.join(names) or 'none'}"
    reason = missing.group(0) if missing else "nor a class path"
    kinds = ["a config file", f"a class path of a {bases[0]}"]
    kinds += ["a list of them"] * bool(re.search(r"(list|Iterable)\[", subtypes.group(1)))
    kinds += ["bool"] * ("<class 'bool'>" in subtypes.group(1)) + ["null"] * ("NoneType" in subtypes.group(1))
    return f"--{key} {value!r}: no such file, {'and ' * bool(missing)}{reason}; expected {', '.join(kinds[:-1])} or {kinds[-1]}"


def _flat_brackets(text: str) -> str:
    """``text`` with every comma inside square brackets replaced by NUL, so a split at commas keeps ``dict[str, int]`` whole."""
    depth, out = 0, []
    for char in text:
        depth += (char == "[") - (char == "]")
        out.append("\0" if char == "," and depth else char)
    return "".join(out)


def _readable(expected: str, given: str | None = None) -> str:
    """``a typing.Literal['a', 'b']`` -> ``one of a, b`` (and the close match of ``given``); ``a <class 'int'>`` -> ``int``."""
    literal = _LITERAL.fullmatch(expected)
    if literal:
        choices = [v.strip().strip(chr(39)) for v in literal.group(1).split(",")]
        close = difflib.get_close_matches(given.strip(), choices, n=1) if given else []
        return f"one of {', '.join(choices)}" + (f" (did you mean {close[0]}?)" if close else "")
    kind = re.sub(r"^an? <class '([\w.]+)'>$", r"\1", expected)
    return "null" if kind == "NoneType" else kind


def _wrap_hint(class_path: str, key: str) -> str:
    """How to give roar's own data settings (limit_train, augment, ...) to a user's datamodule, which does not take them."""
    from roar.data.datamodule import ImageDataModule

    if key not in inspect.signature(ImageDataModule).parameters:
        return ""
    return (f"\n'{key}' is a setting of roar.data.ImageDataModule: wrap {class_path} to use it, e.g. --data "
            f"'{{class_path: roar.data.ImageDataModule, init_args: {{source: lightning, "
            f"source_options: {{class_path: {class_path}, init_args: {{...}}}}, {key}: ...}}}}'")


__all__ = ["one_line_error"]
