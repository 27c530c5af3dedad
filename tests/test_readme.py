"""Every example in README.md and in the pages of docs/, run as a user would, against fake
servers on 127.0.0.1.

The README's config names three routes on ports 8002, 8202 and 8001. The tests start a fake
vLLM server for each and run the examples as written in a temporary folder holding that config
as ``config.yaml`` (and a link to ``scripts/``), with only those ports replaced by the fakes'.
Python blocks run in a fresh interpreter each; shell commands run in bash; commands that
install or test the package itself (or build and check the docs site) are the ones ``.ci/run``
runs, and are checked to be there. A docs page is read as the site shows it: its
``--8<-- "file"`` / ``--8<-- "file:section"`` lines (pymdownx.snippets) replaced by what they
include; an example found in several places runs once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from llm.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$', re.MULTILINE)


def included(match: re.Match[str]) -> str:
    """What a pymdownx.snippets line includes: a file of the repository, or one section of it."""
    text = (ROOT / match.group(1)).read_text(encoding="utf-8")
    if match.group(2):
        start, end = f"--8<-- [start:{match.group(2)}]", f"--8<-- [end:{match.group(2)}]"
        text = text[text.index(start) : text.index(end)].split("\n", 1)[1]
    lines = text.splitlines()
    return "\n".join(line for line in lines if "--8<-- [" not in line).rstrip("\n")


DOCS = {
    path.relative_to(ROOT).as_posix(): SNIPPET.sub(included, path.read_text(encoding="utf-8"))
    for path in sorted((ROOT / "docs").glob("*.md"))
}
SOURCES = {"README.md": README, **DOCS}


def fenced(text: str) -> list[tuple[str, str]]:
    return [
        (match.group(1), match.group(2))
        for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    ]


BLOCKS = fenced(README)


def blocks(language: str) -> list[str]:
    """The README's blocks in ``language``."""
    return [code for lang, code in BLOCKS if lang == language]


def all_blocks(language: str) -> dict[str, str]:
    """The blocks in ``language`` of the README and of every docs page, each text once, by
    where it is first found (``docs/routing.md:1``: that page's second such block)."""
    found: dict[str, str] = {}
    for source, text in SOURCES.items():
        codes = [code for lang, code in fenced(text) if lang == language]
        for number, code in enumerate(codes):
            if code not in found.values():
                found[f"{source}:{number}"] = code
    return found


def commands(code: str) -> list[str]:
    """The commands of a shell block, less comments."""
    lines = (re.sub(r"\s+#.*$", "", line) for line in code.splitlines())
    return [line for line in lines if line.strip() and not line.startswith("#")]


def is_ci_command(command: str) -> bool:
    """Installing, linting and testing the package: what `.ci/run` does on a fresh machine."""
    words = ("pip install", "pytest", "ruff", "mypy", "venv", "real_vllm prepare", "mkdocs")
    words += ("check_site",)
    return any(word in command for word in words)


