"""The Dockerfile and docker-compose.yml agree with the code: settings, ports, hosts, user, entry.

No Docker engine runs here, so the files are parsed and checked against ``Settings``,
``pyproject.toml`` and the CLI instead of being built.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bot.cli import main
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTING_NAMES = {name.upper() for name in Settings.model_fields}
# Read by Python itself, not by the bot.
PROCESS_VARIABLES = {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
# Read by pip and the llama.cpp build while building wheels.
BUILD_VARIABLES = {"CMAKE_ARGS", "PIP_DISABLE_PIP_VERSION_CHECK"}
# Where each service of the compose file listens (images' defaults, or set by its command).
SERVICE_PORTS = {"postgres": 5432, "redis": 6379, "ollama": 11434}


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_stages() -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(stage name, [(INSTRUCTION, arguments), ...]), ...]`` with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            name = re.search(r"\bAS\s+(\S+)", args, flags=re.IGNORECASE)
            stages.append((name.group(1) if name else f"stage{len(stages)}", []))
        elif stages:
            stages[-1][1].append((instruction, args.strip()))
    return stages


def env_of(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in instructions:
        if instruction == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def runtime() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1][1]


def test_the_dockerfile_builds_in_one_stage_and_runs_in_another() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    build = dict.fromkeys(i for i, _ in stages[0][1])
    assert "COPY" in build and "RUN" in build
    runtime_runs = " ".join(args for i, args in runtime() if i == "RUN")
    assert "build-essential" not in runtime_runs and "cmake" not in runtime_runs, "no compiler at run time"
    assert "llama-cpp-python" not in runtime_runs, "llama-cpp-python is built as a wheel in the build stage"
    assert "--no-index" in runtime_runs, "the runtime installs only the wheels built before"
    assert "torch" not in runtime_runs, "no PyTorch unless an extra asks for it"


def test_every_variable_the_dockerfile_sets_is_a_setting() -> None:
    stages = dockerfile_stages()
    run_env = env_of(runtime())
    assert run_env, "no ENV in the runtime stage"
    unknown = set(run_env) - SETTING_NAMES - PROCESS_VARIABLES
    assert not unknown, f"the runtime stage sets variables the bot does not read: {sorted(unknown)}"
    for name, instructions in stages[:-1]:
        unknown = set(env_of(instructions)) - SETTING_NAMES - PROCESS_VARIABLES - BUILD_VARIABLES
        assert not unknown, f"stage {name} sets unknown variables: {sorted(unknown)}"
    # and the values are valid settings
    Settings.model_validate({k.lower(): v for k, v in run_env.items() if k in SETTING_NAMES})


def test_the_runtime_stage_does_not_run_as_root() -> None:
    users = [args.split(":")[0] for i, args in runtime() if i == "USER"]
    assert users, "the runtime stage has no USER: it would run as root"
    assert users[-1] not in ("root", "0")


def test_the_exposed_port_and_health_check_use_the_web_port() -> None:
    env = env_of(runtime())
    web_port = int(env.get("WEB_PORT", Settings.model_fields["web_port"].default))
    exposed = [int(p.split("/")[0]) for i, args in runtime() if i == "EXPOSE" for p in args.split()]
    assert exposed == [web_port]
    assert env.get("WEB_HOST") not in (None, "127.0.0.1", "localhost"), "the container must listen outside"
    checks = [args for i, args in runtime() if i == "HEALTHCHECK"]
    assert len(checks) == 1 and f":{web_port}/api/health" in checks[0]


def project_scripts() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_image_command_is_a_console_script_of_the_project(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [exec_form(args) for i, args in runtime() if i == "CMD"]
    assert commands, "no CMD"
    program, *arguments = commands[-1]
    assert program in project_scripts(), f"{program} is not in [project.scripts]"
    # the sub-command exists: argparse answers --help for it and exits 0
    with pytest.raises(SystemExit) as exited:
        main([*arguments, "--help"])
    assert exited.value.code == 0
    assert "usage: whisperengine" in capsys.readouterr().out


# --- docker-compose.yml ----------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set: the default (``${VAR:?...}``: a stand-in)."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if op and op.endswith("-"):
            return arg
        if op and op.endswith("?"):
            return f"required-{name.lower()}"
        return ""

    return _INTERPOLATION.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {name: interpolate(str(value)) for name, value in env.items()}


def test_compose_has_the_bot_and_its_services(compose: dict[str, Any]) -> None:
    assert {"bot", "postgres", "redis", "chroma", "ollama"} <= set(compose["services"])
    assert compose["services"]["bot"]["build"] in (".", {"context": "."})


def test_every_variable_compose_gives_the_bot_is_a_valid_setting(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["bot"])
    unknown = set(env) - SETTING_NAMES
    assert not unknown, f"compose sets variables the bot does not read: {sorted(unknown)}"
    settings = Settings.model_validate({k.lower(): v for k, v in env.items()})
    assert settings.database_url and settings.redis_url and settings.chroma_url


def test_urls_in_compose_name_its_services_and_their_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    chroma_command = services["chroma"]["command"]
    ports = {**SERVICE_PORTS, "chroma": int(chroma_command[chroma_command.index("--port") + 1])}
    urls = [
        (name, variable, value)
        for name, service in services.items()
        for variable, value in environment(service).items()
        if "://" in value
    ]
    assert len(urls) >= 4
    for name, variable, value in urls:
        parts = urlsplit(value)
        assert parts.hostname in services, f"{name}: {variable} points at {parts.hostname}, not a service"
        assert parts.port == ports[parts.hostname], f"{name}: {variable} uses the wrong port"
    bot_env = environment(services["bot"])
    database = urlsplit(bot_env["DATABASE_URL"])
    postgres_env = environment(services["postgres"])
    assert database.username == postgres_env["POSTGRES_USER"]
    assert database.password == postgres_env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == postgres_env["POSTGRES_DB"]


def test_the_published_port_is_the_web_port_and_the_api_needs_a_token(compose: dict[str, Any]) -> None:
    bot = compose["services"]["bot"]
    env = environment(bot)
    web_port = int(env["WEB_PORT"])
    exposed = [int(p.split("/")[0]) for i, args in runtime() if i == "EXPOSE" for p in args.split()]
    assert exposed == [web_port]
    published = [interpolate(str(p)).rsplit(":", 1)[-1] for p in bot["ports"]]
    assert published == [str(web_port)]
    assert env["WEB_HOST"] == "0.0.0.0"
    assert "API_TOKEN" in env, "the API listens beyond 127.0.0.1: compose must require API_TOKEN"
    assert ":?" in str(bot["environment"]["API_TOKEN"]), "API_TOKEN must be required, not defaulted"
    assert f":{web_port}/api/health" in " ".join(bot["healthcheck"]["test"])


def test_services_are_healthy_before_the_bot_starts_and_data_is_in_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, condition in services["bot"]["depends_on"].items():
        assert name in services
        if condition["condition"] == "service_healthy":
            assert "healthcheck" in services[name], f"{name} has no health check to wait for"
    for name in ("bot", "postgres", "redis", "chroma", "ollama"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    declared = set(compose.get("volumes") or {})
    for name in ("bot", "postgres", "redis", "chroma", "ollama"):
        mounts = services[name].get("volumes", [])
        assert mounts, f"{name} keeps its data in no volume"
        for mount in mounts:
            source = mount.split(":")[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"
    assert any(m.endswith(":/data") for m in services["bot"]["volumes"])


def test_compose_sets_no_secret_in_the_file(compose: dict[str, Any]) -> None:
    secret_names = {
        name.upper() for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
    }
    for name, value in compose["services"]["bot"].get("environment", {}).items():
        if name in secret_names:
            assert str(value).startswith("${"), f"{name} must come from the environment or .env"


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".git", ".venv", "data"} <= ignored
    copied = [args.split()[0] for i, args in dockerfile_stages()[0][1] if i == "COPY"]
    assert not any(src.startswith((".env", "data", ".venv")) for src in copied)
