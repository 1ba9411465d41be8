"""Every message Qunban can say, read from the source of bot/ and handlers/.

    python -m bot.locale.extract              # which msgids the Chinese catalog still lacks
    python -m bot.locale.extract --pot FILE   # all of them, as a gettext template
    python -m bot.locale.extract --add        # put the missing ones into the Chinese catalog,
                                              # with an empty msgstr for a translator to fill

A message written in the call, ``_(lang, "…")``, ``gettext(lang, "…")`` or
``ngettext(lang, "…", "…", n)``, is what ``pybabel extract -k _:2 -k gettext:2
-k ngettext:2,3 bot handlers`` finds; Babel's extractor reads those here too. It does not see
a call nested in another call's arguments or inside an f-string, so the calls are also read from
the syntax tree. A message chosen at run time (``_NUDGES[facts.rung]``, ``template``,
``f"state:{…}"``) is followed back to the strings it can be: tables and constants of the module
or the function, the default of ``.get()``, both arms of ``a if c else b``, a parameter through
every call of its function. What only the running program knows (``role.value``,
``event.kind``) is listed in ``_hints``. A call that cannot be followed is reported, so the
catalog test fails instead of a reader seeing English.
"""

from __future__ import annotations

import ast
import io
import itertools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("bot", "handlers")
KEYWORDS = {"_": (2,), "gettext": (2,), "ngettext": (2, 3)}
SKIP = frozenset({"bot/i18n.py"})  # defines gettext; says nothing itself
CATALOG = ROOT / "bot" / "locale" / "zh" / "LC_MESSAGES" / "messages.po"
WIDTH = 99  # how the catalog is wrapped

# written the same in both languages: commands, markup and placeholders only
SAME = frozenset(
    {
        "/mine",
        "/open",
        "/overdue",
        "/digest",
        "/help",
        "/lang zh|en",
        "/stats [7d|30d]",
        "<b>{name}</b> · {role}",
        "{ref} {kind}",
    }
)

Message = str | tuple[str, str]  # a msgid, or the singular and plural of ngettext
Value = str | tuple[frozenset["Value"], ...]  # a string, or a tuple of what each item can be


def _hints() -> dict[tuple[str, str], Callable[[], set[str]]]:
    """What only the running program knows, by file and expression (as ast.unparse says it)."""
    from bot import texts
    from bot.services.nudges import _EVENT_KIND
    from bot.tickets import Action
    from storage.tables import Role

    def event_kinds() -> set[str]:
        return {a.value for a in Action} | set(_EVENT_KIND.values()) | set(texts._EVENT_SENTENCES)

    return {
        ("bot/texts.py", "role.value"): lambda: {r.value for r in Role},
        ("bot/texts.py", "event.kind"): event_kinds,
        # a part without a sentence, and an unknown command, are shown as they are written
        ("bot/deadman.py", "problem.part"): set,
        ("handlers/replies.py", "f'/{command}'"): set,
    }


@dataclass
class Module:
    path: str  # relative to ROOT, with slashes
    tree: ast.Module
    modules: dict[str, str] = field(default_factory=dict)  # alias -> path of a scanned module
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # alias -> (path, name)


@dataclass(frozen=True)
class Scope:
    module: Module
    function: ast.FunctionDef | ast.AsyncFunctionDef | None