CONFIG_YAML = blocks("yaml")[0]  # the config example; the other yaml blocks are fragments of one
YAML_SNIPPETS = [code for code in all_blocks("yaml").values() if code != CONFIG_YAML]
README_ROUTES = yaml.safe_load(CONFIG_YAML)["llm"]["routes"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Site:
    folder: Path
    substitute: Callable[[str], str]
    env: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The README's fleet, its config.yaml in a folder (on free ports), and the port
    substitution. The fleet is what the README tells a newcomer to start:
    ``python -m llm.testing.fake_vllm --config config.yaml``, run as written in that folder."""
    folder = tmp_path_factory.mktemp("readme")
    spare = free_port()
    replacements: dict[str, str] = {}
    ports = []
    for route in README_ROUTES.values():
        port, new = httpx.URL(route["base_url"]).port, free_port()
        ports.append(new)
        replacements[f"127.0.0.1:{port}"] = f"127.0.0.1:{new}"
        replacements[f"--port {port}"] = f"--port {spare}"

    def substitute(text: str) -> str:
        for old, new in replacements.items():
            text = text.replace(old, new)
        return text

    (folder / "config.yaml").write_text(substitute(CONFIG_YAML))
    (folder / "scripts").symlink_to(ROOT / "scripts")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("VLLM_", "LLM_")) and key not in ("CONC", "NREQ")
    }
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["NO_COLOR"] = "1"
    (command,) = re.findall(r"`(python -m llm\.testing\.fake_vllm --config [^`]*)`", README)
    fleet = subprocess.Popen(
        [sys.executable, *shlex.split(command)[1:]],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        for port in ports:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert fleet.poll() is None, "the README's fake fleet exited"
                assert time.monotonic() < deadline, "the README's fake fleet never answered"
                time.sleep(0.1)
        yield Site(folder, substitute, env)
    finally:
        fleet.terminate()
        fleet.wait(10)


def test_the_readme_has_the_examples_these_tests_expect():
    assert len(blocks("python")) >= 6  # one short example per feature; the rest: docs/
    assert len(blocks("bash")) == 3  # quickstart, healthcheck and load test, development
    assert set(README_ROUTES) == {"gpt20_a", "gpt20_b", "tiny_qwen"}


def test_the_docs_pages_have_examples_too():
    assert set(DOCS) >= {"docs/getting-started.md", "docs/integrations.md"}
    pages = {name.rsplit(":", 1)[0] for name in all_blocks("python")}
    assert {"docs/getting-started.md", "docs/integrations.md", "docs/operations.md"} <= pages
    assert not any("--8<--" in text for text in DOCS.values()), "a snippet line left unread"


def test_quickstart_is_two_commands_install_plus_demo_and_the_tests():
    install_and_demo, tests = commands(blocks("bash")[0])  # exactly two
    assert 'pip install -e ".[dev]"' in install_and_demo
    assert install_and_demo.endswith("&& python scripts/bench_vllm.py --demo")
    assert tests == "python -m pytest -q"
    assert 'pip install --quiet -e ".[dev]"' in CI and "\npython -m pytest -q\n" in CI


PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
EXTRAS = set(  # the names of [project.optional-dependencies] (tomllib is Python 3.11+)
    re.findall(
        r"^([\w-]+) = \[",
        PYPROJECT.split("[project.optional-dependencies]")[1].split("\n[")[0],
        re.MULTILINE,
    )
)


def test_commands_not_run_here_are_run_by_ci():
    ci = CI.replace("python -m pip", "pip").replace("--quiet ", "")
    for code in all_blocks("bash").values():
        for command in commands(code):
            for part in (piece.strip() for piece in command.split("&&")):
                published = re.fullmatch(r"pip install '?llm-routes\[([\w,-]+)\]'?", part)
                if published:  # a user's install from the index: its extras must exist
                    assert set(published.group(1).split(",")) <= EXTRAS, part
                elif is_ci_command(part):
                    assert part in ci, part


def test_the_config_example_is_valid():
    config = parse_config(yaml.safe_load(CONFIG_YAML), environ={})
    assert config.fallback_route == "tiny_qwen" and config.lb_policy == "least_load"
    assert config.pool() == ("gpt20_a", "gpt20_b")


def test_every_yaml_fragment_is_valid_over_the_config_example():
    assert YAML_SNIPPETS
    for snippet in YAML_SNIPPETS:
        data = yaml.safe_load(CONFIG_YAML)
        for key, value in yaml.safe_load(snippet)["llm"].items():
            if isinstance(value, dict) and isinstance(data["llm"].get(key), dict):
                data["llm"][key].update(value)  # routes: added to the example's
            else:
                data["llm"][key] = value
        parse_config(data, environ={})


def test_the_readme_points_to_the_generated_config_reference():
    # Every key with its default: docs/configuration.md, written from the schema at build time
    # (scripts/config_reference.py; tests/test_docs_reference.py checks it against the schema).
    assert "(docs/configuration.md#reference)" in README


def run_in(site: Site, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=site.folder, env=site.env, capture_output=True, text=True, timeout=90
    )


PYTHON_EXAMPLES = all_blocks("python")


@pytest.mark.parametrize("number", list(PYTHON_EXAMPLES))
def test_python_example_runs(site: Site, number: str):
    code = site.substitute(PYTHON_EXAMPLES[number])
    if "llama_index" in code and importlib.util.find_spec("llama_index") is None:
        # llama-index-llms-openai needs openai < 3: .ci/run runs this in its openai 2 step
        pytest.skip("LlamaIndex is installed in .ci/run's openai 2 step")
    done = run_in(site, sys.executable, "-c", code)
    assert done.returncode == 0, f"example {number}:\n{code}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert (done.stdout + done.stderr).strip(), "every example shows something"


SHELL_COMMANDS = list(
    dict.fromkeys(
        command
        for code in all_blocks("bash").values()
        for command in commands(code)
        if not is_ci_command(command)
    )
)


@pytest.mark.parametrize("command", SHELL_COMMANDS)
def test_shell_example_runs(site: Site, command: str):
    done = run_in(site, "bash", "-c", site.substitute(command))
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr
    assert done.stdout.strip()


def test_the_quickstart_demo_runs(site: Site):
    install_and_demo = commands(blocks("bash")[0])[0]
    demo = install_and_demo.rsplit("&&", 1)[1].strip()
    done = run_in(site, "bash", "-c", demo)
    assert done.returncode == 0, done.stderr
    assert "400/400 calls succeeded, 0 lost." in done.stdout


def test_the_fake_server_command_serves(site: Site):
    pattern = r"`(python -m llm\.testing\.fake_vllm --port [^`]*)`"
    (command,) = {found for text in SOURCES.values() for found in re.findall(pattern, text)}
    words = shlex.split(site.substitute(command))
    port = int(words[words.index("--port") + 1])
    model = words[words.index("--model") + 1]
    server = subprocess.Popen(
        [sys.executable, *words[1:]],
        cwd=site.folder,
        env=site.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the fake server never answered"
                time.sleep(0.1)
        assert answer.status_code == 200
        assert [entry["id"] for entry in answer.json()["data"]] == [model]
    finally:
        server.terminate()
        server.wait(10)
