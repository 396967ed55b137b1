"""The Dataflow containers and Flex Templates (docs/CONTAINERS.md) against the CLI they wrap.

Nothing here builds or pulls an image (no Docker daemon is needed): the Dockerfiles are read
as text, the templates' parameters are parsed by the drivers' own parsers, and the SDK
image's Python layer is built by running the Dockerfile's own ``pip install`` step in a fresh
venv that sees this environment's packages (so nothing is downloaded).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import pathlib
import re
import shlex
import shutil
import site
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from beam_rnn.cli.flags import parse_known_flags
from pipelines import preprocess, score

ROOT = pathlib.Path(__file__).resolve().parents[1]
SDK_DOCKERFILE = ROOT / "Dockerfile"
LAUNCHER_DOCKERFILE = ROOT / "templates" / "Dockerfile"
DOCS = ROOT / "docs" / "CONTAINERS.md"
DRIVERS = {"preprocess": preprocess, "score": score}
# Optional on the command line, required in the template (why: docs/CONTAINERS.md).
STRICTER_IN_TEMPLATE = {"input"}
# What the Flex Template launcher adds to the driver's command line (Beam's own options).
LAUNCHER_FLAGS = ["--runner=DataflowRunner", "--project=p", "--region=us-central1", "--job_name=j",
                  "--temp_location=gs://b/tmp", "--staging_location=gs://b/staging",
                  "--template_location=gs://b/launch/job.json",
                  "--sdk_container_image=us-central1-docker.pkg.dev/p/r/beam-rnn:1"]
tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml (the images run 3.11)")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- Dockerfiles, read as text ---------------------------------------------------------------

def instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def arg_defaults(path: pathlib.Path) -> dict[str, str]:
    return dict(a.split("=", 1) for kw, a in instructions(path) if kw == "ARG" and "=" in a)


def substitute(text: str, values: dict[str, str]) -> str:
    def value(m: re.Match) -> str:
        assert m.group(1) in values, f"${{{m.group(1)}}} has no value"
        return values[m.group(1)]
    return re.sub(r"\$\{(\w+)\}", value, text)


def one(path: pathlib.Path, keyword: str, where=lambda args: True) -> str:
    found = [a for kw, a in instructions(path) if kw == keyword and where(a)]
    assert len(found) == 1, f"{path.name}: expected one {keyword} like that, found {found}"
    return found[0]


def sdk_image_tag() -> tuple[str, str]:
    """(repository, tag) of the SDK Dockerfile's base image, ARGs resolved."""
    image = substitute(one(SDK_DOCKERFILE, "FROM"), arg_defaults(SDK_DOCKERFILE))
    repository, _, tag = image.partition(":")
    return repository, tag


def pip_install_step() -> list[str]:
    """The SDK Dockerfile's ``RUN pip install ...``, ARGs resolved, as an argv."""
    run = one(SDK_DOCKERFILE, "RUN", lambda a: a.startswith("pip install"))
    argv = shlex.split(substitute(run, arg_defaults(SDK_DOCKERFILE)))
    assert "&&" not in argv and ";" not in run, "keep the install step one pip command (the test runs it as is)"
    return argv


def workdir() -> str:
    return one(SDK_DOCKERFILE, "WORKDIR").rstrip("/")


def copies() -> list[tuple[list[str], str]]:
    """([sources], destination) of the SDK Dockerfile's COPY instructions (no --from)."""
    out = []
    for kw, args in instructions(SDK_DOCKERFILE):
        if kw == "COPY":
            *sources, dest = shlex.split(args)
            assert not any(s.startswith("--") for s in sources), args
            out.append((sources, dest))
    return out


