"""User-supplied names stay inside their directory; no code runs when data is loaded."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tensordict import TensorDict

from tests.reliability._worker import rollout
from trlrec.errors import SchemaError, TrlrecError, UnsafeNameError
from trlrec.naming import safe_join, safe_name
from trlrec.storage.reader import TrajectoryReader
from trlrec.storage.writer import TrajectoryWriter

HOSTILE = ["..", ".", "../../escape", "/etc/passwd", "a/../../b", "a\x00b", "", "..\\..\\x",
           "\x00", "~/x", "a/b/c", ".." + "/" * 3]  # fmt: skip


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE)
def test_names_never_leave_their_directory(tmp_path, name):
    base = tmp_path / "d"
    base.mkdir()
    try:
        out = safe_name(name)
    except UnsafeNameError:
        return
    assert "/" not in out
    assert "\x00" not in out
    assert out not in (".", "..")
    assert safe_join(base, name, ".mp4").parent == base


@pytest.mark.parametrize("name", HOSTILE)
def test_shard_names_stay_in_the_store(tmp_path, name):
    outside_before = _files(tmp_path)
    store = tmp_path / "store"
    roll = rollout(0, 6)
    try:
        with TrajectoryWriter(store, shard=name) as w:
            for t in range(6):
                w.append(roll[t])
    except TrlrecError:
        pass
    created = _files(tmp_path) - outside_before
    assert all(store in p.parents or p == store for p in created), sorted(created)
    shards = store / "shards"
    if shards.exists():
        assert all(p.parent == shards for p in shards.iterdir())
        assert TrajectoryReader(store).num_steps in (0, 6)


@pytest.mark.parametrize("key", ["..", ".", "a/b", "/abs", "nul\x00", "a\\b"])
def test_hostile_keys_are_refused(tmp_path, key):
    step = TensorDict(
        {"observation": [0.0], "next": {"observation": [1.0], key: [1.0]}}, batch_size=[]
    )
    with pytest.raises(SchemaError, match="key"), TrajectoryWriter(tmp_path / "s") as w:
        w.append(step)
    assert not list(tmp_path.glob("**/escape*"))


# ---------------------------------------------------------------------- source scan

ROOT = Path(__file__).resolve().parents[2] / "trlrec"
BANNED_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
BANNED_CALLS = {"eval", "exec", "compile", "__import__"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT.parent)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            mod = getattr(node, "module", None) or ""
            for n in [mod, *names]:
                if n.split(".")[0] in BANNED_MODULES:
                    out.append(f"{where}: imports {n}")
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in BANNED_CALLS:
            out.append(f"{where}: calls {fn.id}()")
        if isinstance(fn, ast.Attribute):
            owner = ast.unparse(fn.value)
            if fn.attr == "load" and owner in ("torch", "np", "numpy"):
                kw = {k.arg: k.value for k in node.keywords}
                safe = (
                    owner == "torch"
                    and isinstance(kw.get("weights_only"), ast.Constant)
                    and kw["weights_only"].value is True
                ) or (owner != "torch" and "allow_pickle" not in kw)
                if not safe:
                    out.append(f"{where}: {owner}.load without weights_only=True / with pickle")
            elif fn.attr in ("load_memmap", "load_state_dict"):
                out.append(f"{where}: {owner}.{fn.attr}() trusts tensordict's meta.json")
            elif fn.attr == "from_filename" and not {"dtype", "shape"} <= {
                k.arg for k in node.keywords
            }:  # with both given explicitly, nothing is taken from the files' metadata
                out.append(f"{where}: {owner}.from_filename() without explicit dtype and shape")
            elif fn.attr in ("load", "loads") and owner in BANNED_MODULES | {"yaml"}:
                out.append(f"{where}: {owner}.{fn.attr}()")
            elif fn.attr in ("load", "loads") and owner in ("TensorDict", "tensordict"):
                out.append(f"{where}: {owner}.{fn.attr}() trusts tensordict's metadata")
    return out


def test_source_scan_finds_the_patterns_it_bans(tmp_path):
    """The scanner itself works: each banned pattern in a sample file is reported."""
    global ROOT
    sample = tmp_path / "trlrec" / "bad.py"
    sample.parent.mkdir()
    sample.write_text(
        "import pickle\nfrom dill import loads\nimport torch, numpy as np, yaml\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f, allow_pickle=True)\n"
        "eval('1')\nexec('x')\nTensorDict.load_memmap(p)\nMemoryMappedTensor.from_filename(p)\n"
        "yaml.load(s)\ntorch.load(f, weights_only=True)\n"
        "MemoryMappedTensor.from_filename(p, dtype=torch.uint8, shape=(3,))\n"
    )
    old, ROOT = ROOT, sample.parent
    try:
        found = _violations(sample)
    finally:
        ROOT = old
    assert len(found) == 10, found


def test_no_code_execution_on_load_in_trlrec_source():
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 10
    problems = [v for f in files for v in _violations(f)]
    assert not problems, "\n".join(problems)
