"""The package's import graph, imports inside functions included (they form cycles too, only
later): no module imports a top-level script, and no cycle but the one the model-kind object
of issue 30 removes (the registry's family.py importing the encoders and inference code, which
import the registry). A new cycle, or a longer one, fails here."""
import ast

from conftest import ROOT

PACKAGE = ROOT / "minicpmv_ft"
# issue 30: the registry's families reach into the encoders and inference code
KNOWN_CYCLE = {"batching", "chat_tokens", "encoding", "native_chat", "processor_encoding", "processor_video",
               "remote_chat", "slicing", "versions", "versions.family", "versions.spec"}


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path, name: str, known: set) -> set:
    """The modules of `known` that the file at `path` (module `name`) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rsplit(".", 1)[0] if "." in target else ""
            if target and target != name:
                found.add(target)
    return found


def package_graph() -> dict:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported(path, name, set(paths)) for name, path in paths.items()}


def cycles(graph: dict) -> list[set]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while not component or member != node:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle_but_the_known_one():
    found = [{name.removeprefix("minicpmv_ft.") for name in component} for component in cycles(package_graph())]
    assert found == [KNOWN_CYCLE] or found == []


def test_the_cycle_finder_finds_a_cycle_through_an_import_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert imported(PACKAGE / "versions" / "family.py", "minicpmv_ft.versions.family",
                    set(package_graph())) >= {"minicpmv_ft.encoding"}  # imported inside a method


def test_no_package_module_imports_a_top_level_script():
    scripts = {path.stem for path in ROOT.glob("*.py")}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not names & scripts, f"{path.relative_to(ROOT)} imports {sorted(names & scripts)}"
