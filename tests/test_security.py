"""Security: no pickle in shards or in what training loads, the judge's API key stays in its
environment variable, user code runs only from the import path a config names, and importing any module has
no side effects. docs/reliability.md lists these tests with the ones elsewhere that they build on."""

import ast
import contextlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from omni_grpo import checkpoint as ckpt
from omni_grpo import synthetic
from omni_grpo import train as train_cli
from omni_grpo.config import load_config
from omni_grpo.engine import PlainEngine
from omni_grpo.rewards.manager import resolve_reward
from omni_grpo.trainer import GRPOTrainer
from preprocess.build import BuildOptions, build
from preprocess.media import VideoOptions
from tests.helpers import CLI_RUN, build_shards, run_args

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("omni_grpo", "preprocess")
SOURCES = sorted(p for folder in (*PACKAGES, "bench") for p in (REPO / folder).rglob("*.py")) + [REPO / "setup.py"]
KEY_ENV = "OMNI_GRPO_SECURITY_TEST_KEY"
SECRET = "sk-security-test-5f2b9c-NEVER-WRITE-ME"
LENGTH = "tests.rewards_for_tests:length_reward"


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, node: ast.AST) -> str:
    return f"{path.name}:{node.lineno}" if not path.is_relative_to(REPO) else f"{path.relative_to(REPO)}:{node.lineno}"


def dotted(node: ast.AST) -> str:
    """`torch.load` for the expression torch.load (best effort; '' for anything else)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


# ------------------------------------------------------------------------------------------ no pickle


def test_shards_are_parquet_json_and_plain_arrow_types(tmp_path):
    """Shards hold Parquet (of plain Arrow types: no extension or pandas-object columns), JSON and JSON Lines;
    never a pickle. (tests/test_preprocess_reader.py::test_no_pickle_in_the_format checks the schema metadata.)"""
    synthetic.make_clip(tmp_path / "clip.mp4", seconds=1.0)
    (tmp_path / "qa.jsonl").write_text(
        json.dumps(
            {
                "id": "a",
                "video": "clip.mp4",
                "question": "Why?",
                "answer": "A",
                "options": ["x", "y"],
                "note": {"k": [1, 2]},
            }
        )
        + "\n"
    )
    build(
        BuildOptions(
            source="jsonl",
            manifest=tmp_path / "qa.jsonl",
            output=tmp_path / "out",
            workers=0,
            progress=False,
            video=VideoOptions(min_pixels=3136, max_pixels=50176),
        )
    )
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".parquet", ".json", ".jsonl"}
    for path in files:
        if path.suffix != ".parquet":
            for text in [path.read_text()] if path.suffix == ".json" else path.read_text().splitlines():
                json.loads(text)  # plain JSON
            continue
        parquet = pq.ParquetFile(path)
        assert b"pandas" not in (parquet.schema_arrow.metadata or {})
        assert set(parquet.metadata.metadata or {}) <= {b"ARROW:schema", *(parquet.schema_arrow.metadata or {})}

        def plain(tp: pa.DataType) -> bool:
            if isinstance(tp, pa.ExtensionType):
                return False
            if pa.types.is_list(tp) or pa.types.is_large_list(tp):
                return plain(tp.value_type)
            if pa.types.is_struct(tp):
                return all(plain(tp.field(i).type) for i in range(tp.num_fields))
            return (
                pa.types.is_binary(tp)
                or pa.types.is_large_binary(tp)
                or pa.types.is_string(tp)
                or pa.types.is_large_string(tp)
                or pa.types.is_integer(tp)
                or pa.types.is_floating(tp)
                or pa.types.is_boolean(tp)
                or pa.types.is_null(tp)
            )

        assert all(plain(f.type) for f in parquet.schema_arrow), parquet.schema_arrow


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "pickletools"}


def unsafe_calls(path: Path) -> list[str]:
    """Deserialisation that can run code, and eval/exec, in one source file."""
    found = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            found += [
                f"{where(path, node)} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            loaders = {a.name for a in node.names} & {"load", "unsafe_load", "full_load"}
            if module in PICKLE_MODULES or (module in ("torch", "yaml") and loaders):
                found.append(f"{where(path, node)} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{where(path, node)} torch.load without weights_only=True")
            elif name.endswith(("np.load", "numpy.load")):
                allow = keywords.get("allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append(f"{where(path, node)} {name} with allow_pickle")
            elif name in ("yaml.load", "yaml.load_all"):
                loader = keywords.get("Loader")
                if loader is None or dotted(loader) in ("yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"):
                    found.append(f"{where(path, node)} {name} with an unsafe Loader")
            elif name in ("yaml.unsafe_load", "yaml.full_load", "pd.read_pickle", "pandas.read_pickle", "eval", "exec"):
                found.append(f"{where(path, node)} {name}")
    return found


def test_no_pickle_no_unsafe_torch_load_no_eval_in_the_source():
    findings = [f for path in SOURCES for f in unsafe_calls(path)]
    assert not findings, "\n".join(findings)
    from omni_grpo.config.loading import _yaml_loader

    assert issubclass(_yaml_loader(), yaml.SafeLoader)  # the one yaml.load in the code uses it


def test_the_source_scan_finds_what_it_looks_for(tmp_path):
    """The scanner is not vacuous: each unsafe pattern in a sample file is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, yaml, numpy as np\nfrom torch import load\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('x', allow_pickle=True)\n"
        "yaml.load('x', Loader=yaml.Loader)\nyaml.unsafe_load('x')\neval('1')\n"
        "torch.load('x', weights_only=True)\nyaml.load('x', Loader=yaml.SafeLoader)\n"
    )
    assert len(unsafe_calls(bad)) == 8


