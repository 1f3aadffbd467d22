"""The fast loop (`python3 -m pytest -q -m "not slow" tests`) imports every module of the package: a module that only
slow tests reach would go unchecked between full runs. Imports are read from the source (what a fast test imports,
and what that imports in turn), not executed."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / 'far'


def module_files() -> dict:
    """Every module of the package by name: ``far.models`` -> far/models/__init__.py, ..."""
    files = {}
    for path in PACKAGE.rglob('*.py'):
        parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
        files['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return files


def is_slow(node: ast.AST) -> bool:
    return any('mark.slow' in ast.unparse(decorator) for decorator in getattr(node, 'decorator_list', ()))


def imported_names(node: ast.AST, package: str = '') -> set:
    """The dotted names the import statements under ``node`` name (``from a import b``: ``a`` and ``a.b``), relative
    ones resolved against ``package``."""
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Import):
            names |= {alias.name for alias in child.names}
        elif isinstance(child, ast.ImportFrom):
            base = package.split('.')[:len(package.split('.')) - child.level + 1] if child.level else []
            module = '.'.join([*base, *([child.module] if child.module else [])])
            names |= {module, *(f'{module}.{alias.name}' for alias in child.names)}
    return names


def with_parents(name: str) -> set:
    """Importing ``far.a.b`` imports ``far`` and ``far.a`` first."""
    parts = name.split('.')
    return {'.'.join(parts[:i]) for i in range(1, len(parts) + 1)}


def reached(start: set, files: dict) -> set:
    """The package's modules that importing ``start`` imports."""
    seen, todo = set(), [name for name in start if name in files]
    while todo:
        name = todo.pop()
        for module in with_parents(name) - seen:
            if module not in files:
                continue
            seen.add(module)
            package = module if files[module].name == '__init__.py' else module.rpartition('.')[0]
            todo += [found for found in imported_names(ast.parse(files[module].read_text()), package) if found in files]
    return seen


def fast_imports(path: Path) -> set:
    """What a test file imports outside its slow tests, when it has a fast test (conftest.py: always)."""
    tree = ast.parse(path.read_text())
    tests = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith('test_')]
    if path.name != 'conftest.py' and all(is_slow(test) for test in tests):
        return set()
    return set().union(*(imported_names(node) for node in tree.body if not is_slow(node)))


def test_every_module_is_imported_by_a_fast_test():
    files = module_files()
    imported = reached(set().union(*(fast_imports(path) for path in TESTS.glob('*.py'))), files)
    assert imported <= set(files)
    assert not set(files) - imported, f'no fast test imports {sorted(set(files) - imported)}: import it in one'


def test_imports_are_read_with_their_packages_and_relative_names():
    files = module_files()
    assert {'far', 'far.models', 'far.models.far', 'far.models.blocks'} <= reached({'far.models.far'}, files)
    assert imported_names(ast.parse('from ..utils import checkpoints'), 'far.models') == {
        'far.utils', 'far.utils.checkpoints'}
