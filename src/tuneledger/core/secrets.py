"""Keeping credentials out of everything TuneLedger writes: metadata, model cards, tags, logs, errors.

Three detectors, applied to every string:
- known values: the values of secret-named environment variables and of secret-named settings
  in DVC's config files (`.dvc/config.local` above all), also in the escaped forms JSON and
  Python's repr give them;
- patterns: credentials recognisable anywhere (AWS key ids, AWS secret keys next to their name,
  Hugging Face and GitHub tokens, bearer tokens, passwords in URLs, `password=...` settings);
- keys: in structured data, the value of any key named like a credential.

`redact_data` works on the structure before it is encoded, so quoting or escaping cannot hide a
secret from it; encode the result, never redact encoded text when the structure is at hand.

The patterns are written here rather than taken from a scanner such as detect-secrets: scanners
report findings in files, while this must mask them inside any string, in microseconds per call
(the serving log redacts every row), and know DVC's config files.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MASK = "***"
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY)", re.I)
_ALWAYS = ("AWS_", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AZURE_", "GOOGLE_APPLICATION_CREDENTIALS")
MIN_LENGTH = 8  # shorter values ("1", "true", "us-east") are settings, and would redact ordinary words

# Setting and field names whose value is a credential. Narrower than the environment rule:
# `pad_token`, `max_new_tokens` or `tokenizer` name ordinary values in model files.
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:password|passwd|passphrase|secret|credentials?|api_?key|apikey|access_key(?:_id)?"
    r"|secret_key|private_key|account_key|session_token|auth_token|access_token|refresh_token"
    r"|api_token|id_token|sas_token|hf_token|github_token|gh_token|bearer_token|connection_string)$"
)
_SECRET_KEY_EXACT = {"token", "auth", "authorization"}

# Formats a credential has wherever it appears; each keeps what names it and masks the value.
# Every repetition that another part must follow is possessive (`*+`, `{n,}+`) or bounded, so no
# input makes a pattern backtrack: redaction stays linear in the text's length (the serving log
# redacts what clients send).
_TOKEN = r"[A-Za-z0-9_\-]"
_PATTERNS: list[tuple[re.Pattern, str]] = [
    # AWS access key ids: AKIA (long-term) and ASIA (temporary), then 16 upper-case characters.
    (re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"), MASK),
    # AWS secret access keys: 40 base64 characters, only next to their name (alone they look
    # like any other 40-character string, git commits included).
    (
        re.compile(
            r"(?P<name>(?i:aws|secret)[\w.\- ]{0,30}?[\s\"':=]{1,4})"
            r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
        ),
        rf"\g<name>{MASK}",
    ),
    # Hugging Face user/org tokens and GitHub classic and fine-grained tokens.
    (re.compile(r"(?<![A-Za-z0-9])(?:hf|api_org)_[A-Za-z0-9]{30,}+"), MASK),
    (re.compile(r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{36,}+"), MASK),
    (re.compile(r"(?<![A-Za-z0-9])github_pat_[A-Za-z0-9_]{22,}+"), MASK),
    # OpenAI (sk-, sk-proj-, sk-svcacct-) and Anthropic (sk-ant-) keys; Stripe live and test keys.
    (re.compile(rf"(?<![A-Za-z0-9])sk-{_TOKEN}{{20,}}+"), MASK),
    (re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}+"), MASK),
    # Slack bot, user and app tokens; GitLab personal access tokens; Google API keys.
    (re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,}+"), MASK),
    (re.compile(rf"(?<![A-Za-z0-9])glpat-{_TOKEN}{{20,}}+"), MASK),
    (re.compile(rf"(?<![A-Za-z0-9])AIza{_TOKEN}{{35}}(?!{_TOKEN})"), MASK),
    # JSON Web Tokens: three base64url parts, the first two JSON objects (`eyJ` is `{"`).
    (re.compile(rf"(?<![A-Za-z0-9])eyJ{_TOKEN}{{5,}}+\.eyJ{_TOKEN}{{5,}}+\.{_TOKEN}{{5,}}+"), MASK),
    # `Bearer <token>` anywhere (an `Authorization: ...` setting is masked whole, below).
    (re.compile(r"(?P<scheme>(?i:\bbearer)\s++)[A-Za-z0-9\-._~+/]{8,}+=*+"), rf"\g<scheme>{MASK}"),
    # A password in a URL: scheme://user:password@host (the user name stays, to be recognisable).
    (
        re.compile(r"(?P<user>\b[A-Za-z][A-Za-z0-9+.\-]{0,31}+://[^\s/:@\"']{0,256}+:)[^\s/@]{1,256}+@"),
        rf"\g<user>{MASK}@",
    ),
]
# `name=value` and `"name": "value"` in free text, for names that _SECRET_KEY accepts.
_ASSIGNMENT = re.compile(
    r"\b(?P<name>[A-Za-z][\w.\-]{0,63}+)(?P<sep>[\"']?[ \t]*+[:=][ \t]*+[\"']?)"
    r"(?P<value>(?:(?i:basic|bearer|digest|token)[ \t]++)?[^\s\"',;&]++)"
)


def is_secret_name(name: str) -> bool:
    """An environment variable whose value is treated as a credential."""
    return name.startswith(_ALWAYS) or bool(_SECRET_NAME.search(name))


def is_secret_key(key: str) -> bool:
    """A setting or field name (any case, `-`, `.` or camelCase) whose value is a credential."""
    normal = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower().replace("-", "_").replace(".", "_")
    return normal in _SECRET_KEY_EXACT or bool(_SECRET_KEY.search(normal))


def _dvc_config_files(start: Path) -> list[Path]:
    """DVC's config files as it reads them: system, global, then the repository's and config.local.

    The repository is found by walking up from `start`: DVC's own `Repo.find_dvc_dir` would
    import all of dvc.repo (about a second) into every command that only needs to redact.
    """
    from dvc.config import Config

    files = [Path(Config.get_dir(level)) / Config.CONFIG for level in Config.SYSTEM_LEVELS]
    for directory in (start, *start.parents):
        if (directory / ".dvc").is_dir():
            files += [directory / ".dvc" / Config.CONFIG, directory / ".dvc" / Config.CONFIG_LOCAL]
            break
    return files


def _secret_settings(tree: dict) -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _secret_settings(value)
        elif isinstance(value, str) and is_secret_key(str(key)):
            yield value


@functools.lru_cache(maxsize=16)
def _settings_in(files: tuple[tuple[str, int, int], ...]) -> tuple[str, ...]:
    """Secret values in these config files (keyed by path, mtime and size, so edits are seen)."""
    from dvc.config import Config, ConfigError

    found: list[str] = []
    for path, _, _ in files:
        try:
            found += _secret_settings(Config.load_file(path))
        except (ConfigError, OSError, UnicodeDecodeError):
            continue  # an unreadable file cannot have put its values anywhere through DVC either
    return tuple(found)


def config_secret_values(start: str | Path = ".") -> list[str]:
    """Values of credential settings (access_key_id, secret_access_key, session_token, password,
    ...) in the DVC config files that apply at `start`; none when there are no such files."""
    stamps = []
    for path in _dvc_config_files(Path(start).absolute()):
        try:
            info = path.stat()
        except OSError:
            continue
        stamps.append((str(path), info.st_mtime_ns, info.st_size))
    return list(_settings_in(tuple(stamps)))


_REGISTERED: set[str] = set()


def register_secret(value: str) -> None:
    """A secret this process holds that no variable or config file names (a key given as an option)."""
    if value:
        _REGISTERED.add(value)


def secret_values() -> list[str]:
    """Known secret values (environment, DVC config, registered), longest first."""
    values = {v for k, v in os.environ.items() if is_secret_name(k)}
    values.update(config_secret_values())
    values.update(_REGISTERED)
    return sorted((v for v in values if len(v) >= MIN_LENGTH), key=len, reverse=True)


def _written_forms(value: str) -> set[str]:
    """A value as it appears in text: raw, inside JSON (ASCII or not) and inside a Python repr."""
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
    }


@functools.lru_cache(maxsize=16)
def _known_values_pattern(values: tuple[str, ...]) -> re.Pattern | None:
    forms = {form for value in values for form in _written_forms(value) if len(form) >= MIN_LENGTH}
    if not forms:
        return None
    return re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def _mask_assignment(match: re.Match) -> str:
    if not is_secret_key(match["name"]):
        return match[0]
    return f"{match['name']}{match['sep']}{MASK}"


def redact(text: str) -> str:
    """`text` with every known secret value and every recognisable credential replaced by `***`."""
    known = _known_values_pattern(tuple(secret_values()))
    if known is not None:
        text = known.sub(MASK, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _ASSIGNMENT.sub(_mask_assignment, text)


def redact_data(value: Any) -> Any:
    """A copy of JSON-like data with secrets removed from every string (keys and values), and the
    whole value of every credential-named key masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): _redact_field(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(v) for v in value]
    return value


def _redact_field(key: Any, value: Any) -> Any:
    if isinstance(key, str) and is_secret_key(key) and isinstance(value, str) and value:
        return MASK
    return redact_data(value)