class _Payload:
    """Pickles to a call of Path.touch: loading it without weights_only would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_malicious_optimizer_state_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "code_ran"
    (tmp_path / "state").mkdir()
    torch.save({"optimizer": _Payload(marker), "scheduler": {}}, tmp_path / "state" / "optimizer.pt")
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    engine = PlainEngine(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), 1.0)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        engine.load_state(tmp_path / "state")
    assert not marker.exists()
    torch.load(tmp_path / "state" / "optimizer.pt", weights_only=False)  # the payload is real
    assert marker.exists()


# ------------------------------------------------------------------------------- the judge's API key


class _Judge(BaseHTTPRequestHandler):
    """A chat-completions judge on 127.0.0.1. Its first reply is an HTTP 500 whose body echoes the key."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization") or ""
        with self.server.lock:
            self.server.auths.append(auth)
            first = len(self.server.auths) == 1
        if first:
            self._reply(500, json.dumps({"error": f"bad request from {auth}"}).encode())
            return
        n = len(re.findall(r"<reasoning (\d+)>", body["messages"][-1]["content"]))
        self._reply(200, json.dumps({"choices": [{"message": {"content": json.dumps([7] * n)}}]}).encode())

    def _reply(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


GOOD = (
    "<context>The woman smiles at the man and says that the trip went well, number {n}; her voice is warm and "
    "she laughs.</context><think>She leans toward him while she talks, so she trusts him and is glad to see him "
    "again after the long trip.</think><answer>B</answer>"
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("sec_data"), n_clips=2, seconds=1.0)


SEC_RUN = dict(CLI_RUN, save_steps=1)  # the command-line runs here: a checkpoint every step


@pytest.fixture(scope="module")
def judge_run(tiny_model_dir, shards, tmp_path_factory):
    """`python -m omni_grpo.train` (in process) for 2 steps with people_focus scored by the judge, the key in
    KEY_ENV, the rollouts' texts replaced by reasoning that the judge is asked to rate."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    server.auths, server.lock = [], threading.Lock()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path_factory.mktemp("judge_run") / "out"
    args = run_args(
        tiny_model_dir,
        shards,
        out,
        SEC_RUN,
        reward_funcs=f"[people_focus, {LENGTH}]",
        **{
            "judge.enabled": "true",
            "judge.url": f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions",
            "judge.model": "fake-judge",
            "judge.api_key_env": KEY_ENV,
            "judge.timeout_s": 10,
        },
    )
    counter = itertools.count()
    real_rollout = GRPOTrainer.rollout

    def rollout(self, batch, temperature):
        result = real_rollout(self, batch, temperature)
        result.texts = [GOOD.format(n=next(counter)) for _ in result.texts]
        return result

    logs, stdout, stderr = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            mp.setenv(KEY_ENV, SECRET)
            mp.setattr(GRPOTrainer, "rollout", rollout)
            rc = train_cli.main(args)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        server.shutdown()
        server.server_close()
    assert rc == 0, stderr.getvalue()[-3000:]
    return {
        "out": out,
        "auths": server.auths,
        "logs": logs.getvalue(),
        "stdout": stdout.getvalue(),
        "stderr": stderr.getvalue(),
        "args": args,
    }


def test_the_judge_gets_the_key_from_the_named_variable(judge_run):
    assert len(judge_run["auths"]) >= 2
    assert set(judge_run["auths"]) == {f"Bearer {SECRET}"}


def test_the_key_is_in_no_log_output_or_file_of_the_run(judge_run):
    """Not in the log (banner with the full config, the HTTP 500 warning whose body echoed it), stdout, stderr,
    the saved configs, TensorBoard events, trainer state or any other checkpoint file."""
    assert "people_focus judge (model fake-judge) failed: HTTP 500" in judge_run["logs"]
    assert "omni-grpo:" in judge_run["logs"]  # the banner was logged, so the check below sees it
    for name in ("logs", "stdout", "stderr"):
        assert SECRET not in judge_run[name], name
    files = [p for p in judge_run["out"].rglob("*") if p.is_file()]
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    assert {p.name for p in files} >= {"config.yaml", "trainer_state.json"}
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    saved = yaml.safe_load((judge_run["out"] / "config.yaml").read_text())
    assert saved["judge"]["api_key_env"] == KEY_ENV and "api_key" not in saved["judge"]


def test_checkpoints_are_safetensors_json_yaml_and_a_weights_only_optimizer_file(judge_run):
    for folder in ckpt.list_checkpoints(judge_run["out"]):
        files = [p for p in folder.rglob("*") if p.is_file()]
        weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")]
        assert {p.suffix for p in weights} == {".safetensors", ".pt"}, weights
        assert [p.relative_to(folder).as_posix() for p in weights if p.suffix == ".pt"] == ["state/optimizer.pt"]
        torch.load(folder / "state" / "optimizer.pt", weights_only=True)
        assert (folder / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------- user code


CANARY = '''"""Imported only when a config names it: records each import in MARKER."""
from pathlib import Path

with open(Path(__file__).with_name("imports.log"), "a") as f:
    f.write("imported\\n")


def reward(completions, **kwargs):
    return [1.0] * len(completions)
'''


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """A reward module `rel_canary_reward` on sys.path that logs every import of itself."""
    folder = tmp_path / "canary"
    folder.mkdir()
    (folder / "rel_canary_reward.py").write_text(CANARY)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "rel_canary_reward", raising=False)
    yield folder / "imports.log"
    sys.modules.pop("rel_canary_reward", None)


@pytest.mark.parametrize(
    "name",
    [
        "../rel_canary_reward:reward",
        "/tmp/rel_canary_reward.py:reward",
        "canary/rel_canary_reward:reward",
        "rel_canary_reward",
        "rel_canary_reward.reward",
        "rel_canary_reward:reward()",
        "rel_canary_reward: reward",
        "rel_canary_reward:reward; import os",
        "__import__('rel_canary_reward').reward",
        "rel_canary_reward:reward:x",
        "file://rel_canary_reward:reward",
        "rel_canary_reward:os.system",
    ],
)
def test_a_reward_name_that_is_not_a_plain_import_path_imports_nothing(canary, name):
    before = set(sys.modules)
    with pytest.raises(ValueError, match="unknown reward"):
        resolve_reward(name)
    assert set(sys.modules) == before and not canary.exists()


def test_a_user_reward_module_is_imported_only_when_the_config_names_it(canary):
    """Loading a config imports no reward module; checking its reward names (as the commands do) imports the
    named one, once."""
    from omni_grpo.rewards import check_reward_names

    check_reward_names(load_config(None, ["model_name_or_path=m", f"reward_funcs=[format, {LENGTH}]"]).reward_funcs)
    assert not canary.exists() and "rel_canary_reward" not in sys.modules
    cfg = load_config(None, ["model_name_or_path=m", "reward_funcs=[format, rel_canary_reward:reward]"])
    assert not canary.exists() and "rel_canary_reward" not in sys.modules
    check_reward_names(cfg.reward_funcs)
    assert canary.read_text() == "imported\n"
    assert resolve_reward(cfg.reward_funcs[1]) is sys.modules["rel_canary_reward"].reward


def test_resuming_never_runs_code_named_in_a_checkpoint(judge_run, tiny_model_dir, shards, canary, tmp_path):
    """A checkpoint is data: its config.yaml naming a reward module is not read back, so nothing is imported."""
    folder = tmp_path / "step"
    shutil.copytree(ckpt.list_checkpoints(judge_run["out"])[0], folder)
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    saved["reward_funcs"] = ["rel_canary_reward:reward"]
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = load_config(
        None,
        run_args(
            tiny_model_dir,
            shards,
            tmp_path / "out",
            SEC_RUN,
            reward_funcs=f"[format, {LENGTH}]",
            resume_from_checkpoint=folder,
        ),
    )
    trainer = GRPOTrainer(cfg)
    assert trainer.global_step == 1 and trainer.rewards.names == ["format", LENGTH]
    assert not canary.exists() and "rel_canary_reward" not in sys.modules


# ------------------------------------------------------------------------------- import side effects

AUDIT = r"""
import importlib, json, os, sys
import numpy, torch  # third-party import-time work (OpenBLAS env, ldconfig probe) is theirs, not ours

WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
WATCHED = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.fork", "os.posix_spawn", "os.mkdir",
           "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate", "os.putenv", "os.unsetenv",
           "shutil.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.", "ctypes.dlopen")
