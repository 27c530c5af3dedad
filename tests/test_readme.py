"""Every example in README.md, run as a user would, against fake servers on 127.0.0.1.

The README's config names three routes on ports 8002, 8202 and 8001. The tests start a fake
vLLM server for each and run the examples as written in a temporary folder holding that config
as ``config.yaml`` (and a link to ``scripts/``), with only those ports replaced by the fakes'.
Python blocks run in a fresh interpreter each; shell commands run in bash; commands that
install or test the package itself are the ones ``.ci/run`` runs, and are checked to be there.
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

from llm.config import body_keys, parse_config, sections

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
BLOCKS = [
    (match.group(1), match.group(2))
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
]


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCKS if lang == language]


def commands(code: str) -> list[str]:
    """The commands of a shell block, less comments."""
    lines = (re.sub(r"\s+#.*$", "", line) for line in code.splitlines())
    return [line for line in lines if line.strip() and not line.startswith("#")]


def is_ci_command(command: str) -> bool:
    """Installing, linting and testing the package: what `.ci/run` does on a fresh machine."""
    words = ("pip install", "pytest", "ruff", "mypy", "venv", "real_vllm prepare")
    return any(word in command for word in words)


CONFIG_YAML, *YAML_SNIPPETS = blocks("yaml")  # the config example, then fragments of one
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
    assert len(blocks("python")) >= 8
    assert len(blocks("bash")) == 5  # quickstart, healthcheck, benchmark, real vLLM, development
    assert set(README_ROUTES) == {"gpt20_a", "gpt20_b", "tiny_qwen"}


def test_quickstart_is_two_commands_install_plus_demo_and_the_tests():
    install_and_demo, tests = commands(blocks("bash")[0])  # exactly two
    assert 'pip install -e ".[dev]"' in install_and_demo
    assert install_and_demo.endswith("&& python scripts/bench_vllm.py --demo")
    assert tests == "python -m pytest -q"
    assert 'pip install --quiet -e ".[dev]"' in CI and "\npython -m pytest -q\n" in CI


def test_commands_not_run_here_are_run_by_ci():
    ci = CI.replace("python -m pip", "pip").replace("--quiet ", "")
    for code in blocks("bash"):
        for command in commands(code):
            for part in (piece.strip() for piece in command.split("&&")):
                if is_ci_command(part):
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


def test_the_config_table_documents_every_key_and_only_real_keys():
    documented = set(re.findall(r"^\| `(llm\.[a-zA-Z_.]+)`", README, re.MULTILINE))
    real = {f"llm.{key}" for key in sections.LLM_KEYS if key not in ("params", "routes")}
    real |= {f"llm.routes.NAME.{key}" for key in sections.ROUTE_KEYS}
    real |= {f"llm.retry.{key}" for key in sections.RETRY_KEYS}
    real |= {f"llm.health.{key}" for key in sections.HEALTH_KEYS}
    real |= {f"llm.load.{key}" for key in sections.LOAD_KEYS}
    real |= {f"llm.affinity.{key}" for key in sections.AFFINITY_KEYS}
    real |= {f"llm.params.{key}" for key in (*sections.CONTROL_PARAMS, "extra_body")}
    real -= {"llm.retry", "llm.health", "llm.load", "llm.affinity"}
    assert documented - {"llm.params."} == real
    for key in body_keys.BODY_KEYS:
        assert f"`{key}`" in README, key


def run_in(site: Site, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=site.folder, env=site.env, capture_output=True, text=True, timeout=90
    )


@pytest.mark.parametrize("number", range(len(blocks("python"))))
def test_python_example_runs(site: Site, number: int):
    code = site.substitute(blocks("python")[number])
    if "llama_index" in code and importlib.util.find_spec("llama_index") is None:
        # llama-index-llms-openai needs openai < 3: .ci/run runs this in its openai 2 step
        pytest.skip("LlamaIndex is installed in .ci/run's openai 2 step")
    done = run_in(site, sys.executable, "-c", code)
    assert done.returncode == 0, f"example {number}:\n{code}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert (done.stdout + done.stderr).strip(), "every example shows something"


SHELL_COMMANDS = [
    command for code in blocks("bash") for command in commands(code) if not is_ci_command(command)
]


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
    (command,) = re.findall(r"`(python -m llm\.testing\.fake_vllm --port [^`]*)`", README)
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