def dockerignored(relpath: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = pathlib.PurePosixPath(relpath).parts
    return any(fnmatch.fnmatch("/".join(parts[:i]), p.rstrip("/")) for p in patterns for i in range(1, len(parts) + 1))


# --- templates --------------------------------------------------------------------------------

def metadata(name: str) -> dict:
    return json.loads((ROOT / "templates" / name / "metadata.json").read_text())


def flag_action(parser, parameter: str):
    """The parser's action for a template parameter (`text_column` is `--text-column`)."""
    flag = "--" + parameter.replace("_", "-")
    actions = [a for a in parser._actions if flag in a.option_strings]
    assert actions, f"template parameter {parameter!r}: the driver has no flag {flag}"
    return actions[0]


def sample(action) -> str:
    """A value of the flag's own kind: a choice, its default, true for a switch, or a number or a gs:// path."""
    if action.nargs == 0:
        return "true"
    if action.choices:
        return str(action.choices[0])
    if action.default is not None and not isinstance(action.default, (bool, list, tuple)):
        return str(action.default)
    return {int: "100", float: "0.5"}.get(action.type, "gs://bucket/beam_rnn/sample")


def parsed_value(action, text: str):
    if action.nargs == 0:  # a switch given "true": the switch, as if given alone
        return action.const if action.const is not None else True
    value = action.type(text) if action.type else text
    return [value] if action.nargs == "+" else value


def flags_of(parser) -> set[str]:
    return {a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}


def docs_table(kind: str, name: str) -> list[list[str]]:
    """Rows (cells, backticks removed) of the table between <!-- kind: name --> and <!-- /kind -->."""
    text = DOCS.read_text()
    m = re.search(rf"<!-- {kind}: {name} -->\n(.*?)<!-- /{kind} -->", text, re.DOTALL)
    assert m, f"docs/CONTAINERS.md has no <!-- {kind}: {name} --> table"
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in m.group(1).splitlines() if line.startswith("|")]
    return rows[2:]  # after the header and the rule


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_every_template_parameter_is_a_driver_flag_and_parses_as_the_launcher_passes_it(name):
    """--name=value for every parameter, plus the launcher's Beam flags, through the driver's own parsing."""
    parser = DRIVERS[name].build_parser()
    parameters = metadata(name)["parameters"]
    assert parameters and len({p["name"] for p in parameters}) == len(parameters)
    argv, expected = [], {}
    for p in parameters:
        action = flag_action(parser, p["name"])
        argv.append(f"--{p['name']}={sample(action)}")
        expected[action.dest] = parsed_value(action, sample(action))
    known, rest = parse_known_flags(parser, argv + LAUNCHER_FLAGS)
    assert rest == LAUNCHER_FLAGS  # each parameter was taken by the driver's parser, not left to Beam
    assert {dest: getattr(known, dest) for dest in expected} == expected


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_required_flags_are_required_parameters_and_optionality_matches(name):
    parser = DRIVERS[name].build_parser()
    parameters = {p["name"]: p for p in metadata(name)["parameters"]}
    required = {a.option_strings[0][2:].replace("-", "_") for a in parser._actions if a.required}
    assert required and required <= set(parameters)
    for pname, p in parameters.items():
        cli_optional = not flag_action(parser, pname).required
        assert p["isOptional"] is (cli_optional and pname not in STRICTER_IN_TEMPLATE), pname


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_labels_and_help_texts(name):
    """Labels are set; help texts are the flags' own --help text (one definition), except where stricter."""
    spec = metadata(name)
    assert spec["name"].strip() and spec["description"].strip()
    parser = DRIVERS[name].build_parser()
    for p in spec["parameters"]:
        assert p["label"].strip() and p["helpText"].strip(), p["name"]
        if p["name"] not in STRICTER_IN_TEMPLATE:
            assert p["helpText"] == flag_action(parser, p["name"]).help.replace("%%", "%"), p["name"]


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_regexes_compile_accept_the_flags_values_and_spell_out_the_choices(name):
    parser = DRIVERS[name].build_parser()
    for p in metadata(name)["parameters"]:
        action = flag_action(parser, p["name"])
        regexes = [re.compile(r) for r in p.get("regexes", [])]
        if action.choices:
            assert [r.pattern for r in regexes] == ["^(" + "|".join(action.choices) + ")$"], p["name"]
        for r in regexes:
            assert r.fullmatch(sample(action)), (p["name"], r.pattern)
            assert not r.fullmatch(""), (p["name"], r.pattern)
            if r.pattern.startswith("^gs://"):
                assert not r.fullmatch("runs/out"), "a local path means the launcher VM's disk"


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_docs_list_every_parameter_and_every_flag_left_out(name):
    parser = DRIVERS[name].build_parser()
    parameters = {p["name"]: p for p in metadata(name)["parameters"]}
    table = docs_table("template-parameters", name)
    assert {row[0]: row[1] == "yes" for row in table} == {n: not p["isOptional"] for n, p in parameters.items()}
    left_out = {row[0] for row in docs_table("not-exposed", name)}
    exposed = {"--" + n.replace("_", "-") for n in parameters}
    assert left_out == flags_of(parser) - exposed


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_every_switch_takes_true_or_false_as_the_launcher_passes_it(name, capsys):
    parser = DRIVERS[name].build_parser()
    required = [f"{a.option_strings[0]}=gs://b/x" for a in parser._actions if a.required]
    switches = [a for a in parser._actions if a.nargs == 0 and a.option_strings[0] != "-h"]
    assert {"--unlabelled", "--verbose"} <= {a.option_strings[0] for a in switches}
    for action in switches:
        flag = "--" + action.option_strings[0][2:].replace("-", "_")  # as a template parameter
        off, _ = parse_known_flags(parser, required)
        alone, _ = parse_known_flags(parser, [action.option_strings[0], *required])
        assert getattr(alone, action.dest) != getattr(off, action.dest), flag
        for value, like in (("true", alone), ("TRUE", alone), ("yes", alone), ("false", off), ("0", off)):
            known, rest = parse_known_flags(parser, [f"{flag}={value}", *required])
            assert rest == [] and getattr(known, action.dest) == getattr(like, action.dest), (flag, value)
        with pytest.raises(SystemExit):
            parse_known_flags(parser, [f"{flag}=maybe", *required])
        assert "expected true or false, got 'maybe'" in capsys.readouterr().err


