"""No code of ours deserializes with pickle or anything that can run code while loading.

Adapters, specs and requests come from users and the network; a pickle-family load of such bytes runs
whatever they say. The scan reads every module with `ast` (imports and aliases resolved, so
`from pickle import loads as l` is caught too) and names each offending call as file:line. Ray's own
transport (cloudpickle between the cluster's processes) is Ray's code, not ours, and is not scanned.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability_fixtures import ReliabilityRun

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("platform", "jobs", "serving", "benchmarks", "migrations")

FORBIDDEN = {
    **{
        f"{m}.{f}": "unpickles"
        for m in ("pickle", "_pickle", "cPickle")
        for f in ("load", "loads", "Unpickler")
    },
    **{f"{m}.{f}": "unpickles" for m in ("dill", "cloudpickle") for f in ("load", "loads", "Unpickler")},
    "marshal.load": "unmarshals code objects",
    "marshal.loads": "unmarshals code objects",
    "shelve.open": "unpickles its values",
    "shelve.Shelf": "unpickles its values",
    "shelve.DbfilenameShelf": "unpickles its values",
    "joblib.load": "unpickles",
    "pandas.read_pickle": "unpickles",
    "yaml.unsafe_load": "constructs arbitrary objects",
    "yaml.unsafe_load_all": "constructs arbitrary objects",
    "yaml.full_load": "constructs arbitrary Python objects",
    "yaml.full_load_all": "constructs arbitrary Python objects",
}
"""Calls refused whatever their arguments."""

SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    call: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call} {self.why}"


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}  # local name -> qualified name ("np" -> "numpy")
        self.findings: list[Finding] = []
        self.seen: set[int] = set()  # ids of references already judged as a call

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                self.aliases.setdefault(alias.name.split(".")[0], alias.name.split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:
            for alias in node.names:
                self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def qualified(self, node: ast.expr) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self.aliases:
            return None
        return ".".join([self.aliases[node.id], *reversed(parts)])

    def report(self, node: ast.AST, call: str, why: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), call, why))

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualified(node.func)
        if name is not None:
            self.seen.add(id(node.func))
            why = _judge_call(name, node)
            if why:
                self.report(node, name, why)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._reference(node)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self._reference(node)

    def _reference(self, node: ast.expr) -> None:
        """`f = pickle.loads` or `torch.load` passed around: a load whose arguments cannot be checked."""
        if id(node) in self.seen or isinstance(getattr(node, "ctx", None), ast.Store):
            return
        name = self.qualified(node)
        if name in FORBIDDEN:
            self.report(node, name, FORBIDDEN[name])
        elif name in ("torch.load", "numpy.load", "yaml.load", "yaml.load_all"):
            self.report(node, name, "is referenced without a call whose safe arguments can be checked")


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _judge_call(name: str, node: ast.Call) -> str | None:
    if name in FORBIDDEN:
        return FORBIDDEN[name]
    if name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
        return "without weights_only=True unpickles"
    if name == "numpy.load":
        allow = _keyword(node, "allow_pickle")
        if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
            return "with allow_pickle unpickles"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
        leaf = loader.attr if isinstance(loader, ast.Attribute) else getattr(loader, "id", None)
        if leaf not in SAFE_YAML_LOADERS:
            return "without a safe Loader constructs arbitrary objects"
    return None


def scan_source(source: str, path: str = "<snippet>") -> list[Finding]:
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.findings


def scan_tree(root: Path, folders: tuple[str, ...] = SCANNED) -> tuple[int, list[Finding]]:
    """(files scanned, findings) for every .py file under `root/<folder>`."""
    files = sorted(p for folder in folders for p in (root / folder).rglob("*.py") if ".venv" not in p.parts)
    findings = []
    for path in files:
        findings += scan_source(path.read_text(), str(path.relative_to(root)))
    return len(files), findings


# ---- the code itself -------------------------------------------------------------------------------


def test_no_unpickling_in_the_code(reliability: ReliabilityRun) -> None:
    count, findings = scan_tree(ROOT)
    assert count > 50  # the folders really were read
    assert findings == [], "unsafe deserialization:\n" + "\n".join(map(str, findings))
    reliability.record(
        "no_unpickling",
        {
            "folders": ", ".join(f"{name}/" for name in SCANNED),
            "python_files_scanned": count,
            "forbidden_calls_checked": len(FORBIDDEN) + 4,
            "findings": len(findings),
        },
    )


# ---- the scanner can fail -------------------------------------------------------------------------

UNSAFE = {
    "pickle.loads": "import pickle\npickle.loads(b)",
    "aliased module": "import pickle as p\np.load(f)",
    "from-import alias": "from pickle import loads as l\nl(b)",
    "cPickle": "import cPickle\ncPickle.loads(b)",
    "Unpickler": "import pickle\npickle.Unpickler(f).load()",
    "dill": "import dill\ndill.loads(b)",
    "cloudpickle": "import cloudpickle\ncloudpickle.load(f)",
    "marshal": "import marshal\nmarshal.loads(b)",
    "shelve": "import shelve\nshelve.open('db')",
    "joblib": "from joblib import load\nload('m.pkl')",
    "torch.load bare": "import torch\ntorch.load('x.pt')",
    "torch.load weights_only=False": "import torch\ntorch.load('x.pt', weights_only=False)",
    "torch.load from-import": "from torch import load\nload('x.pt', map_location='cpu')",
    "numpy allow_pickle": "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
    "numpy allow_pickle variable": "import numpy\nnumpy.load('x.npy', allow_pickle=flag)",
    "yaml.load no Loader": "import yaml\nyaml.load(text)",
    "yaml.load unsafe Loader": "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "yaml.unsafe_load": "import yaml\nyaml.unsafe_load(text)",
    "yaml.full_load": "import yaml\nyaml.full_load(text)",
    "reference passed around": "import pickle\ndecode = pickle.loads\ndecode(b)",
    "inside a function": "def f(b):\n    import pickle\n    return pickle.loads(b)",
}

SAFE = {
    "pickle.dumps": "import pickle\npickle.dumps(x)",
    "torch.load weights_only": "import torch\ntorch.load('x.pt', weights_only=True)",
    "numpy default": "import numpy as np\nnp.load('x.npy')",
    "numpy allow_pickle=False": "import numpy as np\nnp.load('x.npy', allow_pickle=False)",
    "yaml.safe_load": "import yaml\nyaml.safe_load(text)",
    "yaml SafeLoader": "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "yaml CSafeLoader positional": "import yaml\nfrom yaml import CSafeLoader\nyaml.load(text, CSafeLoader)",
    "json": "import json\njson.loads(b)",
    "safetensors": "from safetensors.torch import load\nload(b)",
    "a local named load": "def load(x):\n    return x\nload(1)",
}


@pytest.mark.parametrize("snippet", UNSAFE.values(), ids=list(UNSAFE))
def test_scanner_flags_unsafe_loads(snippet: str) -> None:
    findings = scan_source(snippet, "snippet.py")
    assert findings and all(str(f).startswith("snippet.py:") for f in findings), findings


@pytest.mark.parametrize("snippet", SAFE.values(), ids=list(SAFE))
def test_scanner_lets_safe_loads_pass(snippet: str) -> None:
    assert scan_source(snippet) == []


def test_a_tree_with_an_unsafe_load_fails_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "serving" / "pkg" / "decode.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        textwrap.dedent(
            """\
            import json
            import pickle as wire


            def decode(body: bytes) -> object:
                return wire.loads(body)
            """
        )
    )
    (tmp_path / "serving" / "pkg" / "ok.py").write_text("import json\njson.loads('{}')\n")
    count, findings = scan_tree(tmp_path, ("serving",))
    assert count == 2
    assert [str(f) for f in findings] == ["serving/pkg/decode.py:6: pickle.loads unpickles"]