events, current = [], [None]


def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE)
        if writes:
            events.append([current[0], event, str(path)])
    elif event.startswith(WATCHED):
        events.append([current[0], event, repr(args)[:300]])


sys.addaudithook(hook)
for name in sys.argv[1:]:
    current[0] = name
    importlib.import_module(name)
print(json.dumps(events))
"""


def test_importing_every_module_in_a_clean_environment_has_no_side_effects(tmp_path):
    """`env -i`: every omni_grpo / preprocess module imports; no file is written, no socket or process opened,
    no environment change, nothing printed. (tests/test_foundation.py imports the two packages only.)"""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {"PATH": os.defpath, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", AUDIT, *module_names()], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    assert json.loads(proc.stdout) == []
    assert not list(home.iterdir()) and not list(cwd.iterdir())


def test_module_names_cover_every_source_file():
    names = module_names()
    assert {"omni_grpo.trainer", "omni_grpo.rewards.judge", "preprocess.__main__", "preprocess.shards"} <= set(names)
    assert len(names) == len([p for package in PACKAGES for p in (REPO / package).rglob("*.py")])


class _ImportTimeEnv(ast.NodeVisitor):
    """Reads of the environment in code that runs at import: module and class bodies, decorators, defaults."""

    def __init__(self):
        self.hits: list[ast.AST] = []
        self.aliases = {"os": "os"}

    def visit_Import(self, node):
        for a in node.names:
            if a.name == "os":
                self.aliases[a.asname or "os"] = "os"

    def visit_ImportFrom(self, node):
        if node.module == "os":
            self.hits += [node for a in node.names if a.name in ("environ", "environb", "getenv", "getenvb")]

    def visit_FunctionDef(self, node):  # the body runs when called; decorators and defaults run now
        for item in (*node.decorator_list, node.args):
            self.visit(item)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        self.visit(node.args)

    def visit_If(self, node):
        test = node.test
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
        ):
            return  # runs as a script only
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if (
            isinstance(node.value, ast.Name)
            and self.aliases.get(node.value.id) == "os"
            and node.attr in ("environ", "environb", "getenv", "getenvb")
        ):
            self.hits.append(node)
        self.generic_visit(node)


def env_reads_at_import(tree: ast.Module) -> list[int]:
    visitor = _ImportTimeEnv()
    visitor.visit(tree)
    return [n.lineno for n in visitor.hits]


def test_no_module_reads_the_environment_at_import_time():
    package_sources = [p for p in SOURCES if p.relative_to(REPO).parts[0] in PACKAGES]
    found = [f"{p.relative_to(REPO)}:{line}" for p in package_sources for line in env_reads_at_import(parsed(p))]
    assert not found, found


def test_the_import_time_check_finds_module_level_reads_and_ignores_function_bodies():
    code = (
        "import os\nKEY = os.environ.get('K')\nclass C:\n    home = os.getenv('HOME')\n"
        "def f(x=os.environ['X']):\n    return os.environ['Y']\nif __name__ == '__main__':\n    os.getenv('Z')\n"
    )
    assert env_reads_at_import(ast.parse(code)) == [2, 4, 5]