def test_sdk_image_is_the_installed_beam_release_on_a_python_pyproject_admits():
    repository, tag = sdk_image_tag()
    m = re.fullmatch(r"apache/beam_python3\.(\d+)_sdk", repository)
    assert m, repository
    assert tag == importlib.metadata.version("apache-beam")
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(f"3.{m.group(1)}")
    beam = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "apache-beam"]
    assert beam and beam[0].specifier.contains(tag)
    pinned = [Requirement(a) for a in pip_install_step()[2:] if a.startswith("apache-beam")]
    assert [str(r.specifier) for r in pinned] == [f"=={tag}"]  # the image's Beam is not replaced
    assert json.loads(one(SDK_DOCKERFILE, "ENTRYPOINT")) == ["/opt/apache/beam/boot"]


def test_sdk_image_installs_the_project_from_the_copied_tree():
    argv = pip_install_step()
    assert argv[:2] == ["pip", "install"] and "." in argv[2:]  # the WORKDIR, where the tree was copied
    assert workdir().startswith("/")
    copied = set()
    for sources, dest in copies():
        assert dest in ("./", ".") or dest.rstrip("/") == sources[0].rstrip("/"), "copy into WORKDIR as is"
        for source in sources:
            assert (ROOT / source).exists() and not dockerignored(source.rstrip("/")), source
            copied.add(source.rstrip("/"))
    packages = {p.rstrip("*").rstrip(".") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", "setup.py", PYPROJECT["project"]["readme"], *packages} <= copied


def test_launcher_image_runs_a_driver_of_the_sdk_image():
    launcher_base = arg_defaults(LAUNCHER_DOCKERFILE)["LAUNCHER_BASE"]
    sdk_python = re.search(r"python3\.(\d+)", sdk_image_tag()[0]).group(1)
    assert launcher_base.endswith(f"/python3{sdk_python}-template-launcher-base")
    froms = [a for kw, a in instructions(LAUNCHER_DOCKERFILE) if kw == "FROM"]
    assert froms[-1] == "${SDK_IMAGE}"  # the launcher builds the job with the workers' packages
    assert json.loads(one(LAUNCHER_DOCKERFILE, "ENTRYPOINT")) == ["/opt/google/dataflow/python_template_launcher"]
    envs = [a for kw, a in instructions(LAUNCHER_DOCKERFILE) if kw == "ENV"]
    assert not [e for e in envs if "REQUIREMENTS_FILE" in e or "SETUP_FILE" in e], "nothing is installed at launch"
    for name in DRIVERS:
        assert launcher_py_file(name).is_file()


def launcher_py_file(name: str) -> pathlib.Path:
    """FLEX_TEMPLATE_PYTHON_PY_FILE of template `name`, as a path of this tree (via the SDK image's WORKDIR)."""
    env = one(LAUNCHER_DOCKERFILE, "ENV", lambda a: a.startswith("FLEX_TEMPLATE_PYTHON_PY_FILE="))
    image_path = substitute(env.split("=", 1)[1], {"PIPELINE": name})
    assert image_path.startswith(workdir() + "/"), image_path
    relative = image_path[len(workdir()) + 1:]
    assert any(relative == s or relative.startswith(s.rstrip("/") + "/") for sources, _ in copies() for s in sources)
    return ROOT / relative


# --- the SDK image's Python layer, built in a venv ------------------------------------------------

@pytest.fixture(scope="module")
def image_venv(tmp_path_factory):
    """A fresh venv with the project installed by the Dockerfile's own pip step, from a copy made by its COPYs.

    `venv --system-site-packages` would see the base interpreter's packages, not this
    environment's when the tests run in a venv; a .pth file that adds this interpreter's
    site-packages plays that part, so TensorFlow and Beam are found installed.  Test-only pip
    options: --no-deps (dependencies are already here), --no-build-isolation and --no-index
    (nothing is downloaded).
    """
    base = tmp_path_factory.mktemp("image")
    tree = base / workdir().lstrip("/")
    tree.mkdir(parents=True)
    for sources, dest in copies():
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(src, tree / dest / src.name if dest in ("./", ".") else tree / dest,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, tree / src.name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip()
    here = [p for p in site.getsitepackages() if os.path.isdir(p)]
    pathlib.Path(venv_site, "_this_environment.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in here) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    argv = pip_install_step()
    install = subprocess.run([str(python), "-m", "pip", *argv[1:], "--no-deps", "--no-build-isolation", "--no-index"],
                             cwd=tree, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return {"python": python, "bin": venv / "bin", "site": venv_site, "tree": tree, "env": env, "cwd": base}


def test_image_python_layer_imports_the_installed_package(image_venv):
    code = ("import beam_rnn, pipelines, pipelines.preprocess, pipelines.score; "
            "print(beam_rnn.__file__); print(pipelines.__file__)")
    run = subprocess.run([str(image_venv["python"]), "-c", code], cwd=image_venv["cwd"], env=image_venv["env"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert all(line.startswith(image_venv["site"]) for line in run.stdout.split()), run.stdout  # not the source tree
    version = subprocess.run([str(image_venv["bin"] / "beam-rnn"), "--version"], cwd=image_venv["cwd"],
                             env=image_venv["env"], capture_output=True, text=True, timeout=120, check=False)
    assert version.returncode == 0 and version.stdout.strip() == f"beam-rnn {PYPROJECT['project']['version']}", (
        version.stdout + version.stderr)


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_launcher_py_file_answers_help_in_the_image_layer(image_venv, name):
    """The launcher runs `python FLEX_TEMPLATE_PYTHON_PY_FILE --name=value ...`: the copied driver, run as a file."""
    py_file = image_venv["tree"] / launcher_py_file(name).relative_to(ROOT)
    run = subprocess.run([str(image_venv["python"]), str(py_file), "--help"], cwd=image_venv["cwd"],
                         env=image_venv["env"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"beam-rnn {name}" in run.stdout
