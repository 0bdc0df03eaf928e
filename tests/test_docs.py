"""The documentation stays true: the site builds in strict mode, the README's module map lists
exactly the modules that exist, its links resolve, and every command example of the README and
of ``docs/`` parses and composes into a valid config (nothing is trained).

An example that does not run is worse than none: a newcomer copies it first. The examples are
found in fenced code blocks, indented code blocks and inline code spans; one that is a schema
rather than a command (``noisybench report RUNS...``) names a placeholder in capitals.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from noisybench.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
_COMMAND = re.compile(r"(?:^|[\s;&|(])(?:python3? -m noisybench|noisybench)(?=\s|$)")
# A schematic example names a placeholder: RUN_DIR, RUNS, NAME, DIR, "...", /path/to/ or <name>.
_PLACEHOLDER = re.compile(
    r"(?:^|[\s=/\[])(?:[A-Z][A-Z_]{2,}|\.\.\.)(?:\.\.\.)?(?=[\s\]/,]|$)|/path/to/|<[a-z_]+>"
)
# check_config's refusals that depend on the machine, not on the example
_ENVIRONMENT = re.compile(
    r"does not exist|is not available|not found|is not a file|is not a folder|no GPU"
)
# Hydra flags that take no override and how many values each takes.
_FLAGS = {"-m": 0, "--multirun": 0, "--resolve": 0, "--help": 0, "-h": 0, "--hydra-help": 0}
_FLAGS |= {"--info": 0, "--cfg": 1, "-c": 1, "-p": 1, "--package": 1, "-sc": 1}
_FLAGS |= {"--shell-completion": 1}


def code_snippets(text: str) -> list[str]:
    """Lines of fenced and indented code blocks (continuations joined) and inline code spans."""
    out: list[str] = []
    lines = text.splitlines()
    fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fence = not fence
            i += 1
            continue
        if fence or (line.startswith("    ") and not line.lstrip().startswith(("-", "|"))):
            text_line = line.strip()
            while text_line.endswith("\\") and i + 1 < len(lines):
                i += 1
                text_line = text_line[:-1] + " " + lines[i].strip()
            out.append(text_line)
        else:
            out.extend(re.findall(r"`([^`]+)`", line))
        i += 1
    return out


def command_examples() -> list[tuple[str, str]]:
    """(file, command from ``noisybench`` on) for every example in the README and docs."""
    found = []
    for path in DOC_FILES:
        for snippet in code_snippets(path.read_text(encoding="utf-8")):
            if snippet.startswith("#"):
                continue
            match = _COMMAND.search(snippet)
            if match is None:
                continue
            command = snippet[match.start() :].lstrip(" ;&|(").split(" # ")[0].strip()
            command = command.split("  #")[0].strip()
            if snippet[: match.start() + 1].rstrip().endswith("$("):  # "$(noisybench ...)"
                command = command.rsplit(")", 1)[0]
            found.append((str(path.relative_to(ROOT)), command))
    return found


def _first_of_sweep(override: str) -> str:
    """``k=a,b`` -> ``k=a`` (a sweep composes like its first job); lists stay whole."""
    key, eq, value = override.partition("=")
    if value.startswith(("interval(", "choice(")):  # an Optuna search space: its first value
        return f"{key}={value.partition('(')[2].split(',')[0].rstrip(')')}"
    if not eq or value.startswith(("[", "{")) or "(" in value:
        return override
    depth, first = 0, ""
    for ch in value:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            break
        first += ch
    return f"{key}={first}"


def split_command(command: str) -> tuple[str | None, list[str]]:
    """(subcommand or None, arguments after the program name)."""
    tokens = shlex.split(command.replace("$PWD", str(ROOT)))
    start = next(i for i, tok in enumerate(tokens) if tok == "noisybench") + 1
    args = tokens[start:]
    if args and args[0] in ("report", "evaluate", "suite"):
        return args[0], args[1:]
    return None, args


def overrides_of(args: list[str]) -> list[str]:
    out, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
            continue
        if arg in _FLAGS:
            skip = _FLAGS[arg]
            continue
        assert not arg.startswith("-"), f"unknown flag {arg}"
        out.append(_first_of_sweep(arg))
    return out


EXAMPLES = command_examples()


def test_examples_are_found() -> None:
    # the quickstart, a sweep, a plug-in, a report: the finder sees every kind of example
    commands = [c for _, c in EXAMPLES]
    assert "python -m noisybench -m experiment=quickstart method=ce,bsd" in commands
    assert any("hydra.searchpath" in c for c in commands)
    assert any(c.startswith("noisybench report") for c in commands)
    assert len(EXAMPLES) >= 40


def test_first_of_sweep() -> None:
    assert _first_of_sweep("method=ce,bsd") == "method=ce"
    assert _first_of_sweep("eval=[calibration,ood]") == "eval=[calibration,ood]"
    assert _first_of_sweep("seed=range(3)") == "seed=range(3)"
    assert _first_of_sweep("hydra.searchpath=[file:///a,file:///b]").endswith("file:///b]")


def _check_subcommand(where: str, sub: str, args: list[str]) -> None:
    """``noisybench report|evaluate|suite ...``: parsed (report) or its names checked."""
    if not args:
        return  # the subcommand named in prose ("`noisybench report`")
    if sub == "report":
        from noisybench import report

        roots = [a for a in args if not a.startswith("-")]
        report._parse(args if roots else ["runs", *args])  # argparse exits on an unknown option
    elif sub == "suite":
        name = next(a for a in args if not a.startswith("-"))
        if not name.endswith(".yaml"):  # a suite file of the user's own
            assert (ROOT / "conf" / "suite" / f"{name}.yaml").is_file(), (where, name)
    else:
        for arg in args:
            if arg.startswith("eval="):
                for suite in arg.partition("=")[2].strip("[]").split(","):
                    assert (ROOT / "conf" / "eval" / f"{suite}.yaml").is_file(), (where, suite)


@pytest.mark.parametrize(("where", "command"), EXAMPLES, ids=[c for _, c in EXAMPLES])
def test_command_example_composes(where: str, command: str) -> None:
    from omegaconf import OmegaConf

    from noisybench import config, safety

    if _PLACEHOLDER.search(command.split("noisybench", 1)[1]):
        pytest.skip("a schema with placeholders, not a command")
    sub, args = split_command(command)
    if sub is not None:
        _check_subcommand(where, sub, args)
        return
    # allow_targets= is the command line's, never the config's (noisybench.safety)
    allowance = [a for a in args if a.startswith("allow_targets=")]
    overrides = overrides_of([a for a in args if a not in allowance])
    launchers = [o for o in overrides if o.startswith("hydra/launcher=")]
    for launcher in launchers:
        name = launcher.partition("=")[2]
        ours = (ROOT / "conf" / "hydra" / "launcher" / f"{name}.yaml").is_file()
        assert ours or name in ("joblib", "submitit_local", "submitit_slurm"), (where, name)
    overrides = [
        o for o in overrides if not o.startswith(("hydra/", "hydra.launcher.", "hydra.sweeper."))
    ]
    config.validate_choices(overrides)
    dirs = config.search_dirs(overrides)
    cfg = config.compose(overrides, search_dirs=dirs[1:])
    if "${hydra:" in command:
        return  # resolves inside a Hydra job only
    safety.allow(e for a in allowance for e in safety.parse_entries(a[14:], "allow_targets"))
    try:
        config.resolved(cfg)
        config.check_config(cfg)
    except UserError as exc:  # a file or device of the example's machine is not this one's
        if not _ENVIRONMENT.search(str(exc)):
            raise
    finally:
        safety.reset()
    assert OmegaConf.select(cfg, "method.name")


# ------------------------------------------------------------------------------ module map
def _module_map_names() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Development", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([^`]+)`", first_cell))
    return names


def _existing_modules() -> set[str]:
    pkg = ROOT / "noisybench"
    files = {p.name for p in pkg.glob("*.py") if not p.name.startswith("__")}
    dirs = {f"{p.name}/" for p in pkg.iterdir() if (p / "__init__.py").is_file()}
    return files | dirs


def test_readme_module_map_is_complete() -> None:
    listed, existing = _module_map_names(), _existing_modules()
    missing, stale = sorted(existing - listed), sorted(listed - existing)
    assert not missing, f"README's module map lacks {missing}: add a row for each"
    assert not stale, f"README's module map lists {stale}, which do not exist: remove them"


def test_module_map_check_sees_the_modules() -> None:
    # the check would pass vacuously if it found nothing on either side
    assert {"engine.py", "distributed.py", "data/", "methods/"} <= _existing_modules()
    assert {"engine.py", "distributed.py", "data/", "methods/"} <= _module_map_names()


def test_readme_is_one_page_and_keeps_the_ci_command() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120
    block = text.split("<!-- test-command -->", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    assert block.strip().split("&&")[-1].split()[0] == "pytest"
    dev = text.split("## Development", 1)[1].split("\n## ", 1)[0]
    assert len(dev.splitlines()) <= 40  # one screen


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local
    for target in local:
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


# ------------------------------------------------------------------------------ the site
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    mkdocs = shutil.which("mkdocs")
    cmd = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    proc = subprocess.run(
        [*cmd, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = tmp_path / "site"
    # the API pages were generated from the docstrings, not left empty
    assert "Box-Cox" in (site / "methods" / "gce" / "index.html").read_text(encoding="utf-8")
    assert "training_step" in (site / "api" / "index.html").read_text(encoding="utf-8")
