"""Security, round three (issue 20, item 1): code runs only from code the user installed or
named. Every ``_target_`` noisybench instantiates must be inside the allow-list of
:mod:`noisybench.safety` (``noisybench.`` and the torch optimizers, plus what the command line
allows), checked on the string before anything is imported or called.

The payloads are the attack's: ``distutils.spawn.spawn`` in a shared run directory's
``result.json`` (``noisybench evaluate`` rebuilt it and ran the command), a ``method._target_``
and a ``hydra.callbacks`` entry in an experiment YAML on a shared search path. A canary package
on ``PYTHONPATH`` writes a file when it is imported: it must never be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CLI, ROOT, error_line, quick_run_dir, snapshot

from noisybench import safety
from noisybench.config import instantiate
from noisybench.errors import UserError

CANARY = """
import pathlib, os
pathlib.Path(os.environ["H20_CANARY"]).write_text("imported")

def touch(path):
    pathlib.Path(path).write_text("called")
"""


def _canary(root: Path) -> tuple[Path, Path]:
    """A package ``h20canary`` under ``root/pkgs`` whose import writes ``root/IMPORTED``."""
    pkg = root / "pkgs" / "h20canary"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(CANARY)
    return root / "pkgs", root / "IMPORTED"


def _conf_targets() -> list[tuple[str, str]]:
    """Every ``_target_`` written in a shipped YAML file (read as text with PyYAML, not through
    noisybench), with its file."""
    found = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_":
                    found.append((where, value))
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text()), str(path.relative_to(ROOT)))
    return found


def test_every_shipped_target_is_allowed() -> None:
    found = _conf_targets()
    assert len(found) >= 45  # 48 on the base commit: methods, models, readers, optimizers, ...
    refused = [(where, target) for where, target in found if not safety.is_allowed(target)]
    assert refused == []
    # torch's optimizers are allowed by exact name, not by the package
    assert {t for _, t in found if t.startswith("torch.")} <= safety.DEFAULT_EXACT


@pytest.mark.parametrize(
    "target",
    [
        "distutils.spawn.spawn",  # runs a command
        "shutil.copyfile",  # copies any readable file
        "os.system",
        "subprocess.run",
        "builtins.eval",
        "torch.hub.load",  # inside torch but not an optimizer: downloads and runs code
        "torch.optim.SGD.__init__.__globals__",  # not a plain name of the allowed one
        "noisybenchx.evil",  # a prefix without the dot is not the package
        "noisybench",  # the package itself is not a callable
        " noisybench.methods.ce.CrossEntropy",  # padding
        "noisybench..methods",
        "",
        None,
        42,
    ],
)
def test_payloads_are_refused(target: object) -> None:
    assert not safety.is_allowed(target)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"method\._target_=.*is not allowed.*allow_targets="):
        safety.check_tree({"method": {"_target_": target}})


def test_nested_and_listed_targets_are_found() -> None:
    tree = {"a": [{"b": {"_target_": "noisybench.x"}}, {"_target_": "os.system"}]}
    assert list(safety.targets(tree)) == [
        ("a.0.b._target_", "noisybench.x"),
        ("a.1._target_", "os.system"),
    ]
    with pytest.raises(UserError, match=r"^a\.1\._target_=os\.system is not allowed"):
        safety.check_tree(tree)


def test_hydra_node_allows_hydra_plugins_and_logging_only() -> None:
    ok = {
        "hydra": {
            "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
            "sweeper": {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.X"},
            "job_logging": {"handlers": {"file": {"class": "logging.FileHandler"}}},
        }
    }
    safety.check_tree(ok)
    bad_callback = {"hydra": {"callbacks": {"x": {"_target_": "distutils.spawn.spawn"}}}}
    with pytest.raises(UserError, match=r"hydra\.callbacks\.x\._target_=distutils"):
        safety.check_tree(bad_callback)
    bad_handler = {"hydra": {"job_logging": {"handlers": {"h": {"()": "os.system"}}}}}
    with pytest.raises(UserError, match=r"hydra\.job_logging\.handlers\.h\.\(\)=os\.system"):
        safety.check_tree(bad_handler)
    # hydra_plugins is Hydra's namespace: allowed in the hydra node, not in the job's groups
    with pytest.raises(UserError):
        safety.check_tree({"method": {"_target_": "hydra_plugins.x.Y"}})


def test_instantiate_refuses_before_importing(tmp_path: Path, monkeypatch) -> None:
    pkgs, marker = _canary(tmp_path)
    monkeypatch.syspath_prepend(str(pkgs))
    monkeypatch.setenv("H20_CANARY", str(marker))
    monkeypatch.delenv(safety.ENV_VAR, raising=False)
    out = tmp_path / "called"
    node = {"_target_": "h20canary.touch", "path": str(out)}
    with pytest.raises(UserError, match=r"dataset\._target_=h20canary\.touch is not allowed"):
        instantiate(node, "dataset digits")
    nested = {"_target_": "noisybench.schedules.cosine", "x": {"_target_": "h20canary.touch"}}
    with pytest.raises(UserError, match=r"h20canary\.touch is not allowed"):
        instantiate(nested, "optim scheduler")
    assert not marker.exists() and not out.exists() and "h20canary" not in sys.modules
    # allowed through the environment: then it is imported and called
    monkeypatch.setenv(safety.ENV_VAR, "h20canary.")
    instantiate(node, "dataset digits")
    assert out.read_text() == "called" and marker.exists()
    sys.modules.pop("h20canary", None)


def test_command_line_entries() -> None:
    try:
        rest = safety.take_command_line(
            ["method=x", "allow_targets=[a.,b.c]", "--allow-target", "d.", "--allow-target=e.f"]
        )
        assert rest == ["method=x"]
        prefixes, exact = safety.allowed()
        assert {"a.", "d."} <= set(prefixes) and {"b.c", "e.f"} <= exact
        assert safety.is_allowed("a.anything") and safety.is_allowed("b.c")
        assert not safety.is_allowed("b.cd") and not safety.is_allowed("e.f.g")
        with pytest.raises(UserError, match="not a dotted Python name"):
            safety.take_command_line(["allow_targets=[os system]"])
    finally:
        safety.reset()
        os.environ.pop(safety.ENV_VAR, None)


# ------------------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def finished(cli: CLI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("targets")
    proc = cli(f"out_dir={out / 'runs'}", "epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return quick_run_dir(out / "runs", "epochs=1")


@pytest.mark.cli
def test_evaluate_does_not_run_a_shared_run_directory(
    cli: CLI, finished: Path, tmp_path: Path
) -> None:
    """Issue 20 item 1: the spawn in ``config.dataset.reader`` ran ``touch``."""
    shared = tmp_path / "shared"
    shutil.copytree(finished, shared)
    result = json.loads((shared / "result.json").read_text())
    touched = tmp_path / "M"
    result["config"]["dataset"]["reader"] = {
        "_target_": "distutils.spawn.spawn",
        "cmd": ["touch", str(touched)],
    }
    (shared / "result.json").write_text(json.dumps(result))
    before = snapshot(shared)
    proc = cli("evaluate", str(shared), "eval=[calibration]", base=())
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "dataset.reader._target_=distutils.spawn.spawn is not allowed" in line, line
    assert "--allow-target distutils." in line
    assert not touched.exists()
    assert snapshot(shared) == before  # no evaluation.json


@pytest.mark.cli
def test_shared_experiment_yaml_cannot_run_code(cli: CLI, tmp_path: Path) -> None:
    """Issue 20 item 1: ``method._target_`` (and ``hydra.callbacks``) in an experiment YAML on
    the search path; a ``allow_targets`` written in the file itself does not count."""
    pkgs, marker = _canary(tmp_path)
    conf = tmp_path / "conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "evil.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - /experiment/quickstart\n"
        "allow_targets: [h20canary.]\n"
        "method:\n  _target_: h20canary.touch\n"
    )
    (conf / "evilcb.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - /experiment/quickstart\n"
        "hydra:\n  callbacks:\n    x:\n      _target_: h20canary.touch\n"
    )
    out = tmp_path / "runs"
    env = {"H20_CANARY": str(marker)}
    for name, key in (("evil", "method._target_"), ("evilcb", "hydra.callbacks.x._target_")):
        proc = cli(
            f"experiment={name}",
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
            f"out_dir={out}",
            "epochs=1",
            base=("progress=false", "logger=[]"),
            env=env,
            pythonpath=[pkgs],
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = error_line(proc.stderr)
        assert f"{key}=h20canary.touch is not allowed" in line, line
        assert not marker.exists()
        assert not out.exists()  # nothing written before the check


@pytest.mark.cli
def test_plugin_needs_and_gets_an_explicit_allowance(cli: CLI, tmp_path: Path) -> None:
    """The plug-in of examples/plugin: refused by default, trained with allow_targets=."""
    plugin = ROOT / "examples" / "plugin"
    out = tmp_path / "runs"
    common = (
        "method=bootstrap",
        f"hydra.searchpath=[file://{plugin / 'conf'}]",
        f"out_dir={out}",
        "epochs=1",
    )
    proc = cli(*common, pythonpath=[plugin])
    assert proc.returncode == 2
    line = error_line(proc.stderr)
    assert "method._target_=my_methods.bootstrap.SoftBootstrapping is not allowed" in line
    assert "allow_targets=[my_methods.]" in line
    assert not out.exists()
    proc = cli(*common, "allow_targets=[my_methods.]", pythonpath=[plugin])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = quick_run_dir(out, "epochs=1", method="bootstrap")
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished"
    assert "allow_targets" not in result["config"]  # a command-line allowance, not a key


def test_subprocess_evaluate_env_allowance_is_read() -> None:
    """NOISYBENCH_ALLOW_TARGETS is read when checking (no import of the package named)."""
    code = (
        "import os; os.environ['NOISYBENCH_ALLOW_TARGETS']='zz_missing_pkg.';"
        "from noisybench import safety; import sys;"
        "assert safety.is_allowed('zz_missing_pkg.f'); assert 'zz_missing_pkg' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
