"""Experiment options: load a YAML file, apply command-line overrides, validate before any work.

Every block with a ``type:`` key names a registry entry; its other keys are that constructor's keyword
arguments, checked against its signature (unknown key, missing required key, wrong type). Groups of
options that are not registry entries are dataclasses, checked the same way field by field. A problem
stops the run with one message naming the YAML file, the key path and what is allowed.
"""
import copy
import dataclasses
import difflib
import inspect
import re
import typing
from typing import Any, Dict, Iterator, List, Literal, Sequence, Tuple, Union

import yaml

from far.registry import Registry

try:
    from typing import Annotated
except ImportError:  # pragma: no cover - Python < 3.9
    from typing_extensions import Annotated


class OptionError(ValueError):
    """A YAML option is wrong; the message names the file, the key path and the fix."""

    def __init__(self, file: str, path: str, problem: str):
        self.file, self.path, self.problem = file, path, problem
        super().__init__(f'{file}: {path or "<top level>"}: {problem}')


def Block(registry: Registry):
    """Annotation for a YAML block that builds an entry of ``registry``: ``Block(MODELS)``."""
    return Annotated[dict, registry]


# ----------------------------------------------------------------------------------------------------------
# Loading and overrides
# ----------------------------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: ``1e-4`` is a number (YAML 1.1 reads a string) and only true/false are booleans
    (YAML 1.1 turns ``mixed_precision: no`` into False)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != 'tag:yaml.org,2002:bool']
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver('tag:yaml.org,2002:bool', re.compile(r'^(?:true|True|TRUE|false|False|FALSE)$'),
                              list('tTfF'))

_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'))


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def load_yaml(path: str) -> dict:
    try:
        with open(path, 'r') as f:
            opt = parse_yaml(f)
    except FileNotFoundError:
        raise OptionError(path, '', 'file not found') from None
    except yaml.YAMLError as e:
        raise OptionError(path, '', f'not valid YAML: {e}') from None
    if not isinstance(opt, dict):
        raise OptionError(path, '', 'the file must hold a mapping of options')
    return opt


def apply_overrides(opt: dict, overrides: Sequence[str], file: str = '<command line>') -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: ``3``, ``1e-4``, ``[1,2]``, ``null``)."""
    opt = copy.deepcopy(opt)
    for item in overrides:
        if '=' not in item:
            raise OptionError(file, item, "an override must look like 'key.path=value'")
        key, value = item.split('=', 1)
        parts = key.strip().split('.')
        node = opt
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise OptionError(file, '.'.join(parts[:i + 1]),
                                  f'is a {type(nxt).__name__}, cannot set {key} inside it')
            node = nxt
        # Overrides are never large YAML documents: plain strings stay strings when they do not parse.
        try:
            node[parts[-1]] = parse_yaml(value)
        except yaml.YAMLError:
            node[parts[-1]] = value
    return opt


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------

def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return 'null'
    if origin is Annotated and isinstance(args[1], Registry):
        return f'a {args[1].name} block ({{type: ..., ...}})'
    if origin is Literal:
        return ' | '.join(repr(a) for a in args)
    if origin is Union:
        return ' or '.join(_describe(a) for a in args)
    if origin in (list, List, tuple, Tuple, Sequence) or tp in (list, tuple):
        return 'a list'
    if origin in (dict, Dict) or tp is dict:
        return 'a mapping'
    if dataclasses.is_dataclass(tp):
        return f'a mapping of {tp.__name__} options'
    return getattr(tp, '__name__', str(tp))


def _closest(name: str, allowed: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(allowed), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ''


def _signature(target) -> inspect.Signature:
    return inspect.signature(target, eval_str=True)


def _constructors(target) -> Iterator:
    """``target``, then, while a constructor hands ``**options`` on, the constructor of its base class (of its
    class, for a size variant)."""
    yield target
    if not any(p.kind is p.VAR_KEYWORD for p in _signature(target).parameters.values()):
        return
    if inspect.isclass(target):
        base = next((b for b in target.__mro__[1:] if '__init__' in vars(b)), None)
        if base is not None and base is not object:
            yield from _constructors(base)
    elif hasattr(target, 'target'):
        yield from _constructors(target.target)


def yaml_parameters(target) -> Dict[str, inspect.Parameter]:
    """The constructor parameters a YAML block may set (runtime objects such as the accelerator, and what a size
    variant fixes, excluded); a subclass's own parameters first, then those its ``**options`` reach."""
    constructors = list(_constructors(target))
    excluded = {name for constructor in constructors for name in getattr(constructor, 'runtime_args', ())}
    excluded |= set(getattr(target, 'fixed_kwargs', {}))
    params: Dict[str, inspect.Parameter] = {}
    for constructor in constructors:
        for n, p in _signature(constructor).parameters.items():
            variadic = p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            if n not in params and n not in excluded and n != 'self' and not variadic:
                params[n] = p
    return params


def _dataclass_defaults(cls) -> Dict[str, Any]:
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


class ValidBlock(dict):
    """A validated registry block: the keys as written (what is built and saved), and ``settings``, every
    setting the entry takes: as written, else fixed by a size variant, else its default."""

    def __init__(self, written: dict, settings: dict):
        super().__init__(written)
        self.settings = settings