class Unfollowable(Exception):
    def __init__(self, scope: Scope, node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            what = f"the parameter of {node.name}(), which nothing calls"
        else:
            what = f"`{ast.unparse(node)}`"
        super().__init__(f"{what} ({scope.module.path}:{getattr(node, 'lineno', '?')})")


@dataclass
class Extraction:
    messages: dict[Message, list[tuple[str, int]]]  # msgid -> where it is said
    problems: list[str]  # calls whose message could not be followed


def _module_path(dotted: str) -> str | None:
    for candidate in (f"{dotted.replace('.', '/')}.py", f"{dotted.replace('.', '/')}/__init__.py"):
        if (ROOT / candidate).exists() and candidate.split("/")[0] in SOURCES:
            return candidate
    return None


def _load() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for source in SOURCES:
        for file in sorted((ROOT / source).rglob("*.py")):
            path = file.relative_to(ROOT).as_posix()
            modules[path] = Module(path, ast.parse(file.read_text(encoding="utf-8"), path))
    for module in modules.values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    name = alias.asname or alias.name
                    if sub := _module_path(f"{node.module}.{alias.name}"):
                        module.modules[name] = sub
                    elif of := _module_path(node.module):
                        module.names[name] = (of, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and (sub := _module_path(alias.name)):
                        module.modules[alias.asname] = sub
    return modules


def _calls(module: Module) -> Iterator[tuple[ast.Call, Scope]]:
    """Every call in a module, with the function it is written in."""

    def walk(node: ast.AST, scope: Scope) -> Iterator[tuple[ast.Call, Scope]]:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = Scope(module, child)
            if isinstance(child, ast.Call):
                yield child, scope
            yield from walk(child, inner)

    yield from walk(module.tree, Scope(module, None))


def _called(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


class _Follower:
    """Follows an expression back to the strings it can be."""

    def __init__(self, modules: dict[str, Module]) -> None:
        self.modules = modules
        self.hints = _hints()
        self.busy: set[int] = set()  # the nodes being followed, by id: a name may loop back

    def values(self, node: ast.expr, scope: Scope) -> set[Value]:
        hint = self.hints.get((scope.module.path, ast.unparse(node)))
        if hint is not None:
            return set(hint())
        key = id(node)
        if key in self.busy:
            return set()
        self.busy.add(key)
        try:
            return self._values(node, scope)
        finally:
            self.busy.discard(key)

    def _values(self, node: ast.expr, scope: Scope) -> set[Value]:
        match node:
            case ast.Constant(value=str() as text):
                return {text}
            case ast.Constant(value=None):
                return set()
            case ast.JoinedStr(values=parts):
                choices = [self._part(part, scope) for part in parts]
                return {"".join(combo) for combo in itertools.product(*choices)}
            case ast.Tuple(elts=items) | ast.List(elts=items):
                return {tuple(frozenset(self.values(item, scope)) for item in items)}
            case ast.IfExp(body=yes, orelse=no):
                return self.values(yes, scope) | self.values(no, scope)
            case ast.BoolOp(op=ast.Or(), values=options):
                return set().union(*(self.values(option, scope) for option in options))
            case ast.Subscript(value=inner, slice=ast.Constant(value=int() as index)):
                return _item(self.values(inner, scope), index)
            case ast.Subscript(value=table):
                return self.contents(table, scope)
            case ast.Call(func=ast.Attribute(value=table, attr="get"), args=[_, *default]):
                found = self.contents(table, scope)
                return found.union(*(self.values(d, scope) for d in default))
            case ast.Name() | ast.Attribute():
                out: set[Value] = set()
                for value, where, index in self.definitions(node, scope):
                    found = self.values(value, where)
                    out |= found if index is None else _item(found, index)
                return out
        raise Unfollowable(scope, node)

    def _part(self, part: ast.expr, scope: Scope) -> set[str]:
        if isinstance(part, ast.Constant):
            return {str(part.value)}
        if isinstance(part, ast.FormattedValue) and part.format_spec is None:
            found = self.values(part.value, scope)
            if all(isinstance(v, str) for v in found):
                return {str(v) for v in found}
        raise Unfollowable(scope, part)

    def contents(self, table: ast.expr, scope: Scope) -> set[Value]:
        """What a lookup in a dict (its values) or a sequence (its items) can give."""
        match table:
            case ast.Dict(values=items) | ast.Tuple(elts=items) | ast.List(elts=items):
                return set().union(*(self.values(item, scope) for item in items))
            case ast.Set(elts=items):
                return set().union(*(self.values(item, scope) for item in items))
            case ast.Name() | ast.Attribute():
                out: set[Value] = set()
                for value, where, _index in self.definitions(table, scope):
                    out |= self.contents(value, where)
                return out
        raise Unfollowable(scope, table)

    def definitions(
        self, node: ast.Name | ast.Attribute, scope: Scope
    ) -> list[tuple[ast.expr, Scope, int | None]]:
        """The expressions a name is assigned, where, and which item of a tuple it takes."""
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in scope.module.modules:
                other = self.modules[scope.module.modules[node.value.id]]
                return self._assigned(other.tree.body, node.attr, Scope(other, None), node)
            raise Unfollowable(scope, node)
        name = node.id
        if scope.function is not None:
            local = self._assigned(scope.function.body, name, scope, None, deep=True)
            if local:
                return local
            if name in _parameters(scope.function):
                return self._arguments(scope.function, name, scope)
        if found := self._assigned(scope.module.tree.body, name, Scope(scope.module, None), None):
            return found
        if name in scope.module.names:
            path, original = scope.module.names[name]
            other = self.modules[path]
            return self._assigned(other.tree.body, original, Scope(other, None), node)
        raise Unfollowable(scope, node)

    def _assigned(
        self,
        body: list[ast.stmt],
        name: str,
        scope: Scope,
        missing: ast.AST | None,
        *,
        deep: bool = False,
    ) -> list[tuple[ast.expr, Scope, int | None]]:
        nodes = itertools.chain.from_iterable(ast.walk(s) for s in body) if deep else iter(body)
        found: list[tuple[ast.expr, Scope, int | None]] = []
        for stmt in nodes:
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            else:
                continue
            for target in targets:
                if isinstance(target, ast.Name) and target.id == name:
                    found.append((value, scope, None))
                elif isinstance(target, ast.Tuple):
                    for index, item in enumerate(target.elts):
                        if isinstance(item, ast.Name) and item.id == name:
                            found.append((value, scope, index))
        if not found and missing is not None:
            raise Unfollowable(scope, missing)
        return found

    def _arguments(
        self, function: ast.FunctionDef | ast.AsyncFunctionDef, name: str, scope: Scope
    ) -> list[tuple[ast.expr, Scope, int | None]]:
        """What every call of the function passes for one of its parameters."""
        params = [*function.args.posonlyargs, *function.args.args]
        position = next((i for i, p in enumerate(params) if p.arg == name), None)
        found: list[tuple[ast.expr, Scope, int | None]] = []
        for module in self.modules.values():
            for call, where in _calls(module):
                if not self._calls_function(call, module, function.name, scope.module.path):
                    continue
                given = [k.value for k in call.keywords if k.arg == name]
                if position is not None and position < len(call.args):
                    given = [call.args[position]]
                if any(isinstance(a, ast.Starred) for a in call.args):
                    raise Unfollowable(where, call)
                found += [(g, where, None) for g in given]
        if not found:
            raise Unfollowable(scope, function)
        return found

    def _calls_function(self, call: ast.Call, module: Module, name: str, home: str) -> bool:
        func = call.func
        if isinstance(func, ast.Name) and func.id == name:
            return module.path == home or module.names.get(name) == (home, name)
        if isinstance(func, ast.Attribute) and func.attr == name:
            return isinstance(func.value, ast.Name) and module.modules.get(func.value.id) == home
        return False


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    a = function.args
    return {p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)}


def _item(values: set[Value], index: int) -> set[Value]:
    return {v for t in values if isinstance(t, tuple) and index < len(t) for v in t[index]}


def extract() -> Extraction:
    """Every msgid of bot/ and handlers/, and the calls whose message could not be followed."""
    messages: dict[Message, list[tuple[str, int]]] = {}
    problems: list[str] = []

    def add(message: Message, path: str, line: int) -> None:
        if message and all(message if isinstance(message, tuple) else (message,)):
            messages.setdefault(message, []).append((path, line))

    for source in SOURCES:  # what pybabel extract sees
        for file, line, message, _c, _ctx in extract_from_dir(ROOT / source, keywords=KEYWORDS):
            path = f"{source}/{Path(file).as_posix()}"
            if path not in SKIP:
                add(message if isinstance(message, str) else tuple(message), path, line)

    modules = _load()
    follower = _Follower(modules)
    for module in modules.values():
        if module.path in SKIP:
            continue
        for call, scope in _calls(module):
            name = _called(call)
            if name not in KEYWORDS or len(call.args) < max(KEYWORDS[name]):
                continue
            if scope.function is not None and scope.function.name in KEYWORDS:
                continue  # a wrapper such as _(lang, message): its own calls say the message
            args = [call.args[i - 1] for i in KEYWORDS[name]]
            try:
                found = [follower.values(a, scope) for a in args]
            except Unfollowable as error:
                problems.append(f"{module.path}:{call.lineno}: cannot follow {error}")
                continue
            if any(not isinstance(v, str) for f in found for v in f):
                problems.append(f"{module.path}:{call.lineno}: a tuple is no message")
                continue
            strings = [{v for v in f if isinstance(v, str)} for f in found]
            if len(strings) == 1:
                for text in strings[0]:
                    add(text, module.path, call.lineno)
            elif strings[0] and strings[1]:  # ngettext: the plural goes with its singular
                add((min(strings[0]), min(strings[1])), module.path, call.lineno)
    return Extraction(messages, problems)


def template(extraction: Extraction) -> Catalog:
    catalog = Catalog(project="qunban", fuzzy=False)
    for message, places in sorted(extraction.messages.items(), key=lambda m: _first(m[0])):
        flags = ["python-brace-format"] if "{" in _first(message) else []
        catalog.add(message, locations=sorted(set(places)), flags=flags)
    return catalog


def _first(message: Message) -> str:
    return message if isinstance(message, str) else message[0]


def missing(extraction: Extraction, catalog: Catalog) -> list[Message]:
    """The msgids without a translation; those written the same in both languages aside."""
    out = []
    for message in extraction.messages:
        if message in SAME:
            continue
        entry = catalog.get(_first(message))
        strings = entry.string if entry else ""
        if not entry or not all(strings if isinstance(strings, tuple) else (strings,)):
            out.append(message)
    return sorted(out, key=_first)


def read_catalog(path: Path = CATALOG) -> Catalog:
    with path.open("rb") as handle:
        return read_po(handle, locale="zh")


def write_catalog(catalog: Catalog, path: Path = CATALOG) -> None:
    buffer = io.BytesIO()
    write_po(buffer, catalog, width=WIDTH)
    placeholders = (b'"Report-Msgid-Bugs-To: EMAIL@ADDRESS\\n"\n',)
    placeholders += (b'"PO-Revision-Date: YEAR-MO-DA HO:MI+ZONE\\n"\n',)
    placeholders += (b'"Last-Translator: FULL NAME <EMAIL@ADDRESS>\\n"\n',)
    text = buffer.getvalue()
    for line in placeholders:  # Babel's defaults for header fields this catalog leaves out
        text = text.replace(line, b"")
    path.write_bytes(text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    extraction = extract()
    for problem in extraction.problems:
        sys.stderr.write(f"{problem}\n")
    if "--pot" in args:
        out = Path(args[args.index("--pot") + 1])
        with out.open("wb") as handle:
            write_po(handle, template(extraction), width=WIDTH)
        sys.stderr.write(f"{len(extraction.messages)} msgids -> {out}\n")
    catalog = read_catalog()
    lacking = missing(extraction, catalog)
    if "--add" in args and lacking:
        for message in lacking:
            if _first(message) not in catalog:
                flags = ["python-brace-format"] if "{" in _first(message) else []
                catalog.add(message, "" if isinstance(message, str) else ("",), flags=flags)
        write_catalog(catalog)
    for message in lacking:
        sys.stdout.write(f"{message if isinstance(message, str) else ' | '.join(message)!r}\n")
    total = len(extraction.messages)
    sys.stderr.write(f"{len(lacking)} of {total} msgids have no Chinese\n")
    return 1 if lacking or extraction.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
