"""``import llm`` stays light: no HTTP client, no YAML, no loguru, no aiohttp or openai until
used; the public names still import (lazily); and the library stays silent until the
application enables its logs, whatever the order of the imports. Each case runs in a fresh
interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import llm

ROOT = Path(__file__).resolve().parents[1]

# nothing that `import llm` alone may load
HEAVY = ("aiohttp", "openai", "httpx_aiohttp", "httpx", "yaml", "loguru", "asyncio", "typing")


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def loaded_after(code: str, modules: tuple[str, ...]) -> dict[str, bool]:
    probe = f"{code}\nimport sys\nprint(*[m in sys.modules for m in {list(modules)!r}])"
    result = run(probe)
    assert result.returncode == 0, result.stderr
    return dict(zip(modules, [w == "True" for w in result.stdout.split()], strict=True))


def test_import_llm_loads_none_of_the_heavy_modules() -> None:
    assert loaded_after("import llm", HEAVY) == dict.fromkeys(HEAVY, False)


def test_the_factory_does_not_load_aiohttp_or_openai() -> None:
    # the documented entry point: the sync machinery loads, the async one waits until used
    code = "from llm.factory import LLMFactory"
    assert loaded_after(code, ("aiohttp", "openai", "httpx_aiohttp")) == {
        "aiohttp": False,
        "openai": False,
        "httpx_aiohttp": False,
    }


def test_a_config_mapping_does_not_need_yaml() -> None:
    code = (
        "from llm.config import parse_config\n"
        "parse_config({'llm': {'routes': {'a': {'base_url': 'http://h/v1', 'model': 'm'}}}})"
    )
    assert loaded_after(code, ("yaml",)) == {"yaml": False}


def test_every_public_name_resolves_and_is_kept() -> None:
    for name in llm.__all__:
        value = getattr(llm, name)
        assert getattr(value, "__name__", name) == name
        assert vars(llm)[name] is value  # the second access is a plain attribute
    assert set(llm.__all__) <= set(dir(llm))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        llm.nope  # type: ignore[attr-defined]  # noqa: B018


def test_from_llm_import_names() -> None:
    result = run(
        "from llm import LLMFactory, ConfigError, VLLMOpenAIProvider, load_config\n"
        "from llm.factory import LLMFactory as F\n"
        "assert LLMFactory is F and ConfigError.__module__ == 'llm.errors'\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


EJECT = """
from llm.config import RouteConfig
from llm.routing.balancer import Balancer
from llm.send.log import log_health_change
routes = [RouteConfig(name="a", base_url="http://h/v1", model="m")]
balancer = Balancer(routes, on_health=log_health_change)  # as every provider does
route = balancer.routes["a"]
balancer.failed(route, balancer.dispatch(route), "boom")
"""
ENABLE = "from loguru import logger\nlogger.enable('llm')\n"


@pytest.mark.parametrize(
    ("code", "logged"),
    [
        ("import llm\n" + EJECT, False),
        ("import llm.routing.balancer\n" + EJECT, False),
        ("import llm\n" + ENABLE + EJECT, True),
        ("import llm\n" + EJECT + ENABLE + EJECT, True),
        ("import llm\n" + ENABLE + "llm.LLMFactory\n" + EJECT, True),
        ("import llm.factory\n" + ENABLE + EJECT, True),
        ("import loguru\nimport llm\n" + EJECT, False),
        (ENABLE + "import llm\n" + EJECT, True),  # the application's word stands
        (ENABLE + "logger.disable('llm')\nimport llm\n" + EJECT, False),
        ("from loguru import logger\nlogger.enable('llm.send')\nimport llm\n" + EJECT, True),
        (
            "from loguru import logger\nlogger.enable('llm.routing')\nimport llm\n" + EJECT,
            False,  # the ejection is logged by llm.send.log
        ),
        (ENABLE + "logger.disable('llm.send')\nimport llm\n" + EJECT, False),
        ("import importlib.util, llm\nimportlib.util.find_spec('loguru')\n" + EJECT, False),
    ],
    ids=[
        "import-llm",
        "import-a-module",
        "enable-after-import",
        "enable-later",
        "enable-then-lazy-name",
        "factory-then-enable",
        "loguru-first",
        "enable-before-import",
        "enable-then-disable-before-import",
        "enable-a-submodule-before-import",
        "enable-another-submodule-before-import",
        "enable-then-disable-a-submodule-before-import",
        "loguru-looked-up-first",
    ],
)
def test_silent_until_enabled(code: str, logged: bool) -> None:
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert ("ejected for" in result.stderr) is logged, result.stderr


def test_loguru_keeps_its_own_loader_and_the_hook_goes_away() -> None:
    result = run(
        "import sys, llm\n"
        "hooks = [f for f in sys.meta_path if type(f).__name__ == '_SilenceLoguruOnImport']\n"
        "assert len(hooks) == 1, sys.meta_path\n"
        "import importlib, llm as again\n"
        "importlib.reload(again)\n"
        "assert sum(type(f).__name__ == '_SilenceLoguruOnImport' for f in sys.meta_path) == 1\n"
        "import loguru\n"
        "assert type(loguru.__loader__).__name__ == 'SourceFileLoader', loguru.__loader__\n"
        "assert loguru.__spec__.loader is loguru.__loader__\n"
        "assert not any(type(f).__name__ == '_SilenceLoguruOnImport' for f in sys.meta_path)\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