def _dataclass_parameters(cls) -> Dict[str, Tuple[Any, bool]]:
    """The fields of an option dataclass as ``name -> (annotation, required)``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}


class Validator:
    """Checks a nested options dict against annotations; returns it with dataclass groups instantiated."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, path: str, problem: str):
        raise OptionError(self.file, path, problem)

    def check(self, value: Any, tp: Any, path: str) -> Any:
        if tp is inspect.Parameter.empty or tp is Any:
            return value
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated:
            if isinstance(args[1], Registry):
                return self.block(value, args[1], path)
            return self.check(value, args[0], path)
        if origin is Union:
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            mappings = [a for a in options if dataclasses.is_dataclass(a) or typing.get_origin(a) is Annotated]
            if len(options) == 1 or (isinstance(value, dict) and len(mappings) == 1):
                return self.check(value, (mappings if isinstance(value, dict) and mappings else options)[0], path)
            for a in options:
                try:
                    return self.check(value, a, path)
                except OptionError:
                    continue
            self.fail(path, f'got {value!r}, expected {_describe(tp)}')
        if origin is Literal:
            if value not in args:
                self.fail(path, f'got {value!r}, allowed: {", ".join(repr(a) for a in args)}')
            return value
        if dataclasses.is_dataclass(tp):
            return self.group(value, tp, path)
        if tp is bool:
            if not isinstance(value, bool):
                self.fail(path, f'got {value!r}, expected true or false')
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    return int(value)  # YAML writes 5e4 as a float; a whole number is fine for an int option
                self.fail(path, f'got {value!r}, expected an integer')
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(path, f'got {value!r}, expected a number')
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.fail(path, f'got {value!r}, expected a string')
            return value
        if origin in (list, tuple, Sequence, typing.get_origin(Sequence[int])) or tp in (list, tuple):
            if not isinstance(value, (list, tuple)):
                self.fail(path, f'got {value!r}, expected a list')
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    self.fail(path, f'got {len(value)} items, expected {len(args)}')
                return type(value)(self.check(v, a, f'{path}[{i}]') for i, (v, a) in enumerate(zip(value, args)))
            item = args[0] if args else Any
            return type(value)(self.check(v, item, f'{path}[{i}]') for i, v in enumerate(value))
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                self.fail(path, f'got {value!r}, expected a mapping')
            if len(args) == 2:
                return {k: self.check(v, args[1], f'{path}.{k}') for k, v in value.items()}
            return value
        if inspect.isclass(tp) and not isinstance(value, tp):
            self.fail(path, f'got {value!r}, expected {_describe(tp)}')
        return value

    def _fields(self, given: dict, params: Dict[str, Tuple[Any, bool]], path: str, what: str) -> dict:
        """``params``: name -> (annotation, required)."""
        for key in given:
            if key not in params:
                allowed = ', '.join(sorted(params)) or 'none'
                self.fail(f'{path}.{key}' if path else key,
                          f'unknown key for {what}{_closest(key, params)}; allowed keys: {allowed}')
        for name, (_, required) in params.items():
            if required and name not in given:
                self.fail(f'{path}.{name}' if path else name, f'missing required key for {what}')
        return {k: self.check(v, params[k][0], f'{path}.{k}' if path else k) for k, v in given.items()}

    def block(self, value: Any, registry: Registry, path: str) -> ValidBlock:
        if not isinstance(value, dict):
            self.fail(path, f'expected a {registry.name} block (a mapping with a type: key), got {value!r}')
        if 'type' not in value:
            self.fail(f'{path}.type', f'missing; choose one of: {", ".join(registry.keys())}')
        name = value['type']
        if not isinstance(name, str) or name not in registry:
            self.fail(f'{path}.type', f'unknown {registry.name} {name!r}{_closest(str(name), registry.keys())}; '
                      f'registered: {", ".join(registry.keys())}')
        target = registry.get(name)
        kwargs = {k: v for k, v in value.items() if k != 'type'}
        options_class = getattr(target, 'options_class', None)
        if options_class is not None:
            params, defaults = _dataclass_parameters(options_class), _dataclass_defaults(options_class)
        else:
            parameters = yaml_parameters(target)
            params = {n: (p.annotation, p.default is p.empty) for n, p in parameters.items()}
            defaults = {n: p.default for n, p in parameters.items() if p.default is not p.empty}
        fields = self._fields(kwargs, params, path, f'{registry.name} {name!r}')
        if options_class is not None:
            try:  # the settings' own checks (__post_init__), before any work starts
                options_class(**fields)
            except (TypeError, ValueError) as e:
                self.fail(path, str(e))
        written = {'type': name, **fields}
        return ValidBlock(written, {**defaults, **getattr(target, 'fixed_kwargs', {}), **written})

    def group(self, value: Any, cls, path: str):
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            self.fail(path, f'expected {_describe(cls)}, got {value!r}')
        fields = self._fields(value, _dataclass_parameters(cls), path, f'{cls.__name__}')
        try:
            return cls(**fields)
        except (TypeError, ValueError) as e:  # checks of the group itself (__post_init__)
            self.fail(path, str(e))


def validate(opt: dict, schema, file: str):
    """Validate ``opt`` against a dataclass ``schema``; return the schema instance (blocks are ``ValidBlock``s)."""
    return Validator(file).group(opt, schema, '')


def validate_block(cfg: dict, registry: Registry, file: str, path: str = '') -> ValidBlock:
    """Validate one registry block on its own (e.g. a model config loaded from a separate file)."""
    return Validator(file).block(cfg, registry, path)


def to_dict(obj) -> Any:
    """Options back to plain YAML-able data (dataclass groups become mappings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
